"""OAuth2 access tokens (msal) for IMAP/POP3 XOAUTH2 and EWS bearer auth.

``access_token(account)`` returns a current token for an account whose endpoint has
``oauth:``. Three flows (``OAuth.flow``):

* ``client_credentials``: app-only tokens (``ConfidentialClientApplication.
  acquire_token_for_client``), scope ``https://outlook.office365.com/.default``; the
  app holds IMAP.AccessAsApp / POP.AccessAsApp and each mailbox is granted to its
  service principal.
* ``device_code``: delegated tokens for one admin account (``PublicClientApplication``).
  The first run prints the sign-in prompt to stderr; tokens (and the refresh token)
  are kept in ``cache_file`` (mode 0600) and refreshed silently afterwards.
* ``token_file``: an access token issued elsewhere, read again on every call (so an
  outside job can keep the file fresh during a run that lasts days).

Tokens are kept per provider and refreshed *before* they expire: when less than five
minutes are left, or less than a fifth of the token's lifetime for short-lived tokens
(tests use 20-second tokens). The IMAP and POP3 connectors ask for a token on every
(re)connect, so a run that lasts days reconnects with a fresh token whenever the
server drops a session (Exchange Online ends sessions whose token expired with
``* BYE Session invalidated - AccessTokenExpired``).

Tokens never appear in logs, exception texts, reprs, reports or the state DB:
``mask()`` removes secrets from any text that leaves this module.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrator.errors import AuthError, ConnectError, PlanError
from migrator.model import Account, OAuth

__all__ = [
    "IMAP_SCOPE",
    "Lease",
    "TokenProvider",
    "TokenProviders",
    "access_lease",
    "access_token",
    "default_scopes",
    "jwt_expiry",
    "mask",
    "xoauth2",
]

IMAP_SCOPE = "https://outlook.office365.com/.default"  # app-only: IMAP, POP and EWS alike
DELEGATED_SCOPES = {
    "pop3": ("https://outlook.office365.com/POP.AccessAsUser.All",),
    "ews": ("https://outlook.office365.com/EWS.AccessAsUser.All",),
}
DELEGATED_IMAP = ("https://outlook.office365.com/IMAP.AccessAsUser.All",)
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
REFRESH_MARGIN = 300.0  # seconds: refresh when fewer are left ...
REFRESH_SHARE = 0.2  # ... or less than this share of the lifetime (short test tokens)
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (before base64): user and bearer token."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def mask(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret, and anything shaped like a JWT, replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _JWT_LIKE.sub("***", text)


def default_scopes(oauth: OAuth, account_type: str) -> tuple[str, ...]:
    """``oauth.scopes`` when given, else the Exchange Online scope for the flow and protocol:
    ``.default`` for app-only tokens, ``IMAP/POP/EWS.AccessAsUser.All`` for delegated ones."""
    if oauth.scopes:
        return tuple(oauth.scopes)
    if oauth.flow == "client_credentials":
        return (IMAP_SCOPE,)
    return DELEGATED_SCOPES.get(account_type, DELEGATED_IMAP)


def _authority(oauth: OAuth) -> str:
    if oauth.authority:
        return oauth.authority.rstrip("/")
    return f"{DEFAULT_AUTHORITY_HOST}/{oauth.tenant or 'organizations'}"


@dataclass(frozen=True, slots=True)
class Lease:
    """A token and its lifetime. ``expires`` is None when unknown (a token file
    holding an opaque token). ``repr`` never shows the token."""

    value: str = field(repr=False)
    obtained: float  # time.time() when received
    expires: float | None  # time.time() when it stops working

    def fresh(self, now: float) -> bool:
        """Still worth using: more than five minutes left, or more than a fifth of
        its lifetime for short-lived tokens. Unknown expiry: always fresh."""
        if self.expires is None:
            return True
        left = self.expires - now
        lifetime = max(self.expires - self.obtained, 1.0)
        return left > min(REFRESH_MARGIN, REFRESH_SHARE * lifetime)


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT access token (not verified), None for other tokens."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(payload["exp"])
    except (ValueError, KeyError, TypeError):
        return None


class TokenProvider:
    """Tokens for one (flow, authority, client, scopes): cached, refreshed before expiry.

    Thread-safe: one lock per provider, so parallel mailboxes sharing an app ask the
    token endpoint once, and a device-code prompt is shown once. ``clock`` is
    ``time.time`` (tests may pass another)."""

    def __init__(self, oauth: OAuth, scopes: tuple[str, ...], clock: Callable[[], float] = time.time) -> None:
        self.oauth = oauth
        self.scopes = scopes
        self.authority = _authority(oauth)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Lease | None = None
        self._app: Any = None
        self._cache: Any = None
        self.fetches = 0  # tokens obtained from the endpoint (for tests and logs)

    def __repr__(self) -> str:
        return f"TokenProvider({self.oauth.flow}, {self.authority}, client={self.oauth.client_id})"

    # ------------------------------------------------------------------ public
    def token(self) -> str:
        """A token with time left. Raises AuthError (refused: retrying cannot help),
        ConnectError (the token endpoint cannot be reached) or PlanError (settings)."""
        return self.lease().value

    def lease(self) -> Lease:
        """``token()`` with its lifetime (a connection using it can renew itself in time)."""
        if self.oauth.flow == "token_file":
            value = self._read_token_file()
            return Lease(value, self._clock(), jwt_expiry(value))
        with self._lock:
            now = self._clock()
            if self._token is not None and self._token.fresh(now):
                return self._token
            result = self._acquire()
            self._token = self._from_result(result, now)
            self.fetches += 1
            return self._token

    # ------------------------------------------------------------------ flows
    def _acquire(self) -> dict[str, Any]:
        try:
            if self.oauth.flow == "client_credentials":
                return self._client_credentials()
            if self.oauth.flow == "device_code":
                return self._device_code()
        except (AuthError, PlanError):
            raise
        except ValueError as exc:  # msal: authority discovery failed
            raise ConnectError(f"{self.authority}: {mask(str(exc), self._secret_value())}") from None
        except OSError as exc:  # requests' errors derive from OSError
            raise ConnectError(
                f"{self.authority}: token endpoint unreachable: {mask(str(exc), self._secret_value())}"
            ) from None
        raise PlanError(f"unknown OAuth2 flow {self.oauth.flow!r}")

    def _msal_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"authority": self.authority, "timeout": 60}
        if not self.oauth.validate_authority:
            kwargs["validate_authority"] = False
            kwargs["instance_discovery"] = False
        return kwargs

    def _secret_value(self) -> str | None:
        secret = self.oauth.client_secret
        if secret is None:
            return None
        try:
            return secret.get()
        except PlanError:
            return None

    def _client_credentials(self) -> dict[str, Any]:
        import msal

        if self._app is None:
            if self.oauth.client_secret is None:
                raise PlanError("oauth: client_credentials needs client_secret_env or client_secret_file")
            self._app = msal.ConfidentialClientApplication(
                self.oauth.client_id, client_credential=self.oauth.client_secret.get(), **self._msal_kwargs()
            )
        result: dict[str, Any] = self._app.acquire_token_for_client(scopes=list(self.scopes))
        return result

    def _device_code(self) -> dict[str, Any]:
        import msal

        if self._app is None:
            self._cache = msal.SerializableTokenCache()
            if self.oauth.cache_file and os.path.exists(self.oauth.cache_file):
                try:
                    self._cache.deserialize(Path(self.oauth.cache_file).read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise PlanError(f"oauth cache_file {self.oauth.cache_file}: unreadable ({exc})") from None
            self._app = msal.PublicClientApplication(
                self.oauth.client_id, token_cache=self._cache, **self._msal_kwargs()
            )
        result: dict[str, Any] | None = None
        for acct in self._app.get_accounts():
            result = self._app.acquire_token_silent_with_error(list(self.scopes), account=acct)
            if result and "access_token" in result:
                break
        if not result or "access_token" not in result:
            flow = self._app.initiate_device_flow(scopes=list(self.scopes))
            if "user_code" not in flow:
                raise AuthError(f"{self.authority}: device code flow refused: {_error_text(flow)}")
            print(flow["message"], file=sys.stderr, flush=True)
            result = self._app.acquire_token_by_device_flow(flow)
        self._save_cache()
        return result

    def _save_cache(self) -> None:
        """Write the msal cache atomically, readable by the owner only (it holds a refresh token)."""
        if not self.oauth.cache_file or self._cache is None or not self._cache.has_state_changed:
            return
        path = Path(self.oauth.cache_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self._cache.serialize())
        os.replace(tmp, path)
        self._cache.has_state_changed = False

    def _read_token_file(self) -> str:
        path = self.oauth.token_file or ""
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthError(f"oauth token_file {path}: cannot read ({exc.strerror})") from None
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except ValueError:
                raise AuthError(f"oauth token_file {path}: not a token and not JSON") from None
            text = str(data.get("access_token") or "").strip()
        if not text or any(c.isspace() for c in text):
            raise AuthError(f"oauth token_file {path}: no access token in it")
        return text

    # ------------------------------------------------------------------ results
    def _from_result(self, result: dict[str, Any] | None, now: float) -> Lease:
        if not result or "access_token" not in result:
            raise AuthError(f"{self.authority}: no token for client {self.oauth.client_id}: {_error_text(result)}")
        try:
            lifetime = float(result.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        token = str(result["access_token"])
        expires = now + max(lifetime, 1.0)
        claimed = jwt_expiry(token)  # a JWT says when it stops working, to the second: trust the earlier
        return Lease(token, now, min(expires, claimed) if claimed is not None else expires)


def _error_text(result: dict[str, Any] | None) -> str:
    """msal's error and description, secrets masked (descriptions never hold tokens,
    but a misbehaving endpoint might echo one)."""
    if not result:
        return "no answer"
    parts = [str(result.get("error") or "error"), str(result.get("error_description") or "").split("\n")[0]]
    return mask(": ".join(p for p in parts if p))


class TokenProviders:
    """One TokenProvider per distinct (OAuth settings, scopes): an identity map.

    Why a process-wide instance (``_PROVIDERS``) and not an object the engine passes
    around: the engine opens stores through ``open_store(account, role)`` for every
    (re)connection, and Account is frozen plan data; threading a registry through
    would change every connector's signature. The map holds no run state of its own:
    a provider is a pure function of its frozen key (plus the token it caches),
    two runs with the same settings may share tokens safely, and tests build their
    own ``TokenProviders``. If the engine ever owns a per-run context, it should
    create one ``TokenProviders`` and hand it to ``access_token(..., providers=)``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[OAuth, tuple[str, ...]], TokenProvider] = {}

    def get(self, oauth: OAuth, scopes: tuple[str, ...]) -> TokenProvider:
        key = (oauth, scopes)
        with self._lock:
            provider = self._by_key.get(key)
            if provider is None:
                provider = self._by_key[key] = TokenProvider(oauth, scopes)
            return provider


_PROVIDERS = TokenProviders()


def access_token(
    account: Account, scopes: tuple[str, ...] | None = None, providers: TokenProviders | None = None
) -> str:
    """A valid access token for ``account`` (which must have ``oauth``). Raises
    AuthError (refused or no settings), ConnectError (endpoint unreachable: retryable)
    or PlanError. Never logs the token."""
    return access_lease(account, scopes, providers).value


def access_lease(
    account: Account, scopes: tuple[str, ...] | None = None, providers: TokenProviders | None = None
) -> Lease:
    """``access_token`` with the token's lifetime (see Lease.fresh)."""
    if account.oauth is None:
        raise AuthError(f"{account.describe()}: no oauth settings")
    wanted = scopes or default_scopes(account.oauth, account.type)
    provider = (providers or _PROVIDERS).get(account.oauth, tuple(wanted))
    try:
        return provider.lease()
    except AuthError as exc:
        raise AuthError(f"{account.describe()}: {exc}") from None
    except ConnectError as exc:
        raise ConnectError(f"{account.describe()}: {exc}") from None
