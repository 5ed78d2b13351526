"""The fetchml daemon."""
