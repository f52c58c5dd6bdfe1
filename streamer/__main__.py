"""``python -m innostream`` runs the CLI."""

from innostream.cli import main

if __name__ == "__main__":
    main()
