"""Connectors: one module per store type, all behind connectors.base's protocols."""

from migrator.connectors.base import Account, Destination, Secret, Source, open_store

__all__ = ["Account", "Destination", "Secret", "Source", "open_store"]
