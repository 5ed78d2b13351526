"""Pure codec for the fetchml binary protocol and on-disk formats (no I/O)."""
