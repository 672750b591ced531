"""Corral: a local-first model server."""

__version__ = "0.1.0"
