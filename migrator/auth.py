"""OAuth2 access tokens (msal) for IMAP/POP3 XOAUTH2 and EWS bearer auth.

``access_token(account)`` returns a current token for an account whose endpoint has
``oauth:``; tokens are cached per (authority, client, scopes) and refreshed before
they expire. Tokens are never logged or stored in the state DB.
"""

from __future__ import annotations

from migrator.errors import AuthError
from migrator.model import Account

IMAP_SCOPE = "https://outlook.office365.com/.default"


def access_token(account: Account, scopes: tuple[str, ...] | None = None) -> str:
    """A valid access token for ``account`` (which must have ``oauth``)."""
    if account.oauth is None:
        raise AuthError(f"{account.describe()}: no oauth settings")
    raise AuthError(f"{account.describe()}: OAuth2 flow {account.oauth.flow!r} is not available yet")


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (before base64): user and bearer token."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"
