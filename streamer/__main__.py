"""``python -m innostream`` runs the CLI."""

import sys

from innostream.cli import main

if __name__ == "__main__":
    sys.exit(main())  # as the console script does: a command's returned status is the exit code
