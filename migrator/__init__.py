"""migrator: migrate and keep in sync whole organisations' mailboxes."""

__version__ = "0.1.0"
