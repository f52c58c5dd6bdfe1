"""The server families innostream backs up. Code compares against :class:`Flavor`, never bare strings; what differs
between the families (locks, redo, prepare) lives in :mod:`innostream.families`."""

from __future__ import annotations

from enum import StrEnum


class Flavor(StrEnum):
    """A server family. A ``StrEnum``, so it is written to metadata files and archives as its plain value."""

    MYSQL = "mysql"  # MySQL 8.0.30+ / 8.4 / 9.x: #innodb_redo/#ib_redoN, 512-byte log blocks
    MARIADB = "mariadb"  # MariaDB 10.8+ / 10.11 / 11.x: ib_logfile0, a byte stream of mini-transactions

    @classmethod
    def of_version(cls, version: str) -> Flavor:
        """The family of a server from its ``version`` string (``SELECT VERSION()`` or ``--version``)."""
        return cls.MARIADB if "mariadb" in version.lower() else cls.MYSQL
