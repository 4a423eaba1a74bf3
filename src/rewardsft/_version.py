"""The package version (its own module, so that internal modules can read it without importing the API)."""

__version__ = "0.1.0"
