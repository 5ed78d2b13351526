"""The fetchml daemon."""

__version__ = "0.1.0"
