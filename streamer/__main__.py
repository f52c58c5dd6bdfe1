"""``python -m streamer`` runs the CLI."""

from streamer.cli import main

if __name__ == "__main__":
    main()
