"""Byte-level definitions of InnoDB pages, redo logs, backup artefacts and the innostream archive.

Everything here is a pure function over ``bytes``/``memoryview``: no I/O, no logging, no imports from ``streamer``.
"""
