"""bench: put image embedders side by side on the same data."""

__version__ = "0.1.0"
