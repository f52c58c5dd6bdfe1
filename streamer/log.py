"""Logging to stderr only: stdout is the data stream.

Lines look like the reference tool's (``>> log scanned up to (LSN)``, ``[01] Copying ... to ...``) so that DBAs and
their scripts recognise them. ``--quiet`` keeps warnings and errors, ``--verbose`` adds debug lines.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "innostream"

log = logging.getLogger(LOGGER_NAME)


def setup_logging(verbosity: int = 0) -> None:
    """Configure the ``innostream`` logger: -1 quiet, 0 normal, 1 verbose."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
