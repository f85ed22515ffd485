"""The package version, in its own module so that every layer can record it without importing
the package root (which re-exports the high-level API of the upper layers)."""

__version__ = "0.1.0"
