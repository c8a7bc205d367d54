"""Tessera: the code the server and the sync client share."""

__version__ = "0.1.0"
