"""Recovery: prepare a backup with the server's own crash recovery, and restore it into a data directory."""
