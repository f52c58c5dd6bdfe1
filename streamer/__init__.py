"""innostream: hot physical backup streamer for MySQL and MariaDB InnoDB data directories."""

__version__ = "0.1.0"
