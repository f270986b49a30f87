"""Exchange via EWS (exchangelib): source and destination (``type: ews``).

Connecting
    ``options["service_endpoint"]`` (else ``http(s)://host[:port]/EWS/Exchange.asmx``) is
    used as given: no autodiscover. ``options["version"]`` ("Exchange2016", ...) skips
    exchangelib's ConvertId version probe. ``options["auth"]``: "ntlm" (default for a
    password, also "password"), "basic" or "oauth2" (the default when the endpoint has
    ``oauth:``; the bearer token comes from ``migrator.auth.access_token``).
    ``options["impersonation"]``: the login (``options["login"]`` with a password, the
    app with OAuth2) acts on ``account.user``'s mailbox through ExchangeImpersonation.
    exchangelib runs with a fail-fast retry policy: this module decides about retries,
    so an HTTP 401 is an AuthError at once (exchangelib's fault-tolerant policy would
    retry it as if the server were busy).

Folders
    Paths are relative to msgfolderroot; the inbox is ("INBOX",). Special uses map to
    distinguished folders (\\Sent sentitems, \\Trash deleteditems, \\Junk junkemail,
    \\Drafts drafts, \\Archive the distinguished "archive" folder where the server has
    one, else a top-level folder named "Archive"). Non-mail folders (calendar,
    contacts, ...), the outbox and "Sync Issues" are not listed. ``validity`` is a
    CRC of the folder's EWS id: a folder deleted and created again is a new folder.

Destination
    Each message is created with CreateItem (MimeContent, SaveOnly) and the MAPI
    properties that make it a received message: PR_MESSAGE_FLAGS (MSGFLAG_UNMODIFIED,
    | MSGFLAG_READ for \\Seen, | MSGFLAG_UNSENT only for \\Draft; without this property
    Exchange shows the item as a draft), PR_MESSAGE_DELIVERY_TIME = the internal date,
    IsRead, PR_FLAG_STATUS 2 for \\Flagged, PR_LAST_VERB_EXECUTED 102 for \\Answered
    (104 for $Forwarded), keywords as categories. \\Deleted has no EWS equivalent and
    is not carried.

    Every item is stamped with named properties in the migrator property set
    (``PROPERTY_SET``): ``MigratorSourceKey`` = sha256(source id, NUL, bytes), the
    source's size and the SHA-256 of the bytes. append() is idempotent: after an
    ambiguous failure (timeout, dropped connection, HTTP 5xx, ErrorServerBusy for a
    request) it looks the stamps up (FindItem restricted on MigratorSourceKey) before
    sending again; items it stored in a batch that then failed for another item are
    remembered, so the engine's one-by-one retry does not store them twice; items
    without Message-ID are always looked up first (the engine cannot match them after
    a crash, see below).

    Sizes: EWS ``Size`` is the MAPI item size, not the MIME size. The destination
    listing reports, for stamped items, the size the source reported (so the engine's
    Message-ID + size matching works after a crash or a lost state file) and puts the
    stamped SHA-256 in ``MessageMeta.extra["sha256"]``; unstamped items report EWS
    Size, which matches nothing (Exchange's MIME is not the original either).

Source
    ``list_pages`` drives SyncFolderItems page by page; each page's cursor is the
    SyncState after it, so a resumed run continues mid-folder. A sync state the server
    refuses (ErrorInvalidSyncStateData) restarts with a complete listing. Sizes and
    Message-IDs come from the MIME Exchange exports (fetched with the page and kept
    for the following fetch() up to ``CACHE_BYTES``), because the destination stores
    exactly those bytes: exported MIME is not byte-identical to what Exchange was
    given. Flags: \\Seen from IsRead, \\Draft from IsDraft, \\Flagged from
    PR_FLAG_STATUS, \\Answered / $Forwarded from PR_LAST_VERB_EXECUTED, keywords from
    categories. Internal date: DateTimeReceived. An item Exchange cannot export
    (a per-item GetItem error) is still listed, then left out by fetch() with a
    warning, and its reason kept in ``unreadable``: the engine reports it as vanished.

Errors
    ErrorServerBusy: the connector waits BackOffMilliseconds itself (up to
    ``options["max_backoff"]``, default 300 s; longer: TransientError with
    backoff_seconds) and goes on; so do HTTP 429/502/503/504 (Retry-After) and
    dropped connections (for CreateItem followed by a stamp lookup before anything is
    sent again).
    HTTP 401: AuthError (an OAuth2 token is renewed once first). ErrorQuotaExceeded:
    QuotaError. Per-item refusals (ErrorMessageSizeExceeded,
    ErrorMimeContentConversionFailed, ErrorCorruptData, ...): MessageError for the
    batch, after which the engine's one-by-one retry isolates the refused item.

exchangelib keeps extended-property definitions on its Message class: this module
registers its properties there once, at import, under ``migrator_*`` names.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from exchangelib import BASIC, DELEGATE, IMPERSONATION, NTLM, OAUTH2, Configuration, Credentials, FailFast, Q
from exchangelib import Account as XAccount
from exchangelib.credentials import OAuth2AuthorizationCodeCredentials
from exchangelib.errors import (
    EWSError,
    RateLimitError,
    ResponseMessageError,
    TransportError,
    UnauthorizedError,
)
from exchangelib.ewsdatetime import UTC as EWS_UTC
from exchangelib.ewsdatetime import EWSDateTime
from exchangelib.extended_properties import ExtendedProperty
from exchangelib.fields import FieldPath, InvalidField
from exchangelib.folders import Folder, FolderCollection
from exchangelib.items import SAVE_ONLY, SEND_TO_NONE, Message
from exchangelib.properties import DistinguishedFolderId, ItemId, Mailbox
from exchangelib.protocol import Protocol
from exchangelib.restriction import Restriction
from exchangelib.services import CreateFolder, CreateItem, FindItem, SyncFolderItems
from exchangelib.util import MNS, TNS, is_xml
from exchangelib.version import (
    EXCHANGE_2007_SP1,
    EXCHANGE_2010,
    EXCHANGE_2010_SP1,
    EXCHANGE_2010_SP2,
    EXCHANGE_2013,
    EXCHANGE_2013_SP1,
    EXCHANGE_2016,
    EXCHANGE_2019,
    EXCHANGE_O365,
    Version,
)

from migrator.connectors.base import ListingPage, Role
from migrator.errors import (
    AuthError,
    ConnectError,
    FolderError,
    MessageError,
    MigratorError,
    PlanError,
    QuotaError,
    TLSError,
    TransientError,
)
from migrator.model import (
    ANSWERED,
    DRAFT,
    FLAGGED,
    SEEN,
    Account,
    Capabilities,
    FolderInfo,
    FolderPath,
    MessageMeta,
    crlf_size,
    header_block,
    message_id_from_header_block,
    normalise_message_id,
)

__all__ = [
    "PROPERTY_SET",
    "EwsStore",
    "MapiState",
    "from_mapi",
    "open_ews",
    "request_batches",
    "source_key",
    "to_mapi",
]

log = logging.getLogger("migrator.ews")
T = TypeVar("T")

# exchangelib logs every request's HTTP headers (Authorization included) and XML at DEBUG:
# whatever the root logger's level, its loggers never go below INFO.
if logging.getLogger("exchangelib").level < logging.INFO:
    logging.getLogger("exchangelib").setLevel(logging.INFO)

PROPERTY_SET = "8f0c1f5e-5a3b-4c39-9d7e-6b1d2a7c4e91"  # migrator's named-property set (fixed forever)
MSGFLAG_READ = 0x1
MSGFLAG_UNMODIFIED = 0x2
MSGFLAG_UNSENT = 0x8
FLAG_STATUS_COMPLETE = 1
FLAG_STATUS_FLAGGED = 2
VERB_REPLY = 102
VERB_REPLY_ALL = 103
VERB_FORWARD = 104
FORWARDED = "$Forwarded"

CACHE_BYTES = 64 * 1024 * 1024  # MIME kept from a listing page for the following fetch()
REQUEST_BYTES = 10 * 1024 * 1024  # base64 MIME per CreateItem request
REQUEST_ITEMS = 100
GET_BYTES = 16 * 1024 * 1024  # MIME (by EWS Size) per GetItem request
GET_ITEMS = 100
SYNC_PAGE = 100  # SyncFolderItems MaxChangesReturned
FIND_PAGE = 500  # FindItem page size
ROUNDS = 8  # attempts of one append batch before giving up with TransientError
LOOKUP_CHUNK = 50  # stamps per FindItem restriction
TOKEN_CHECK = 60.0  # seconds between looks at migrator.auth for a newer OAuth2 token

VERSIONS = {
    "exchange2007_sp1": EXCHANGE_2007_SP1,
    "exchange2010": EXCHANGE_2010,
    "exchange2010_sp1": EXCHANGE_2010_SP1,
    "exchange2010_sp2": EXCHANGE_2010_SP2,
    "exchange2013": EXCHANGE_2013,
    "exchange2013_sp1": EXCHANGE_2013_SP1,
    "exchange2016": EXCHANGE_2016,
    "exchange2019": EXCHANGE_2019,
    "exchangeonline": EXCHANGE_O365,
    "office365": EXCHANGE_O365,
}

DISTINGUISHED_USES = {
    "inbox": None,
    "sentitems": "\\Sent",
    "deleteditems": "\\Trash",
    "junkemail": "\\Junk",
    "drafts": "\\Drafts",
    "archive": "\\Archive",
}
USE_TO_DISTINGUISHED = {use: dist for dist, use in DISTINGUISHED_USES.items() if use}
SKIPPED_DISTINGUISHED = ("outbox", "syncissues")

# per-item response codes
TRANSIENT_ITEM_CODES = frozenset(
    {
        "ErrorServerBusy",
        "ErrorTimeoutExpired",
        "ErrorInternalServerTransientError",
        "ErrorBatchProcessingStopped",
        "ErrorTooManyObjectsOpened",
        "ErrorMailboxStoreUnavailable",
        "ErrorMailboxMoveInProgress",
        "ErrorConnectionFailed",
    }
)
QUOTA_CODES = frozenset({"ErrorQuotaExceeded"})
FOLDER_CODES = frozenset({"ErrorFolderNotFound", "ErrorParentFolderNotFound"})
DENIED = ("ErrorImpersonateUserDenied", "ErrorAccessDenied", "ErrorNonExistentMailbox", "ErrorImpersonationDenied")


# ---------------------------------------------------------------------- extended properties
class _SourceKey(ExtendedProperty):
    property_set_id = PROPERTY_SET
    property_name = "MigratorSourceKey"
    property_type = "String"


class _SourceSize(ExtendedProperty):
    property_set_id = PROPERTY_SET
    property_name = "MigratorSourceSize"
    property_type = "Integer"


class _SourceSha(ExtendedProperty):
    property_set_id = PROPERTY_SET
    property_name = "MigratorSha256"
    property_type = "String"


class _MessageFlags(ExtendedProperty):
    property_tag = 0x0E07  # PR_MESSAGE_FLAGS
    property_type = "Integer"


class _DeliveryTime(ExtendedProperty):
    property_tag = 0x0E06  # PR_MESSAGE_DELIVERY_TIME
    property_type = "SystemTime"


class _FlagStatus(ExtendedProperty):
    property_tag = 0x1090  # PR_FLAG_STATUS
    property_type = "Integer"


class _LastVerb(ExtendedProperty):
    property_tag = 0x1081  # PR_LAST_VERB_EXECUTED
    property_type = "Integer"


_PROPERTIES: dict[str, type[ExtendedProperty]] = {
    "migrator_source_key": _SourceKey,
    "migrator_source_size": _SourceSize,
    "migrator_sha256": _SourceSha,
    "migrator_message_flags": _MessageFlags,
    "migrator_delivery_time": _DeliveryTime,
    "migrator_flag_status": _FlagStatus,
    "migrator_last_verb": _LastVerb,
}


def _register() -> None:
    for name, cls in _PROPERTIES.items():
        try:
            Message.get_field_by_fieldname(name)
        except InvalidField:
            Message.register(name, cls)


_register()


def _paths(*names: str) -> set[FieldPath]:
    return {FieldPath(field=Message.get_field_by_fieldname(n)) for n in names}


LIST_FIELDS = (
    "message_id",
    "size",
    "is_read",
    "is_draft",
    "datetime_received",
    "migrator_flag_status",
    "migrator_last_verb",
    "migrator_source_key",
    "migrator_source_size",
    "migrator_sha256",
)
FETCH_FIELDS = (
    "mime_content",
    "is_read",
    "is_draft",
    "datetime_received",
    "categories",
    "migrator_flag_status",
    "migrator_last_verb",
)


# ---------------------------------------------------------------------- pure mapping
@dataclass(frozen=True, slots=True)
class MapiState:
    """What a flag set becomes on an Exchange item."""

    message_flags: int
    is_read: bool
    flag_status: int | None
    last_verb: int | None
    categories: tuple[str, ...]


def to_mapi(flags: frozenset[str]) -> MapiState:
    """IMAP flags -> MAPI state. Keywords become categories (in a stable order); $Forwarded
    becomes PR_LAST_VERB_EXECUTED 104 unless \\Answered already took it (then a category)."""
    seen = SEEN in flags
    value = MSGFLAG_UNMODIFIED | (MSGFLAG_READ if seen else 0) | (MSGFLAG_UNSENT if DRAFT in flags else 0)
    verb = VERB_REPLY if ANSWERED in flags else (VERB_FORWARD if FORWARDED in flags else None)
    keywords = sorted(f for f in flags if not f.startswith("\\") and not (f == FORWARDED and verb == VERB_FORWARD))
    return MapiState(
        message_flags=value,
        is_read=seen,
        flag_status=FLAG_STATUS_FLAGGED if FLAGGED in flags else None,
        last_verb=verb,
        categories=tuple(keywords),
    )


def from_mapi(
    is_read: bool | None,
    is_draft: bool | None,
    flag_status: int | None,
    last_verb: int | None,
    categories: Sequence[str] | None,
) -> frozenset[str]:
    """Exchange item state -> IMAP flags (the inverse of ``to_mapi``)."""
    out = {c for c in (categories or ()) if c and not c.startswith("\\")}
    if is_read:
        out.add(SEEN)
    if is_draft:
        out.add(DRAFT)
    if flag_status == FLAG_STATUS_FLAGGED:
        out.add(FLAGGED)
    if last_verb in (VERB_REPLY, VERB_REPLY_ALL):
        out.add(ANSWERED)
    elif last_verb == VERB_FORWARD:
        out.add(FORWARDED)
    return frozenset(out)


def source_key(source_id: str, raw: bytes) -> str:
    """The stamp identifying one source message at the destination."""
    h = hashlib.sha256(source_id.encode("utf-8", "surrogateescape"))
    h.update(b"\0")
    h.update(raw)
    return h.hexdigest()


def encoded_size(n: int) -> int:
    """Bytes of ``n`` bytes in base64."""
    return 4 * math.ceil(n / 3)


def request_batches(sizes: Sequence[int], max_bytes: int, max_items: int) -> list[list[int]]:
    """Indices cut into CreateItem requests of at most ``max_bytes`` base64 bytes and
    ``max_items`` items (a larger single message goes alone)."""
    out: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        enc = encoded_size(size) + 2048  # properties and XML around each item
        if cur and (total + enc > max_bytes or len(cur) >= max_items):
            out.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += enc
    if cur:
        out.append(cur)
    return out


def folder_validity(folder_id: str) -> int:
    return binascii.crc32(folder_id.encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------------- exchangelib plumbing
class HttpStatusError(TransportError):
    """An HTTP status that is not an EWS answer (429, 502, 503, 504, a 500 without SOAP)."""

    def __init__(self, status: int, retry_after: float | None):
        super().__init__(f"HTTP {status} from the EWS endpoint")
        self.status = status
        self.retry_after = retry_after


class _Policy(FailFast):
    """exchangelib's fail-fast policy, except that gateway errors come out as
    HttpStatusError with their Retry-After, for the connector to decide."""

    def raise_response_errors(self, response: Any) -> None:
        status = response.status_code
        if status in (429, 502, 503, 504) or (status == 500 and not (response.content and is_xml(response.content))):
            retry = response.headers.get("Retry-After", "")
            raise HttpStatusError(status, float(retry) if retry.isdigit() else None)
        super().raise_response_errors(response)


def _large_chunks(response: Any, *args: Any, **kwargs: Any) -> Any:
    """A requests response hook: exchangelib parses every answer from
    ``response.iter_content()``, whose default chunk is one byte (about 1 MB/s of MIME
    on a fast machine); hand it 64 KiB chunks instead."""
    read = type(response).iter_content

    def iter_content(chunk_size: int | None = 64 * 1024, decode_unicode: bool = False) -> Any:
        return read(response, chunk_size, decode_unicode)

    response.iter_content = iter_content
    return response


class _Protocol(Protocol):
    """The class each connection's Protocol gets after creation: sessions verify TLS
    as the endpoint says (a CA file, or not at all) and read answers in large chunks."""

    migrator_verify: bool | str = True

    def create_session(self) -> Any:
        session = super().create_session()
        session.verify = self.migrator_verify
        session.hooks.setdefault("response", []).append(_large_chunks)
        return session


class _Credentials(Credentials):
    """Password credentials, unique per connection (exchangelib caches one Protocol per
    endpoint and credentials; a reconnect must not inherit a broken session pool)."""

    def __init__(self, username: str, password: str):
        super().__init__(username, password)
        self.connection = uuid.uuid4().hex


class _BearerCredentials(OAuth2AuthorizationCodeCredentials):
    """An OAuth2 access token from migrator.auth, renewed through ``fetch`` when
    exchangelib finds it expired."""

    def __init__(self, fetch: Callable[[], str], identity: Any):
        super().__init__(access_token={"access_token": fetch(), "token_type": "Bearer"}, identity=identity)
        self._fetch = fetch
        self.connection = uuid.uuid4().hex

    def refresh(self, session: Any) -> None:
        self.access_token = {"access_token": self._fetch(), "token_type": "Bearer"}

    def __repr__(self) -> str:
        return "_BearerCredentials('***')"


def _endpoint(account: Account) -> str:
    url = account.options.get("service_endpoint")
    if url:
        return str(url)
    if not account.host:
        raise PlanError(f"{account.describe()}: an ews endpoint needs service_endpoint or host")
    scheme = "http" if account.security == "none" else "https"
    port = f":{account.port}" if account.port and account.port not in (80, 443) else ""
    return f"{scheme}://{account.host}{port}/EWS/Exchange.asmx"


def _version(account: Account) -> Version | None:
    name = account.options.get("version")
    if not name:
        return None
    build = VERSIONS.get(str(name).replace(" ", "").lower())
    if build is None:
        raise PlanError(f"{account.describe()}: unknown EWS version {name!r}; expected one of {', '.join(VERSIONS)}")
    return Version(build=build)


def _item_error(code: str, text: str) -> str:
    return f"{code}: {text}" if text and text != code else code


@dataclass(slots=True)
class _Outcome:
    item_id: str | None = None
    code: str = "NoError"
    text: str = ""
    back_off: float | None = None


@dataclass(slots=True)
class _Dir:
    """A folder as listed: id, path below msgfolderroot, distinguished name if any."""

    id: str
    changekey: str | None
    parent_id: str | None
    name: str
    folder_class: str | None
    distinguished: str | None = None
    path: FolderPath = ()
    children: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- the store
class EwsStore:
    """One mailbox over EWS. Used by one thread at a time (the base contract)."""

    def __init__(self, account: Account, role: Role, *, sleep: Callable[[float], None] = time.sleep):
        if not account.user or "@" not in account.user:
            raise PlanError(f"{account.describe()}: the user of an ews side must be the mailbox's SMTP address")
        self.account = account
        self.role = role
        self._sleep = sleep
        opts = account.options
        self._max_backoff = float(opts.get("max_backoff", 300.0))
        self._sync_page_size = int(opts.get("sync_page_size", SYNC_PAGE))
        self._request_bytes = int(opts.get("request_bytes", REQUEST_BYTES))
        max_size = opts.get("max_message_size")
        self.capabilities = Capabilities(
            folders=True,
            flags=True,
            keywords=True,
            internal_date=True,
            append_returns_id=True,
            max_message_bytes=int(max_size) if max_size else None,
            incremental=True,
        )
        self.waits: list[float] = []  # back-offs obeyed, in seconds (for reports and tests)
        self.unreadable: dict[str, str] = {}  # item id -> why Exchange would not export it
        self._dirs: dict[str, _Dir] | None = None
        self._by_path: dict[FolderPath, str] = {}
        self._alias: dict[FolderPath, str] = {}
        self._distinguished: dict[str, str] = {}
        self._unconfirmed: dict[str, str] = {}  # stamp -> item id stored but not yet returned
        self._cache: dict[str, tuple[MessageMeta, bytes]] = {}
        self._closed = False
        self._oauth = account.oauth is not None or opts.get("auth") == "oauth2"
        self._token_checked = time.monotonic()
        self._xacc, self._config = self._connect()
        try:
            self._root = self._read("open the mailbox", lambda: self._xacc.msg_folder_root)
            self._load_distinguished()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connection
    def _connect(self) -> tuple[XAccount, Configuration]:
        account, opts = self.account, self.account.options
        auth = str(opts.get("auth") or ("oauth2" if account.oauth else "ntlm")).lower()
        impersonate = bool(opts.get("impersonation"))
        if auth == "oauth2":
            if account.oauth is None:
                raise PlanError(f"{account.describe()}: auth oauth2 needs `oauth:` settings on the endpoint")
            from exchangelib.account import Identity

            credentials: Any = _BearerCredentials(self._token, Identity(primary_smtp_address=account.user))
            auth_type = OAUTH2
            impersonate = impersonate or account.oauth.flow == "client_credentials"
        else:
            if account.secret is None:
                raise PlanError(f"{account.describe()}: no password")
            login = opts.get("login") or account.user
            if impersonate and not opts.get("login"):
                raise PlanError(
                    f"{account.describe()}: impersonation with a password needs the service account's login "
                    "(options.login)"
                )
            credentials = _Credentials(str(login), account.secret.get())
            auth_type = {"ntlm": NTLM, "password": NTLM, "basic": BASIC}.get(auth)
            if auth_type is None:
                raise PlanError(f"{account.describe()}: unknown auth {auth!r} (ntlm, basic or oauth2)")
        config = Configuration(
            service_endpoint=_endpoint(account),
            credentials=credentials,
            auth_type=auth_type,
            version=_version(account),
            retry_policy=_Policy(),
            max_connections=int(opts.get("max_connections") or 1),
        )
        try:
            xacc = XAccount(
                primary_smtp_address=account.user,
                config=config,
                autodiscover=False,
                access_type=IMPERSONATION if impersonate else DELEGATE,
                default_timezone=EWS_UTC,
            )
        except (TransportError, ValueError) as exc:
            raise ConnectError(f"{account.describe()}: {exc}") from None
        protocol = xacc.protocol
        protocol.__class__ = _Protocol
        protocol.migrator_verify = account.ca_file or account.verify_tls
        protocol.TIMEOUT = account.timeout  # instance attributes shadow exchangelib's class defaults
        protocol.RETRY_WAIT = 1
        return xacc, config

    def _token(self) -> str:
        from migrator.auth import access_token

        return access_token(self.account)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        xacc = getattr(self, "_xacc", None)
        if xacc is None:
            return
        try:
            xacc.protocol.close()
        except Exception:  # closing a broken pool may fail; nothing to save
            log.debug("closing the EWS session pool failed", exc_info=True)
        with contextlib.suppress(KeyError):
            del Protocol[self._config]

    # ------------------------------------------------------------------ error handling
    def _describe(self) -> str:
        return self.account.describe()

    def _classify(self, exc: BaseException, what: str) -> MigratorError:
        """The migrator error for anything exchangelib or the network raised."""
        if isinstance(exc, MigratorError):
            return exc
        where = f"{self._describe()}: {what}"
        text = self._mask(str(exc) or type(exc).__name__)
        name = type(exc).__name__
        if isinstance(exc, UnauthorizedError):
            return AuthError(f"{where}: the server refused the credentials (HTTP 401)")
        if isinstance(exc, HttpStatusError):
            return TransientError(f"{where}: {text}", backoff_seconds=exc.retry_after)
        if isinstance(exc, RateLimitError):
            return TransientError(f"{where}: {text}", backoff_seconds=getattr(exc, "wait", None))
        if name == "ErrorServerBusy":
            return TransientError(f"{where}: the server is busy (ErrorServerBusy)", backoff_seconds=exc.back_off)  # type: ignore[attr-defined]
        if name in ("ErrorTimeoutExpired", "ErrorInternalServerTransientError", "ErrorTooManyObjectsOpened"):
            return TransientError(f"{where}: {name}: {text}")
        if name in ("ErrorExceededConnectionCount", "ErrorMailboxStoreUnavailable", "ErrorMailboxMoveInProgress"):
            return TransientError(f"{where}: {name}: {text}")
        if name in QUOTA_CODES:
            return QuotaError(f"{where}: the mailbox is over its quota ({name})")
        if name in DENIED:
            return AuthError(f"{where}: {name}: {text}")
        if name in FOLDER_CODES:
            return FolderError(f"{where}: {name}: {text}")
        if isinstance(exc, ResponseMessageError):  # any other EWS response code: retrying will not help
            return MigratorError(f"{where}: {name}: {text}", retryable=False)
        if isinstance(exc, requests.exceptions.SSLError) or (
            isinstance(exc, TransportError) and ("CERTIFICATE" in text.upper() or "SSL" in text.upper())
        ):
            return TLSError(f"{where}: {text}")
        if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError, OSError)):
            return TransientError(f"{where}: {text}")
        if isinstance(exc, TransportError):
            return ConnectError(f"{where}: {text}")
        if isinstance(exc, EWSError):
            return MigratorError(f"{where}: {name}: {text}", retryable=False)
        return MigratorError(f"{where}: {name}: {text}", retryable=False)

    def _mask(self, text: str) -> str:
        secret = None
        if self.account.secret is not None and not self._oauth:
            try:
                secret = self.account.secret.get()
            except PlanError:
                secret = None
        from migrator.auth import mask

        return mask(text, secret)

    def _wait(self, seconds: float, why: str) -> None:
        if seconds > self._max_backoff:
            raise TransientError(
                f"{self._describe()}: {why}: the server asks for {seconds:.0f}s", backoff_seconds=seconds
            )
        log.info("%s: %s; waiting %.2fs as asked", self._describe(), why, seconds)
        self.waits.append(seconds)
        self._sleep(seconds)

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        """Run an idempotent request, waiting and retrying on throttling and transient
        failures (up to ROUNDS attempts); other errors are raised classified."""
        refreshed = False
        self._check_token()
        for attempt in range(1, ROUNDS + 1):
            try:
                return fn()
            except Exception as exc:
                err = self._classify(exc, what)
                if isinstance(err, AuthError) and self._oauth and not refreshed and isinstance(exc, UnauthorizedError):
                    refreshed = True
                    self._renew_token()
                    continue
                if isinstance(err, TransientError) and attempt < ROUNDS:
                    self._wait(err.backoff_seconds or min(0.5 * 2**attempt, 30.0), str(err))
                    continue
                raise err from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _renew_token(self) -> None:
        """Take the current token from migrator.auth and start new sessions with it."""
        creds = self._xacc.protocol.credentials
        if isinstance(creds, _BearerCredentials):
            creds.refresh(None)
            self._xacc.protocol.close()
        self._token_checked = time.monotonic()

    def _check_token(self) -> None:
        """Every TOKEN_CHECK seconds, switch to the token migrator.auth hands out now (it
        refreshes tokens before they expire; a run may last days)."""
        if not self._oauth or time.monotonic() - self._token_checked < TOKEN_CHECK:
            return
        creds = self._xacc.protocol.credentials
        if not isinstance(creds, _BearerCredentials):
            return
        current = self._token()
        self._token_checked = time.monotonic()
        if creds.access_token is None or creds.access_token.get("access_token") != current:
            creds.access_token = {"access_token": current, "token_type": "Bearer"}
            self._xacc.protocol.close()

    def _soap(self, svc: Any, payload: Any) -> list[Any]:
        """Send ``payload`` through exchangelib's session, version and fault handling and
        return the response message elements, to be read one by one (the public call()
        would replace a per-item ErrorServerBusy's BackOffMilliseconds by its own wait
        and drop the results of the items after it)."""
        return list(svc._get_response_xml(payload=payload))

    # ------------------------------------------------------------------ folders
    def _load_distinguished(self) -> None:
        mailbox = Mailbox(email_address=self.account.user)

        def get(names: Sequence[str]) -> dict[str, str]:
            folders = [
                Folder(root=self._root.root, _distinguished_id=DistinguishedFolderId(id=n, mailbox=mailbox))
                for n in names
            ]
            found: dict[str, str] = {}
            for name, f in zip(
                names, FolderCollection(account=self._xacc, folders=folders).get_folders(), strict=False
            ):
                if not isinstance(f, Exception) and f is not None and f.id:
                    found[name] = f.id
            return found

        names = ["msgfolderroot", "inbox", "sentitems", "deleteditems", "junkemail", "drafts", *SKIPPED_DISTINGUISHED]
        self._distinguished = self._read("find the distinguished folders", lambda: get(names))
        try:  # "archive" is newer than the others: a server that does not know it may refuse the request
            self._distinguished.update(self._read("find the archive folder", lambda: get(["archive"])))
        except MigratorError as exc:
            log.debug("%s: no distinguished archive folder (%s)", self._describe(), exc)
        if "msgfolderroot" not in self._distinguished:
            self._distinguished["msgfolderroot"] = self._root.id

    def _scan(self) -> dict[str, _Dir]:
        top = self._distinguished["msgfolderroot"]
        fields = {
            FieldPath(field=Folder.get_field_by_fieldname(n))
            for n in ("name", "folder_class", "parent_folder_id", "child_folder_count")
        }

        def walk() -> list[Any]:
            coll = FolderCollection(account=self._xacc, folders=[self._root])
            return list(coll.find_folders(depth="Deep", additional_fields=fields, page_size=500))

        found = self._read("list folders", walk)
        by_dist = {v: k for k, v in self._distinguished.items()}
        dirs: dict[str, _Dir] = {top: _Dir(top, None, None, "", "IPF.Note", "msgfolderroot")}
        for f in found:
            if isinstance(f, Exception):
                raise self._classify(f, "list folders")
            parent = f.parent_folder_id.id if f.parent_folder_id else None
            dirs[f.id] = _Dir(f.id, f.changekey, parent, f.name or "", f.folder_class, by_dist.get(f.id))
        for d in dirs.values():
            if d.parent_id in dirs and d.id != top:
                dirs[d.parent_id].children.append(d.id)

        def assign(dir_id: str, prefix: FolderPath) -> None:
            for cid in dirs[dir_id].children:
                c = dirs[cid]
                c.path = ("INBOX",) if c.distinguished == "inbox" else (*prefix, c.name)
                assign(cid, c.path)

        assign(top, ())
        self._dirs = dirs
        self._by_path = {d.path: d.id for d in dirs.values() if d.path}
        return dirs

    def _ensure_scanned(self) -> dict[str, _Dir]:
        return self._dirs if self._dirs is not None else self._scan()

    @staticmethod
    def _is_mail(d: _Dir, dirs: dict[str, _Dir]) -> bool:
        cur: _Dir | None = d
        while cur is not None and cur.distinguished != "msgfolderroot":
            if cur.distinguished in SKIPPED_DISTINGUISHED:
                return False
            if cur.folder_class and not cur.folder_class.startswith("IPF.Note"):
                return False
            cur = dirs.get(cur.parent_id) if cur.parent_id else None
        return True

    def _special_use(self, d: _Dir) -> str | None:
        if d.distinguished in DISTINGUISHED_USES:
            return DISTINGUISHED_USES[d.distinguished]
        if "archive" not in self._distinguished and len(d.path) == 1 and d.path[0].casefold() == "archive":
            return "\\Archive"
        return None

    def _info(self, d: _Dir, path: FolderPath | None = None) -> FolderInfo:
        return FolderInfo(path or d.path, self._special_use(d), validity=folder_validity(d.id))

    def list_folders(self) -> list[FolderInfo]:
        dirs = self._scan()
        out = [self._info(d) for d in dirs.values() if d.path and self._is_mail(d, dirs)]
        return sorted(out, key=lambda f: (not f.is_inbox, f.path))

    def _resolve(self, path: FolderPath) -> _Dir | None:
        dirs = self._ensure_scanned()
        if path in self._alias:
            return dirs.get(self._alias[path])
        if len(path) >= 1 and path[0].upper() == "INBOX":
            path = ("INBOX", *path[1:])
        fid = self._by_path.get(path)
        if fid is None:  # Exchange folder names are case-insensitive
            folded = tuple(p.casefold() for p in path)
            fid = next((i for p, i in self._by_path.items() if tuple(x.casefold() for x in p) == folded), None)
        return dirs.get(fid) if fid else None

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        d = self._resolve(path)
        return None if d is None else self._info(d, path)

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        if not path:
            raise FolderError(f"{self._describe()}: empty folder path")
        dirs = self._ensure_scanned()
        target = self._special_target(path, special_use)
        if target is not None:
            self._alias[path] = target
            return self._info(dirs[target], path)
        found = self._resolve(path)
        if found is not None:
            return self._info(found, path)
        if path[0].upper() == "INBOX":
            parent = self._distinguished["inbox"]
            start = 1
        else:
            parent = self._distinguished["msgfolderroot"]
            start = 0
        for i in range(start, len(path)):
            existing = self._resolve(path[: i + 1])
            if existing is not None:
                parent = existing.id
                continue
            parent = self._create_folder(parent, path[: i + 1])
        d = self._ensure_scanned()[parent]
        return self._info(d, path)

    def _special_target(self, path: FolderPath, special_use: str | None) -> str | None:
        if path == ("INBOX",) or (len(path) == 1 and path[0].upper() == "INBOX"):
            return self._distinguished["inbox"]
        if len(path) != 1 or special_use not in USE_TO_DISTINGUISHED:
            return None
        dist = USE_TO_DISTINGUISHED[special_use]
        if dist in self._distinguished:
            return self._distinguished[dist]
        return None  # \Archive without a distinguished folder: a top-level folder of that name

    def _create_folder(self, parent_id: str, path: FolderPath) -> str:
        name = path[-1]
        parent = Folder(root=self._root.root, id=parent_id)

        def create() -> Any:
            spec = Folder(root=self._root.root, name=name, folder_class="IPF.Note")
            return next(iter(CreateFolder(account=self._xacc).call(parent_folder=parent, folders=[spec])))

        made = self._read(f"create folder {'/'.join(path)!r}", create)
        if isinstance(made, Exception) and type(made).__name__ != "ErrorFolderExists":
            raise FolderError(f"{self._describe()}: cannot create folder {'/'.join(path)!r}: {made}")
        self._scan()  # ErrorFolderExists is success: the folder is found by the new listing
        d = self._resolve(path)
        if d is None:
            raise FolderError(f"{self._describe()}: folder {'/'.join(path)!r} was created but cannot be found")
        return d.id

    def _folder_obj(self, folder: FolderInfo) -> Folder:
        d = self._resolve(folder.path)
        if d is None:
            raise FolderError(f"{self._describe()}: folder {'/'.join(folder.path)!r} does not exist")
        return Folder(root=self._root.root, id=d.id, changekey=d.changekey)

    # ------------------------------------------------------------------ listing (destination view)
    def _meta_of(self, item: Any, size: int | None = None, raw: bytes | None = None) -> MessageMeta:
        flags = from_mapi(
            getattr(item, "is_read", None),
            getattr(item, "is_draft", None),
            getattr(item, "migrator_flag_status", None),
            getattr(item, "migrator_last_verb", None),
            getattr(item, "categories", None),
        )
        received = getattr(item, "datetime_received", None)
        date = datetime.fromtimestamp(received.timestamp(), UTC) if received is not None else None
        extra: dict[str, str] = {}
        if raw is not None:
            mid = message_id_from_header_block(header_block(raw))
        else:
            mid = normalise_message_id(getattr(item, "message_id", None))
            sha = getattr(item, "migrator_sha256", None)
            if sha:
                extra["sha256"] = sha
            stamped = getattr(item, "migrator_source_size", None)
            if stamped:
                size = int(stamped)
        return MessageMeta(
            id=item.id,
            size=size if size is not None else int(getattr(item, "size", 0) or 0),
            flags=flags,
            internal_date=date,
            message_id=mid,
            extra=extra,
        )

    def _find(self, fobj: Folder, q: Q | None, fields: Sequence[str]) -> list[Any]:
        """FindItem (shallow, paged) with ``fields``. Called directly: exchangelib's
        QuerySet refuses extended properties in FindItem, which Exchange returns."""
        restriction = Restriction(q, folders=[fobj], applies_to=Restriction.ITEMS) if q is not None else None
        svc = FindItem(account=self._xacc, page_size=FIND_PAGE)
        return list(
            svc.call(
                folders=[fobj],
                additional_fields=_paths(*fields),
                restriction=restriction,
                order_fields=None,
                shape="IdOnly",
                query_string=None,
                depth="Shallow",
                calendar_view=None,
                max_items=None,
                offset=0,
            )
        )

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Destination role: every item with Message-ID, the stamped source size (EWS Size
        for unstamped items) and flags, from FindItem. Source role: the complete listing
        of ``list_pages`` (sizes of the exported MIME)."""
        if self.role == "source":
            out: list[MessageMeta] = []
            for page in self.list_pages(folder, None):
                out.extend(page.messages)
            return out
        fobj = self._folder_obj(folder)

        items = self._read(f"list {'/'.join(folder.path)!r}", lambda: self._find(fobj, None, LIST_FIELDS))
        return [self._meta_of(i) for i in items if not isinstance(i, Exception)]

    # ------------------------------------------------------------------ source: incremental listing
    def list_pages(self, folder: FolderInfo, cursor: str | None) -> Iterator[ListingPage]:
        fobj = self._folder_obj(folder)
        state = cursor
        complete = cursor is None
        while True:
            try:
                changes, new_state, last = self._sync_page(fobj, state, folder)
            except _InvalidSyncState:
                if state is None:
                    raise FolderError(f"{self._describe()}: the server refuses a fresh sync of {folder.path}") from None
                log.warning("%s: %s: sync state refused; listing the folder again", self._describe(), folder.path)
                state, complete = None, True
                continue
            wanted: list[Any] = []
            vanished: list[str] = []
            for kind, obj in changes:
                if kind == SyncFolderItems.DELETE:
                    vanished.append(obj.id)
                elif kind == SyncFolderItems.READ_FLAG_CHANGE:
                    wanted.append(obj[0])
                else:
                    wanted.append(obj)
            self._cache.clear()
            metas = self._describe_items(wanted, folder)
            yield ListingPage(metas, cursor=new_state, vanished=vanished, complete=complete)
            state = new_state
            if last:
                return

    def _sync_page(self, fobj: Folder, state: str | None, folder: FolderInfo) -> tuple[list[Any], str, bool]:
        svc = SyncFolderItems(account=self._xacc)
        payload = svc.get_payload(
            folder=fobj,
            shape="IdOnly",
            additional_fields=_paths("size"),
            sync_state=state,
            ignore=None,
            max_changes_returned=self._sync_page_size,
            sync_scope=None,
        )
        msgs = self._read(f"sync {'/'.join(folder.path)!r}", lambda: self._soap(svc, payload))
        if len(msgs) != 1:
            raise MigratorError(f"{self._describe()}: SyncFolderItems answered {len(msgs)} messages", retryable=True)
        msg = msgs[0]
        code = msg.findtext(f"{{{MNS}}}ResponseCode") or ""
        if code == "ErrorInvalidSyncStateData":
            raise _InvalidSyncState()
        if code != "NoError":
            text = msg.findtext(f"{{{MNS}}}MessageText") or ""
            raise self._classify(svc._get_exception(code=code, text=text), f"sync {'/'.join(folder.path)!r}")
        new_state = msg.findtext(f"{{{MNS}}}SyncState") or ""
        last = (msg.findtext(f"{{{MNS}}}IncludesLastItemInRange") or "true").lower() == "true"
        container = msg.find(f"{{{MNS}}}Changes")
        changes = [svc._elem_to_obj(c) for c in (container if container is not None else [])]
        return changes, new_state, last

    def _describe_items(self, items: Sequence[Any], folder: FolderInfo) -> list[MessageMeta]:
        """Full metadata (size of the exported MIME) for listed items; keeps the MIME in
        the page cache for the fetch() that follows."""
        metas: list[MessageMeta] = []
        budget = CACHE_BYTES
        for meta, raw in self._get_mime([(i.id, getattr(i, "size", None) or 0) for i in items], folder):
            metas.append(meta)
            if len(raw) <= budget:
                self._cache[meta.id] = (meta, raw)
                budget -= len(raw)
        # an item Exchange cannot export is still listed (with its EWS size), so that the
        # engine tries it and reports it instead of never seeing it
        for i in items:
            if i.id in self.unreadable:
                metas.append(MessageMeta(id=i.id, size=int(getattr(i, "size", 0) or 0)))
        return metas

    def _get_mime(self, ids: Sequence[tuple[str, int]], folder: FolderInfo) -> Iterator[tuple[MessageMeta, bytes]]:
        """(fresh meta, exported MIME) for item ids, in GetItem requests cut by size.
        Items gone meanwhile are left out."""
        chunk: list[str] = []
        total = 0
        for item_id, size in ids:
            if chunk and (total + size > GET_BYTES or len(chunk) >= GET_ITEMS):
                yield from self._get_chunk(chunk, folder)
                chunk, total = [], 0
            chunk.append(item_id)
            total += size
        if chunk:
            yield from self._get_chunk(chunk, folder)

    def _get_chunk(self, ids: list[str], folder: FolderInfo) -> Iterator[tuple[MessageMeta, bytes]]:
        def get() -> list[Any]:
            return list(self._xacc.fetch(ids=[ItemId(id=i) for i in ids], only_fields=list(FETCH_FIELDS)))

        for item_id, item in zip(ids, self._read(f"fetch from {'/'.join(folder.path)!r}", get), strict=True):
            if isinstance(item, Exception):
                name = type(item).__name__
                if name in ("ErrorItemNotFound", "ErrorInvalidIdMalformed"):
                    continue  # vanished meanwhile
                if isinstance(item, ResponseMessageError):  # this item cannot be read; the others can
                    reason = f"{name}: {self._mask(str(item))}"
                    self.unreadable[item_id] = reason
                    log.warning("%s: %s: cannot read a message (%s)", self._describe(), "/".join(folder.path), reason)
                    continue
                raise self._classify(item, f"fetch from {'/'.join(folder.path)!r}")
            raw = item.mime_content or b""
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogateescape")
            yield self._meta_of(item, crlf_size(raw), raw), raw

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        rest: list[tuple[str, int]] = []
        for meta in msgs:
            hit = self._cache.pop(meta.id, None)
            if hit is not None:
                yield hit
            else:
                rest.append((meta.id, meta.size))
        if rest:
            yield from self._get_mime(rest, folder)

    # ------------------------------------------------------------------ destination: append
    def _message(self, meta: MessageMeta, raw: bytes, key: str) -> Message:
        state = to_mapi(meta.flags)
        msg = Message(
            account=self._xacc,
            mime_content=raw,
            is_read=state.is_read,
            categories=list(state.categories) or None,
            migrator_message_flags=state.message_flags,
            migrator_source_key=key,
            migrator_source_size=meta.size if meta.size > 0 else crlf_size(raw),
            migrator_sha256=hashlib.sha256(raw).hexdigest(),
        )
        if meta.internal_date is not None:
            when = meta.internal_date.astimezone(UTC)
            msg.migrator_delivery_time = EWSDateTime.from_datetime(when).astimezone(EWS_UTC)
        if state.flag_status is not None:
            msg.migrator_flag_status = state.flag_status
        if state.last_verb is not None:
            msg.migrator_last_verb = state.last_verb
        return msg

    def _create(self, fobj: Folder, msgs: list[Message]) -> list[_Outcome]:
        """One CreateItem request; one outcome per item. Raises what the transport or a
        request-level fault raises. An OAuth2 token the server no longer takes (HTTP 401:
        nothing was stored) is renewed once."""
        try:
            return self._create_once(fobj, msgs)
        except UnauthorizedError:
            if not self._oauth:
                raise
            self._renew_token()
            return self._create_once(fobj, msgs)

    def _create_once(self, fobj: Folder, msgs: list[Message]) -> list[_Outcome]:
        svc = CreateItem(account=self._xacc)
        payload = svc.get_payload(
            items=msgs, folder=fobj, message_disposition=SAVE_ONLY, send_meeting_invitations=SEND_TO_NONE
        )
        out: list[_Outcome] = []
        for elem in self._soap(svc, payload):
            code = elem.findtext(f"{{{MNS}}}ResponseCode") or ""
            if code == "NoError" and elem.get("ResponseClass") in ("Success", None):
                item = elem.find(f"{{{MNS}}}Items")
                first = item[0] if item is not None and len(item) else None
                ident = first.find(f"{{{TNS}}}ItemId") if first is not None else None
                out.append(_Outcome(ident.get("Id") if ident is not None else None))
                continue
            back_off = None
            mx = elem.find(f"{{{MNS}}}MessageXml")
            if mx is not None:
                for v in mx.findall(f"{{{TNS}}}Value"):
                    if v.get("Name") == "BackOffMilliseconds" and (v.text or "").strip().isdigit():
                        back_off = int(v.text.strip()) / 1000.0  # type: ignore[union-attr]
            out.append(_Outcome(None, code, elem.findtext(f"{{{MNS}}}MessageText") or "", back_off))
        if len(out) != len(msgs):
            raise TransientError(f"{self._describe()}: CreateItem answered {len(out)} of {len(msgs)} items")
        return out

    def _lookup(self, fobj: Folder, keys: Sequence[str]) -> dict[str, str]:
        """Stamp -> id of the items in ``fobj`` carrying those stamps."""
        found: dict[str, str] = {}
        for start in range(0, len(keys), LOOKUP_CHUNK):
            part = list(keys[start : start + LOOKUP_CHUNK])

            def find(part: list[str] = part) -> list[Any]:
                return self._find(fobj, Q(migrator_source_key__in=part), ("migrator_source_key",))

            for item in self._read("look for already stored messages", find):
                if not isinstance(item, Exception) and item.migrator_source_key:
                    found.setdefault(item.migrator_source_key, item.id)
        return found

    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        if not items:
            return []
        self._check_token()
        fobj = self._folder_obj(folder)
        where = f"append to {'/'.join(folder.path)!r}"
        keys = [source_key(meta.id, raw) for meta, raw in items]
        ids: list[str | None] = [self._unconfirmed.get(k) for k in keys]
        first_look = [i for i, (meta, _) in enumerate(items) if ids[i] is None and not meta.message_id]
        if first_look:
            hits = self._lookup(fobj, [keys[i] for i in first_look])
            for i in first_look:
                ids[i] = hits.get(keys[i])
        todo = [i for i in range(len(items)) if ids[i] is None]
        refused: dict[int, str] = {}
        for round_no in range(1, ROUNDS + 1):
            if not todo:
                break
            retry, wait, ambiguous, why = self._send_round(fobj, items, keys, todo, ids, refused, where)
            if not retry:
                break
            if round_no == ROUNDS:
                raise TransientError(f"{self._describe()}: {where}: {why} (still after {ROUNDS} attempts)")
            self._wait(wait if wait is not None else min(0.5 * 2**round_no, 30.0), f"{where}: {why}")
            if ambiguous:
                hits = self._lookup(fobj, [keys[i] for i in retry])
                for i in retry:
                    if keys[i] in hits:
                        ids[i] = hits[keys[i]]
                        self._unconfirmed[keys[i]] = hits[keys[i]]
                retry = [i for i in retry if ids[i] is None]
            todo = retry
        if refused:
            detail = "; ".join(f"{items[i][0].id}: {refused[i]}" for i in sorted(refused))
            only = items[next(iter(refused))][0].id if len(items) == 1 else None
            raise MessageError(f"{self._describe()}: {where}: refused: {detail}", msg_id=only)
        for k in keys:
            self._unconfirmed.pop(k, None)
        return ids

    def _send_round(
        self,
        fobj: Folder,
        items: Sequence[tuple[MessageMeta, bytes]],
        keys: list[str],
        todo: list[int],
        ids: list[str | None],
        refused: dict[int, str],
        where: str,
    ) -> tuple[list[int], float | None, bool, str]:
        """Send ``todo`` in requests cut by bytes. Returns (indices to send again, the wait
        the server asked for, whether some of them may have been stored, why)."""
        batches = request_batches([len(items[i][1]) for i in todo], self._request_bytes, REQUEST_ITEMS)
        retry: list[int] = []
        wait: float | None = None
        ambiguous = False
        why = ""
        for n, batch in enumerate(batches):
            idx = [todo[j] for j in batch]
            msgs = [self._message(items[i][0], items[i][1], keys[i]) for i in idx]
            try:
                outcomes = self._create(fobj, msgs)
            except Exception as exc:
                err = self._classify(exc, where)
                if isinstance(err, QuotaError):
                    raise err from None
                if not isinstance(err, TransientError):
                    raise err from None
                # the request may or may not have been carried out: look before sending again
                retry.extend(idx)
                for rest in batches[n + 1 :]:
                    retry.extend(todo[j] for j in rest)
                return retry, err.backoff_seconds, True, str(err)
            quota = False
            for i, out in zip(idx, outcomes, strict=True):
                if out.item_id is not None:
                    ids[i] = out.item_id
                    self._unconfirmed[keys[i]] = out.item_id
                elif out.code in TRANSIENT_ITEM_CODES:
                    retry.append(i)
                    if out.back_off is not None:
                        wait = max(wait or 0.0, out.back_off)
                    ambiguous = ambiguous or out.code != "ErrorServerBusy"
                    why = f"{out.code} for {len(retry)} message(s)"
                elif out.code in QUOTA_CODES:
                    quota = True
                elif out.code in FOLDER_CODES:
                    raise FolderError(f"{self._describe()}: {where}: {out.code}")
                else:
                    refused[i] = _item_error(out.code, out.text)
            if quota:
                raise QuotaError(f"{self._describe()}: {where}: the mailbox is over its quota (ErrorQuotaExceeded)")
            if retry:  # throttled: send nothing more before waiting
                for rest in batches[n + 1 :]:
                    retry.extend(todo[j] for j in rest)
                return retry, wait, ambiguous, why
        return retry, wait, ambiguous, why


class _InvalidSyncState(Exception):
    """SyncFolderItems refused the sync state (ErrorInvalidSyncStateData)."""


def open_ews(account: Account, role: Role) -> EwsStore:
    """Open an EWS mailbox. Raises AuthError/ConnectError/TLSError/PlanError."""
    return EwsStore(account, role)
