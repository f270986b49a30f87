"""IMAP connector: imapclient for the conversation, a lean wire layer for the bulk.

Everything IMAP-specific stays here: modified UTF-7, the hierarchy separator, the
personal namespace prefix ("" on Dovecot, "INBOX." on Courier/Cyrus), APPENDUID
response codes, CONDSTORE/QRESYNC cursors, server error texts.

Folder paths handed out and accepted are tuples of decoded parts RELATIVE to the
personal namespace: Dovecot "Archive/2019" and Courier "INBOX.Archive.2019" are both
``("Archive", "2019")``; the inbox is always ``("INBOX",)``. Folders of other
namespaces (other users, shared) are not listed.

Round trips and per-message work are kept low. imapclient handles login,
capabilities, namespace, LIST, SELECT/EXAMINE, STATUS and CREATE; ``imap_wire`` sends
the commands whose cost grows with the number of messages and reads their answers
without a generic parser: one UID FETCH per listing page or fetch batch, one
MULTIAPPEND per append batch (LITERAL+ when offered; pipelined APPENDs without
MULTIAPPEND) and one UID FETCH RFC822.SIZE of the UIDs it stored (``stored_sizes``:
the caller names a message the server altered), pipelined UID STORE / UID EXPUNGE. An
unchanged folder costs no command of its own when the server has CONDSTORE and
LIST-STATUS (the STATUS data of ``list_folders`` decides), one STATUS otherwise.

``Account.options["imap_disable"]``: capabilities to ignore (a list or a space-separated
string, e.g. "MULTIAPPEND LITERAL+"), for servers that advertise more than they do
(and for tests of the fallbacks).
"""

from __future__ import annotations

import imaplib
import logging
import re
import ssl
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timezone
from typing import Any, Literal, NoReturn

from imapclient import IMAPClient
from imapclient import exceptions as imap_exc
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imap_utf7 import encode as encode_utf7
from imapclient.response_parser import parse_response

from migrator.connectors.base import ListingPage
from migrator.connectors.imap_wire import (
    AppendEntry,
    Completion,
    FetchItem,
    FetchResult,
    Wire,
    format_internaldate,
    parse_internaldate,
)
from migrator.errors import (
    AuthError,
    ConnectError,
    FolderError,
    MessageError,
    MigratorError,
    QuotaError,
    TLSError,
    TransientError,
)
from migrator.model import (
    SPECIAL_USES,
    SYSTEM_FLAGS,
    Account,
    Capabilities,
    FolderInfo,
    FolderPath,
    MessageMeta,
    message_id_from_header_block,
)

__all__ = [
    "Cursor",
    "ImapStore",
    "Namespace",
    "expand_uid_set",
    "open_imap",
    "parse_appenduid",
    "throttle_backoff",
    "uid_set",
    "uid_sets",
]

log = logging.getLogger("migrator.imap")

Role = Literal["source", "destination"]

TLS_FIX = "set ca_file: <path to the CA> on the endpoint, or verify_tls: false / ?verify=off to skip verification"
LIST_ITEMS = b"(UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
FETCH_ITEMS = b"(UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[])"
SIZE_ITEMS = b" (UID RFC822.SIZE)"  # stored sizes of appended messages (Destination.stored_sizes)
PAGE_SIZE = 10_000  # messages per page of a complete listing (memory stays flat on huge folders)
UID_SET_CHARS = 4000  # longest uid set in one command (servers limit command lines)
PIPELINE_DEPTH = 64  # small commands sent before their answers are read
_THROTTLE = re.compile(r"Suggested\s+Backoff\s+Time:\s*(\d+)\s*(milli)?", re.IGNORECASE)
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]", re.IGNORECASE)
_SPECIAL_BY_UPPER = {use.upper(): use for use in SPECIAL_USES}
_NOSELECT = {"\\NOSELECT", "\\NONEXISTENT"}
_SYSTEM_BY_UPPER = {flag.upper(): flag for flag in SYSTEM_FLAGS}
_ATOM = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")  # ATOM-CHAR without "]"


# --------------------------------------------------------------------------- helpers
def uid_set(uids: Sequence[int]) -> str:
    """Compact IMAP sequence set for ``uids``: [1,2,3,7,9,10] -> "1:3,7,9:10"."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def expand_uid_set(text: str) -> list[int]:
    """The UIDs of an IMAP uid-set in order: "5:7,12" -> [5, 6, 7, 12]."""
    out: list[int] = []
    for part in text.split(","):
        if ":" in part:
            lo, hi = (int(x) for x in part.split(":", 1))
            step = 1 if hi >= lo else -1
            out.extend(range(lo, hi + step, step))
        elif part:
            out.append(int(part))
    return out


def parse_appenduid(text: bytes, count: int) -> list[str | None]:
    """One str UID per appended item from an "[APPENDUID v uid-set]" response code;
    ``count`` Nones when the code is absent or does not cover ``count`` items."""
    match = _APPENDUID.search(text)
    if match:
        uids = expand_uid_set(match.group(2).decode("ascii"))
        if len(uids) == count:
            return [str(u) for u in uids]
    return [None] * count


def uid_sets(uids: Sequence[int], limit: int = UID_SET_CHARS) -> list[str]:
    """``uid_set(uids)`` cut into sets of at most about ``limit`` characters."""
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for part in uid_set(uids).split(","):
        if part == "":
            continue
        if cur and size + len(part) + 1 > limit:
            out.append(",".join(cur))
            cur, size = [], 0
        cur.append(part)
        size += len(part) + 1
    if cur:
        out.append(",".join(cur))
    return out


def throttle_backoff(text: str) -> float | None:
    """Seconds to wait from a throttling answer ("Request is throttled. Suggested
    Backoff Time: 2500 milliseconds", Exchange Online), else None."""
    match = _THROTTLE.search(text)
    if not match:
        return None
    value = int(match.group(1))
    return value / 1000 if match.group(2) else float(value)


def _is_throttled(text: str) -> bool:
    upper = text.upper()
    return "THROTTLED" in upper or "[UNAVAILABLE]" in upper or _THROTTLE.search(text) is not None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where an incremental listing resumes: "v1:<uidvalidity>:<highestmodseq>:<uidnext>:<exists>"
    (modseq 0 without CONDSTORE). ``exists``: messages in the folder then, all with
    UIDs below ``uidnext``."""

    validity: int
    modseq: int
    uidnext: int
    exists: int

    def encode(self) -> str:
        return f"v1:{self.validity}:{self.modseq}:{self.uidnext}:{self.exists}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        """None for None or anything this version does not write."""
        if not text:
            return None
        parts = text.split(":")
        if len(parts) != 5 or parts[0] != "v1" or not all(p.isdigit() for p in parts[1:]):
            return None
        return cls(*(int(p) for p in parts[1:]))


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """STATUS / EXAMINE numbers of one folder (modseq None: no CONDSTORE there)."""

    validity: int | None
    uidnext: int | None
    messages: int | None
    modseq: int | None

    def unchanged_since(self, cursor: Cursor) -> bool:
        return (
            self.modseq is not None
            and cursor.modseq > 0
            and (self.validity, self.modseq, self.uidnext, self.messages)
            == (cursor.validity, cursor.modseq, cursor.uidnext, cursor.exists)
        )

    def cursor(self) -> Cursor | None:
        if self.validity is None or self.uidnext is None or self.messages is None:
            return None
        return Cursor(self.validity, self.modseq or 0, self.uidnext, self.messages)


_CODE_NUMBER = re.compile(rb"^OK \[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]", re.IGNORECASE)


def _response_codes(lines: Sequence[bytes]) -> dict[str, int]:
    """UIDVALIDITY / UIDNEXT / HIGHESTMODSEQ from untagged "OK [CODE n]" lines."""
    out: dict[str, int] = {}
    for line in lines:
        m = _CODE_NUMBER.match(line)
        if m:
            out[m.group(1).decode("ascii").upper()] = int(m.group(2))
    return out


def _text(data: Any) -> str:
    """Server response text (last item of an imaplib data list) as str."""
    if isinstance(data, list | tuple):
        data = data[-1] if data else b""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


def _flags_to_str(flags: Sequence[bytes | str] | None) -> frozenset[str]:
    out = set()
    for flag in flags or ():
        text = flag.decode("utf-8", "surrogateescape") if isinstance(flag, bytes) else str(flag)
        if text.upper() != "\\RECENT":
            out.add(text)
    return frozenset(out)


def _message_id(block: bytes) -> str | None:
    """The Message-ID of a BODY[HEADER.FIELDS (MESSAGE-ID)] block (one unfolded line
    the quick way; anything else through the general header reader)."""
    if block.count(b"\n") == 2 and block[:11].lower() == b"message-id:" and block.endswith(b"\r\n\r\n"):
        value = block[11:-4].strip()
        if value and b" " not in value and b"\t" not in value:
            return value.decode("utf-8", "surrogateescape")
    return message_id_from_header_block(block)


class _Metas:
    """Builds MessageMeta from FETCH items, remembering the flag sets it has seen
    (a mailbox has few distinct ones). One per store: no shared state."""

    def __init__(self) -> None:
        self._flags: dict[tuple[bytes, ...], frozenset[str]] = {}

    def flags(self, raw: list[bytes] | None) -> frozenset[str]:
        key = tuple(raw or ())
        got = self._flags.get(key)
        if got is None:
            got = self._flags[key] = _flags_to_str(raw)
        return got

    def meta(self, item: FetchItem) -> MessageMeta:
        return MessageMeta(
            id=str(item.uid),
            size=item.size if item.size is not None else 0,
            flags=self.flags(item.flags),
            internal_date=parse_internaldate(item.internal_date) if item.internal_date else None,
            message_id=_message_id(item.header) if item.header else None,
        )


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    offset = value.utcoffset()
    if offset is None:
        return value.replace(tzinfo=UTC)
    return value.replace(tzinfo=timezone(offset))  # a plain stdlib zone, same instant


def _imap_flag(flag: str, msg_id: str) -> str | None:
    """The IMAP spelling of one flag (None for \\Recent); MessageError for a flag the
    protocol cannot carry (checked before sending: a BAD mid-MULTIAPPEND desynchronises)."""
    upper = flag.upper()
    if upper == "\\RECENT":
        return None
    if flag.startswith("\\"):
        if upper not in _SYSTEM_BY_UPPER:
            raise MessageError(f"flag {flag!r} is not an IMAP system flag", msg_id=msg_id)
        return _SYSTEM_BY_UPPER[upper]
    if _ATOM.fullmatch(flag):
        return flag
    raise MessageError(f"keyword {flag!r} cannot be stored over IMAP", msg_id=msg_id)


def _flag_list(meta: MessageMeta) -> bytes:
    """The APPEND flag list of ``meta`` (never \\Recent); MessageError as ``_imap_flag``."""
    flags = [f for f in (_imap_flag(flag, meta.id) for flag in sorted(meta.flags)) if f is not None]
    return ("(" + " ".join(flags) + ")").encode("ascii")


def _is_quota(text: str) -> bool:
    upper = text.upper()
    return "[OVERQUOTA]" in upper or "QUOTA" in upper


def _ssl_context(account: Account) -> ssl.SSLContext:
    """Verifying context (with ``ca_file`` when given) or, with verify_tls off, none."""
    if account.verify_tls:
        ctx = ssl.create_default_context(cafile=account.ca_file)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True, slots=True)
class Namespace:
    """The personal namespace and what to leave out of listings."""

    prefix: str  # decoded, e.g. "" or "INBOX."
    separator: str | None  # None: flat server
    foreign: tuple[str, ...] = ()  # prefixes of other users' and shared namespaces

    def decode(self, name: str) -> FolderPath | None:
        """Relative path of a decoded server name, None when outside the namespace."""
        if name.upper() == "INBOX":
            return ("INBOX",)
        if self.prefix:
            if not name.startswith(self.prefix):
                return None
            name = name[len(self.prefix) :]
        else:
            for other in self.foreign:
                if other and (name.startswith(other) or name == other.rstrip(self.separator or "")):
                    return None
        if not name:
            return None
        return tuple(name.split(self.separator)) if self.separator else (name,)

    def encode(self, path: FolderPath) -> str:
        """Decoded server name of ``path``; FolderError for an impossible path."""
        if not path or any(not part for part in path):
            raise FolderError(f"invalid folder path {path!r}")
        if len(path) == 1 and path[0].upper() == "INBOX":
            return "INBOX"
        if self.separator is None:
            if len(path) > 1:
                raise FolderError(f"{'/'.join(path)}: this server has no folder hierarchy")
            return self.prefix + path[0]
        for part in path:
            if self.separator in part:
                raise FolderError(f"folder name part {part!r} contains the separator {self.separator!r}")
        return self.prefix + self.separator.join(path)


# --------------------------------------------------------------------------- opening
def open_imap(account: Account, role: Role) -> ImapStore:
    """Connect, secure, log in and learn the namespace. Raises ConnectError,
    TLSError or AuthError (the message never contains the password)."""
    if not account.host:
        raise ConnectError(f"{account.describe()}: no host given")
    client = _connect(account)
    try:
        _login(client, account)
        return ImapStore(account, role, client)
    except BaseException:
        _shutdown(client)
        raise


def _connect(account: Account) -> IMAPClient:
    host = account.host or ""
    port = account.port or (993 if account.security == "tls" else 143)
    where = f"{host}:{port}"
    ctx = _ssl_context(account) if account.security != "none" else None
    try:
        client = IMAPClient(
            host,
            port=port,
            use_uid=True,
            ssl=account.security == "tls",
            ssl_context=ctx,
            timeout=account.timeout,
        )
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(f"{where}: certificate verification failed ({exc.verify_message}); {TLS_FIX}") from None
    except ssl.SSLError as exc:
        raise TLSError(f"{where}: TLS negotiation failed: {exc}") from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ConnectError(f"{where}: cannot connect: {exc}") from None
    client.normalise_times = False
    # imapclient sets imaplib's debug level to 5, which formats a repr of every
    # response (bodies included) before the logger drops it: most of a bulk FETCH's
    # CPU time. It would also put protocol traffic into logs.
    client._imap.debug = 0
    if account.security == "starttls":
        _starttls(client, where, ctx)
    return client


def _starttls(client: IMAPClient, where: str, ctx: ssl.SSLContext | None) -> None:
    try:
        if not client.has_capability("STARTTLS"):
            raise TLSError(f"{where}: the server does not offer STARTTLS; use security: tls or none")
        client.starttls(ctx)
    except TLSError:
        _shutdown(client)
        raise
    except ssl.SSLCertVerificationError as exc:
        _shutdown(client)
        raise TLSError(f"{where}: certificate verification failed ({exc.verify_message}); {TLS_FIX}") from None
    except ssl.SSLError as exc:
        _shutdown(client)
        raise TLSError(f"{where}: STARTTLS negotiation failed: {exc}") from None
    except (OSError, imaplib.IMAP4.error) as exc:
        _shutdown(client)
        raise ConnectError(f"{where}: STARTTLS failed: {exc}") from None


def _login(client: IMAPClient, account: Account) -> None:
    host, user = account.host, account.user or ""
    if account.oauth is not None:
        _oauth_login(client, account)
        return
    if account.secret is None:
        raise AuthError(f"{host}: no password given for {user}")
    password = account.secret.get()
    try:
        if password.isascii() and user.isascii():
            client.login(user, password)
        else:  # LOGIN's quoted strings are ASCII only; AUTHENTICATE PLAIN carries UTF-8
            client.plain_login(user, password)
    except imap_exc.LoginError as exc:
        _raise_if_connection_lost(host, exc)
        text = re.sub(r"^b'(.*)'$", r"\1", str(exc)).strip()
        if password:
            text = text.replace(password, "***")
        raise AuthError(f"{host}: login failed for {user}: {text}") from None
    except (OSError, imaplib.IMAP4.abort) as exc:
        raise ConnectError(f"{host}: connection lost during login: {exc}") from None


def _oauth_login(client: IMAPClient, account: Account) -> None:
    """AUTHENTICATE XOAUTH2 with a token from migrator.auth (fresh on every connect)."""
    from migrator.auth import access_token

    host, user = account.host, account.user or ""
    token = access_token(account)
    try:
        client.oauth2_login(user, token)
    except imap_exc.LoginError as exc:
        _raise_if_connection_lost(host, exc)
        text = re.sub(r"^b'(.*)'$", r"\1", str(exc)).strip().replace(token, "***")
        raise AuthError(f"{host}: XOAUTH2 login failed for {user}: {text}") from None
    except (OSError, imaplib.IMAP4.abort) as exc:
        raise ConnectError(f"{host}: connection lost during login: {exc}") from None


def _raise_if_connection_lost(host: str | None, exc: imap_exc.LoginError) -> None:
    """imapclient turns every imaplib error during LOGIN/AUTHENTICATE into LoginError,
    a dropped connection ("socket error: EOF") included; that one is transient (a
    retry may well log in), not a refused login that would fail the mailbox."""
    cause = exc.__context__
    if isinstance(cause, imaplib.IMAP4.abort | OSError):
        raise ConnectError(f"{host}: connection lost during login: {cause}") from None


def _shutdown(client: IMAPClient) -> None:
    with suppress(Exception):
        client.shutdown()


# --------------------------------------------------------------------------- the store
def _forbidden_chars(separator: str | None) -> str:
    """The separator can never be part of a name. Servers whose separator is not "/"
    usually keep folders as files or directories, where "/" is refused too (Dovecot
    with Maildir++, Courier): declaring it lets the mapper rename such a part and
    report it, instead of failing the folder."""
    sep = separator or ""
    return sep if sep == "/" else sep + "/"


class ImapStore:
    """Source and Destination over one IMAP connection (one thread at a time).

    ``command_counts`` counts every command sent on this connection by name
    ("EXAMINE", "UID FETCH", "APPEND", ...), for tests and diagnostics."""

    def __init__(self, account: Account, role: Role, client: IMAPClient) -> None:
        self.account = account
        self.role = role
        self._client: IMAPClient | None = client
        self._where = account.describe()
        self._selected: tuple[str, bool] | None = None  # (decoded name, read-only) of the selected folder
        self._status_cache: dict[str, FolderStatus] = {}  # from the last list_folders, by decoded name
        self._listed: dict[FolderPath, FolderInfo] = {}  # selectable folders of the last list_folders
        self._created: set[FolderPath] = set()  # folders this connection's CREATE made
        self._listing_done = False  # list_folders ran: a folder it did not return did not exist
        # by encoded name: a UID at or below every UID the folder gives from now on (from a
        # CREATE this connection made, a STATUS, an APPENDUID): the stored-size check of
        # the next APPEND then rides in its round trip ("UID FETCH floor:*")
        self._floors: dict[str, int] = {}
        self._marks: dict[str, tuple[int, int]] = {}  # (UIDVALIDITY, top APPENDUID + 1) of the last APPEND
        self._seen_sizes: tuple[str, dict[str, int]] | None = None  # sizes fetched with the last APPEND
        self._metas = _Metas()
        self.command_counts: Counter[str] = Counter()
        self._wire = self._install_wire(client)
        with self._guard("capabilities"):
            caps = {c.decode("ascii", "replace").upper() for c in client.capabilities()}
            self._caps = caps - _disabled(account)
            self.namespace = self._discover_namespace()
            self._qresync = False
            if role == "source" and "QRESYNC" in self._caps:
                typ, _data = self._simple("ENABLE", "QRESYNC")
                self._qresync = typ == "OK" and any(
                    b"QRESYNC" in (d or b"").upper() for d in self._imap.untagged_responses.get("ENABLED", [])
                )
        uidplus = "UIDPLUS" in self._caps
        self.capabilities = Capabilities(
            append_returns_id=uidplus,
            forbidden_name_chars=_forbidden_chars(self.namespace.separator),
            max_message_bytes=self._appendlimit(),
            incremental=True,
            can_delete=uidplus,
            can_set_flags=True,
            can_delete_at_destination=uidplus,
            reports_stored_sizes=uidplus,
        )

    def __repr__(self) -> str:
        return f"ImapStore({self._where}, {self.role})"

    @property
    def server_capabilities(self) -> frozenset[str]:
        """What the server advertises (upper case, minus ``imap_disable``)."""
        return frozenset(self._caps)

    # ------------------------------------------------------------------ plumbing
    def _install_wire(self, client: IMAPClient) -> Wire:
        """Count imaplib's commands too, and share its socket and read buffer."""
        imap = client._imap
        send = imap.send
        tagpre = imap.tagpre
        counts = self.command_counts

        def counting_send(data: bytes) -> None:
            if data.startswith(tagpre):
                words = data.split(b" ", 3)
                name = words[1].decode("ascii", "replace").upper() if len(words) > 1 else "?"
                if name == "UID" and len(words) > 2:
                    name = "UID " + words[2].decode("ascii", "replace").upper().rstrip("\r\n")
                counts[name.rstrip("\r\n")] += 1
            send(data)

        imap.send = counting_send  # type: ignore[method-assign]
        return Wire(imap.read, imap.readline, send, counts)

    @property
    def _imap(self) -> imaplib.IMAP4:
        return self._conn._imap

    @property
    def _conn(self) -> IMAPClient:
        if self._client is None:
            raise TransientError(f"{self._where}: connection closed")
        return self._client

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Map socket-level failures to TransientError (dropping the connection),
        throttling answers to TransientError with the server's back-off, other
        protocol errors to FolderError."""
        try:
            yield
        except MigratorError:
            raise
        except TimeoutError as exc:
            self._lost()
            raise TransientError(f"{self._where}: {what}: timed out ({exc})") from None
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
            self._lost()
            raise TransientError(f"{self._where}: {what}: connection lost: {exc}") from None
        except imaplib.IMAP4.error as exc:
            text = _text(str(exc))
            self._raise_if_throttled(what, text)
            raise FolderError(f"{self._where}: {what}: {text}") from None

    def _raise_if_throttled(self, what: str, text: str) -> None:
        if _is_throttled(text):
            raise TransientError(f"{self._where}: {what}: throttled: {text}", backoff_seconds=throttle_backoff(text))

    def _check(self, what: str, done: Completion) -> None:
        """A wire completion that is not OK: throttling -> TransientError, else FolderError."""
        if done.ok:
            return
        text = done.describe()
        self._raise_if_throttled(what, text)
        raise FolderError(f"{self._where}: {what} failed: {text}")

    def _lost(self) -> None:
        if self._client is not None:
            _shutdown(self._client)
        self._client = None
        self._selected = None

    def _simple(self, name: str, *args: str) -> tuple[str, list[Any]]:
        """One command through imaplib; BAD raises imaplib.IMAP4.error, NO comes back
        as typ (a throttling NO raises TransientError)."""
        self._imap.untagged_responses.clear()
        typ, data = self._imap._simple_command(name, *args)  # type: ignore[attr-defined]
        if typ != "OK":
            self._raise_if_throttled(name, _text(data))
        return typ, data

    @property
    def _live_wire(self) -> Wire:
        self._conn  # noqa: B018 - raises TransientError once the connection is gone
        return self._wire

    def _discover_namespace(self) -> Namespace:
        if "NAMESPACE" in self._caps:
            ns = self._conn.namespace()
            foreign = tuple(p for group in (ns.other, ns.shared) if group for p, _sep in group)
            if ns.personal:
                prefix, sep = ns.personal[0]
                return Namespace(prefix=prefix, separator=sep or None, foreign=foreign)
        typ, _ = self._simple("LIST", '""', '""')
        data = self._imap.untagged_responses.get("LIST", [])
        sep: str | None = None
        if typ == "OK" and data:
            listed = self._conn._proc_folder_list(data)
            if listed and listed[0][1]:
                sep = listed[0][1].decode("ascii")
        return Namespace(prefix="", separator=sep)

    def _appendlimit(self) -> int | None:
        for cap in self._caps:
            if cap.startswith("APPENDLIMIT="):
                try:
                    return int(cap.split("=", 1)[1])
                except ValueError:
                    return None
        return None

    @staticmethod
    def _quote(name: str) -> str:
        encoded = encode_utf7(name).decode("ascii")
        return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'

    # ------------------------------------------------------------------ folders
    def list_folders(self) -> list[FolderInfo]:
        """Every folder of the personal namespace, with special-use and UIDVALIDITY
        (none for \\Noselect containers). Read-only. The STATUS numbers that come
        with it are kept for ``list_pages`` (an unchanged folder then costs nothing).

        As a destination, without STATUS (validity None): nothing reads a destination
        folder's numbers from the listing, and STATUS of every folder is most of the
        server's work in a no-change run (Dovecot: 20 ms for 20 folders)."""
        with self._guard("LIST"):
            folders = self._list("*", full_status=True, status=self.role != "destination")
        self._listed = {f.path: f for f in folders if f.selectable}
        self._listing_done = True
        return folders

    def _status_items(self, full: bool) -> str:
        items = ["UIDVALIDITY"]
        if full:
            items += ["UIDNEXT", "MESSAGES"]
            if "CONDSTORE" in self._caps:
                items.append("HIGHESTMODSEQ")
        return "(" + " ".join(items) + ")"

    def _list(
        self, pattern: str, exact: str | None = None, full_status: bool = False, status: bool = True
    ) -> list[FolderInfo]:
        list_status = status and "LIST-STATUS" in self._caps and "LIST-EXTENDED" in self._caps
        returns = []
        if "SPECIAL-USE" in self._caps and "LIST-EXTENDED" in self._caps:
            returns.append("SPECIAL-USE")
        if list_status:
            returns.append("STATUS " + self._status_items(full_status))
        args = ['""', self._quote(pattern)]
        if returns:
            args.append(f"RETURN ({' '.join(returns)})")
        typ, data = self._simple("LIST", *args)
        if typ != "OK":
            raise FolderError(f"{self._where}: LIST failed: {_text(data)}")
        raw_list = [i for i in self._imap.untagged_responses.get("LIST", []) if i not in (b"", None)]
        statuses = self._status_responses(self._imap.untagged_responses.get("STATUS", []))
        want_status = status
        out = []
        names: list[str] = []  # the server's (decoded) name of each entry of ``out``
        pending: list[str] = []  # selectable names still without STATUS
        for flags, _sep, name in self._conn._proc_folder_list(raw_list):
            name = str(name)
            if exact is not None and name != exact:
                continue
            path = self.namespace.decode(name)
            if path is None:
                continue
            attrs = {f.decode("ascii", "replace").upper() for f in flags}
            selectable = not (attrs & _NOSELECT)
            special = next((_SPECIAL_BY_UPPER[a] for a in attrs if a in _SPECIAL_BY_UPPER), None)
            status = statuses.get(name) if selectable else None
            if selectable and status is None and not list_status and want_status:
                pending.append(name)
            out.append(FolderInfo(path=path, special_use=special, validity=None, selectable=selectable))
            names.append(name)
        if pending:
            statuses.update(self._status_many(pending, full_status))
        result = []
        for info, name in zip(out, names, strict=True):
            status = statuses.get(name) if info.selectable else None
            if status is not None and full_status:
                self._status_cache[name] = status
            validity = status.validity if status is not None else None
            result.append(FolderInfo(info.path, info.special_use, validity, info.selectable))
        return result

    @staticmethod
    def _status_responses(items: list[Any]) -> dict[str, FolderStatus]:
        out: dict[str, FolderStatus] = {}
        for item in items:
            if item in (b"", None):
                continue
            parsed = parse_response([item] if not isinstance(item, tuple) else list(item))
            if len(parsed) < 2 or not isinstance(parsed[-1], tuple):
                continue
            raw = parsed[0]
            name = decode_utf7(raw) if isinstance(raw, bytes) else str(raw)
            values = dict(zip(parsed[-1][::2], parsed[-1][1::2], strict=False))

            def num(key: bytes, values: dict[Any, Any] = values) -> int | None:
                value = values.get(key)
                return value if isinstance(value, int) else None

            out[name] = FolderStatus(num(b"UIDVALIDITY"), num(b"UIDNEXT"), num(b"MESSAGES"), num(b"HIGHESTMODSEQ"))
        return out

    def _status_many(self, names: Sequence[str], full: bool) -> dict[str, FolderStatus]:
        """STATUS of every name, pipelined (servers without LIST-STATUS, e.g. Courier)."""
        items = self._status_items(full).encode("ascii")
        out: dict[str, FolderStatus] = {}
        wire = self._live_wire
        for start in range(0, len(names), PIPELINE_DEPTH):
            chunk = names[start : start + PIPELINE_DEPTH]
            wire.collected = []
            wire.pipeline([("STATUS", self._quote(n).encode("ascii") + b" " + items) for n in chunk])
            for rest, literals in wire.collected:
                if rest[:7].upper() != b"STATUS ":
                    continue
                raw = rest[7:]
                for lit in literals:  # a literal mailbox name: rebuild it as a quoted string
                    raw = raw.replace(b"\x00", b'"' + lit.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', 1)
                out.update(self._status_responses([raw]))
            wire.collected = None
        return out

    def _status(self, name: str) -> FolderStatus | None:
        got = self._status_many([name], full=True)
        return got.get(name)

    def uid_mark(self, folder: FolderInfo) -> tuple[int, int] | None:
        """(UIDVALIDITY, UIDNEXT) of ``folder`` now: one STATUS. Every message stored
        from now on gets a UID at or above this UIDNEXT. None when the server gives no
        numbers. Read-only."""
        with self._guard("STATUS"):
            status = self._status(self.namespace.encode(folder.path))
        if status is None or status.validity is None or status.uidnext is None:
            return None
        name = self.namespace.encode(folder.path)
        self._floors[name] = max(self._floors.get(name, 0), status.uidnext)
        return status.validity, status.uidnext

    def written_mark(self, folder: FolderInfo) -> tuple[int, int] | None:
        """(UIDVALIDITY, highest UID + 1) of what this connection's last APPEND to
        ``folder`` stored, from its APPENDUID (no round trip); None when unknown."""
        return self._marks.get(self.namespace.encode(folder.path))

    def list_since(self, folder: FolderInfo, uid: int) -> list[MessageMeta]:
        """The messages of ``folder`` with a UID at or above ``uid`` (what was stored
        since ``uid_mark`` gave that UIDNEXT), with full metadata; one round trip."""
        got = FetchResult(items=[], completion=Completion("OK", b""))
        with self._guard("list messages"):
            self._examine_with(folder, [("UID FETCH", b"%d:* %s" % (max(uid, 1), LIST_ITEMS))], got)
        seen: set[int] = set()
        metas = []
        for item in got.items:  # "n:*" also names the highest UID when it is below n
            if item.uid >= uid and item.size is not None and item.uid not in seen:
                seen.add(item.uid)
                metas.append(self._metas.meta(item))
        metas.sort(key=lambda m: int(m.id))
        return metas

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        """The folder at ``path`` or None. Read-only."""
        name = self.namespace.encode(path)
        with self._guard("LIST"):
            found = self._list(name, exact=name, status=self.role != "destination")
        return found[0] if found else None

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        """Create ``path`` and its missing parents, subscribe it, return it.
        Idempotent. ("INBOX",) is never created. FolderError when refused. A folder
        the last ``list_folders`` of this connection returned is not looked up again,
        and one it did not return is created without a look-up. Without a special use,
        the CREATEs and the SUBSCRIBE go in one round trip and a folder the server says
        it created is not looked up after (one someone else created meanwhile answers
        ALREADYEXISTS and is looked up)."""
        listed = self._listed.get(path)
        if listed is not None:
            return listed
        if not self._listing_done:
            existing = self.find_folder(path)
            if existing is not None and existing.selectable:
                self._listed[path] = existing
                return existing
        if special_use and "CREATE-SPECIAL-USE" in self._caps:
            made = self._create_one_by_one(path, special_use)
        else:
            made = self._create_pipelined(path)
        # a folder the server says it created as asked needs no look-up; one it did not
        # create, or whose special use it may give by name (Dovecot's config), is looked up
        known = made == "use" or (made and not special_use)
        created = FolderInfo(path=path, special_use=special_use if made == "use" else None) if known else None
        created = created or self.find_folder(path)
        if made:
            self._created.add(path)
            self._floors[self.namespace.encode(path)] = 1
        if created is None or not created.selectable:
            raise FolderError(f"{self._where}: folder {'/'.join(path)} was not created")
        self._listed[path] = created
        return created

    def _levels(self, path: FolderPath) -> list[FolderPath]:
        """``path`` and the parents a CREATE may need (not the inbox, not listed ones)."""
        out = []
        for depth in range(1, len(path) + 1):
            sub = path[:depth]
            if depth == 1 and sub[0].upper() == "INBOX":
                continue
            if depth < len(path) and sub in self._listed:
                continue
            out.append(sub)
        return out

    def _create_pipelined(self, path: FolderPath) -> str:
        """CREATE of every level and SUBSCRIBE of ``path``, sent together: "made" when
        the last CREATE created ``path``, "" when it existed already."""
        levels = self._levels(path)
        commands = [("CREATE", self._quote(self.namespace.encode(sub)).encode("ascii")) for sub in levels]
        commands.append(("SUBSCRIBE", self._quote(self.namespace.encode(path)).encode("ascii")))
        with self._guard("CREATE"):
            results = self._live_wire.pipeline(commands)
        made = ""
        for sub, done in zip(levels, results, strict=False):
            text = done.describe()
            if not done.ok:
                self._raise_if_throttled("CREATE", text)
                if not self._already_exists(text):
                    raise FolderError(f"{self._where}: cannot create {self.namespace.encode(sub)!r}: {text}")
            made = "made" if done.ok and sub == path else made
        self._raise_if_throttled("SUBSCRIBE", results[-1].describe())
        return made

    def _create_one_by_one(self, path: FolderPath, special_use: str) -> str:
        """The CREATEs (the last one with its special use) and SUBSCRIBE, each waiting
        for its answer: a refused USE is retried without it. Non-empty when the last
        CREATE created ``path``."""
        made = ""
        with self._guard("CREATE"):
            for sub in self._levels(path):
                made = self._create(self.namespace.encode(sub), special_use if sub == path else None)
            self._simple("SUBSCRIBE", self._quote(self.namespace.encode(path)))
        return made

    def created_empty(self, folder: FolderInfo) -> bool:
        """Whether this connection created ``folder`` (so it held nothing then: a first
        visit need not list it to look for copies already there)."""
        return folder.path in self._created

    def _create(self, name: str, special_use: str | None) -> str:
        """CREATE: "use" when it created the folder with ``special_use``, "made"
        without, "" when it existed already."""
        if special_use and "CREATE-SPECIAL-USE" in self._caps:
            typ, data = self._simple("CREATE", self._quote(name), f"(USE ({special_use}))")
            if typ == "OK" or self._already_exists(data):
                return "use" if typ == "OK" else ""
        typ, data = self._simple("CREATE", self._quote(name))
        if typ != "OK" and not self._already_exists(data):
            raise FolderError(f"{self._where}: cannot create {name!r}: {_text(data)}")
        return "made" if typ == "OK" else ""

    @staticmethod
    def _already_exists(data: Any) -> bool:
        text = _text(data).upper()
        return "ALREADYEXISTS" in text or "ALREADY EXISTS" in text

    def delete_folder(self, path: FolderPath) -> None:
        """Delete the folder at ``path`` (its messages with it; children stay).
        Idempotent: a missing folder is success. The inbox is never deleted
        (FolderError)."""
        if len(path) == 1 and path[0].upper() == "INBOX":
            raise FolderError(f"{self._where}: the inbox cannot be deleted")
        name = self.namespace.encode(path)
        self._listed.pop(path, None)
        with self._guard("DELETE"):
            if self._selected is not None and self._selected[0] == name:
                self._unselect()
            typ, data = self._simple("DELETE", self._quote(name))
            if typ == "OK":
                return
            text = _text(data)
            upper = text.upper()
            if "NONEXISTENT" in upper or "DOESN'T EXIST" in upper or "DOES NOT EXIST" in upper:
                return
            if self.find_folder(path) is None:
                return
            raise FolderError(f"{self._where}: cannot delete folder {'/'.join(path)}: {text}")

    def _unselect(self) -> None:
        if "UNSELECT" in self._caps:
            self._simple("UNSELECT")
        else:  # CLOSE would expunge \\Deleted messages of a read-write folder: EXAMINE is harmless
            self._simple("EXAMINE", self._quote("INBOX"))
        self._selected = None

    # ------------------------------------------------------------------ selecting
    def _open(self, folder: FolderInfo, readonly: bool = True) -> FolderStatus:
        """EXAMINE (``readonly``) or SELECT ``folder``; its numbers. FolderError when
        refused."""
        name = self.namespace.encode(folder.path)
        self._selected = None
        try:
            info = self._conn.select_folder(name, readonly=readonly)
        except imap_exc.IMAPClientAbortError:
            raise
        except imaplib.IMAP4.error as exc:
            self._raise_if_throttled("SELECT", str(exc))
            raise FolderError(f"{self._where}: cannot open folder {'/'.join(folder.path)}: {exc}") from None
        self._selected = (name, readonly)
        exists = int(info.get(b"EXISTS", 0))
        self._wire.exists = exists

        def num(key: bytes) -> int | None:
            value = info.get(key)
            return int(value) if isinstance(value, int) else None

        modseq = num(b"HIGHESTMODSEQ") if "CONDSTORE" in self._caps else None
        return FolderStatus(num(b"UIDVALIDITY"), num(b"UIDNEXT"), exists, modseq)

    def _ensure_open(self, folder: FolderInfo, writable: bool = False) -> None:
        name = self.namespace.encode(folder.path)
        if self._selected is None or self._selected[0] != name or (writable and self._selected[1]):
            self._open(folder, readonly=not writable)

    # ------------------------------------------------------------------ listing
    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every message with UID, size, flags, internal date and Message-ID.
        EXAMINE keeps it read-only (no \\Seen side effect)."""
        out: list[MessageMeta] = []
        for page in self._complete_listing(folder):
            out.extend(page.messages)
        return out

    def known_unchanged(self, folder: FolderInfo, cursor: str | None) -> bool:
        """True when the STATUS data of the last ``list_folders`` (LIST-STATUS) shows the
        cursor's UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT and count; no round trip."""
        old = Cursor.parse(cursor)
        if old is None or old.modseq <= 0 or "CONDSTORE" not in self._caps:
            return False
        if folder.validity is not None and folder.validity != old.validity:
            return False
        cached = self._status_cache.get(self.namespace.encode(folder.path))
        return cached is not None and cached.unchanged_since(old)

    def new_at_most(self, folder: FolderInfo, cursor: str | None) -> int | None:
        """At most how many messages arrived since ``cursor`` (UIDs are given in
        ascending order: UIDNEXT then minus UIDNEXT now), from the last ``list_folders``;
        without a usable cursor (a first visit, another UIDVALIDITY) every message of
        the folder; None when that cannot tell (no STATUS data)."""
        old = Cursor.parse(cursor)
        cached = self._status_cache.get(self.namespace.encode(folder.path))
        if cached is None:
            return None
        if old is None or cached.validity != old.validity:
            return cached.messages
        if cached.uidnext is None:
            return None
        return max(cached.uidnext - old.uidnext, 0)

    def list_pages(self, folder: FolderInfo, cursor: str | None) -> Iterator[ListingPage]:
        """Changes since ``cursor`` (see ``Cursor``); read-only.

        * No usable cursor (None, another format, another UIDVALIDITY): a complete
          listing, in pages of ``PAGE_SIZE`` (``complete=True``; only the last page
          carries the new cursor, so an interrupted listing starts over).
        * CONDSTORE, and STATUS (the data ``list_folders`` fetched, else one STATUS)
          shows the cursor's UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT and message count:
          one empty page with the same cursor (``complete=False``); the folder is not
          even selected.
        * CONDSTORE, something changed: EXAMINE, then the messages from the old
          UIDNEXT on and the older ones whose flags changed (UID FETCH ...
          (CHANGEDSINCE m)), all with full metadata; expunged UIDs in ``vanished``
          (QRESYNC: VANISHED (EARLIER), which may name UIDs the caller never saw).
          Without QRESYNC, expunges are detected by count (messages below the old
          UIDNEXT now versus then); when there were any, a complete listing instead.
        * No CONDSTORE: a complete listing every time (the caller compares it with
          its state; flags cannot be asked for by change)."""
        name = self.namespace.encode(folder.path)
        old = Cursor.parse(cursor)
        if old is not None and folder.validity is not None and folder.validity != old.validity:
            old = None
        if old is not None and old.modseq > 0 and "CONDSTORE" in self._caps:
            cached = self._status_cache.pop(name, None)
            if cached is None:
                with self._guard("STATUS"):
                    cached = self._status(name)
            if cached is not None and cached.unchanged_since(old):
                yield ListingPage([], cursor=cursor, vanished=[], complete=False)
                return
            page = self._delta(folder, old)
            if page is not None:
                yield page
                return
        yield from self._complete_listing(folder)

    def _examine_with(
        self, folder: FolderInfo, commands: Sequence[tuple[str, bytes]], sink: FetchResult
    ) -> list[bytes]:
        """EXAMINE ``folder`` and send ``commands`` (UID FETCHes) behind it in one round
        trip; checks every completion, returns the untagged lines (for response codes).
        (A failed EXAMINE leaves no folder selected, so the FETCHes then fail too.)"""
        name = self.namespace.encode(folder.path)
        wire = self._live_wire
        self._selected = None
        wire.collected = []
        try:
            results = wire.pipeline([("EXAMINE", self._quote(name).encode("ascii")), *commands], sink)
        finally:
            collected, wire.collected = wire.collected, None
        examined = results[0]
        self._imap.state = "SELECTED" if examined.ok else "AUTH"  # keep imaplib's view in step
        if not examined.ok:
            self._raise_if_throttled("EXAMINE", examined.describe())
            raise FolderError(f"{self._where}: cannot open folder {'/'.join(folder.path)}: {examined.describe()}")
        self._selected = (name, True)
        for done in results[1:]:
            self._check("UID FETCH", done)
        return collected or []

    def _delta(self, folder: FolderInfo, old: Cursor) -> ListingPage | None:
        """The changes since ``old`` as one page, or None when only a complete listing
        can tell (UIDVALIDITY changed, no HIGHESTMODSEQ, expunges without QRESYNC).

        One round trip: EXAMINE, the flags changed below the old UIDNEXT (CHANGEDSINCE;
        with QRESYNC also what vanished) and what is new are sent together. (A failed
        EXAMINE leaves no folder selected, so the FETCHes then fail too.)"""
        commands: list[tuple[str, bytes]] = []
        if old.uidnext > 1:
            modifier = b"(CHANGEDSINCE %d%s)" % (old.modseq, b" VANISHED" if self._qresync else b"")
            commands.append(("UID FETCH", b"1:%d %s %s" % (old.uidnext - 1, LIST_ITEMS, modifier)))
        commands.append(("UID FETCH", b"%d:* %s" % (old.uidnext, LIST_ITEMS)))
        with self._guard("list changes"):
            wire = self._live_wire
            got = FetchResult(items=[], completion=Completion("OK", b""))
            collected = self._examine_with(folder, commands, got)
            codes = _response_codes([rest for rest, _lits in collected])
            exists = wire.exists if wire.exists is not None else 0
            now = FolderStatus(
                codes.get("UIDVALIDITY"),
                codes.get("UIDNEXT"),
                exists,
                codes.get("HIGHESTMODSEQ") if "CONDSTORE" in self._caps else None,
            )
            cursor = now.cursor()
            if cursor is None or now.modseq is None or now.validity != old.validity:
                return None
            listed = [i for i in got.items if i.uid > 0 and i.size is not None]
            new = [i for i in listed if i.uid >= old.uidnext]
            changed = [i for i in listed if i.uid < old.uidnext]
            vanished = sorted({u for u in got.vanished if u < old.uidnext})
            # messages below the old UIDNEXT now; fewer than the cursor's count minus
            # what VANISHED named (a superset of what really went) means expunges we
            # were not told about: only a complete listing can tell which
            below = wire.exists - len({i.uid for i in new}) if wire.exists is not None else exists
            if below < old.exists - len(vanished) or (not self._qresync and below != old.exists):
                return None
        seen: set[int] = set()
        metas = []
        for item in (*changed, *new):
            if item.uid not in seen:
                seen.add(item.uid)
                metas.append(self._metas.meta(item))
        metas.sort(key=lambda m: int(m.id))
        return ListingPage(metas, cursor=cursor.encode(), vanished=[str(u) for u in vanished], complete=False)

    def _complete_listing(self, folder: FolderInfo) -> Iterator[ListingPage]:
        """Every message, in pages of at most ``PAGE_SIZE`` (one UID FETCH each)."""
        with self._guard("list messages"):
            now = self._open(folder)
            cursor = now.cursor()
            final = cursor.encode() if cursor is not None else None
            if not now.messages:
                yield_empty = True
                ranges: list[str] = []
            else:
                yield_empty = False
                ranges = ["1:*"] if now.messages <= PAGE_SIZE else self._page_ranges()
        if yield_empty:
            yield ListingPage([], cursor=final, complete=True)
            return
        for index, uids in enumerate(ranges):
            last = index == len(ranges) - 1
            with self._guard("list messages"):
                self._ensure_open(folder)
                got = self._live_wire.uid_fetch(uids, LIST_ITEMS)
                self._check("UID FETCH", got.completion)
            lo = int(uids.split(":", 1)[0])
            seen: set[int] = set()
            metas = []
            for item in got.items:
                if item.uid >= lo and item.size is not None and item.uid not in seen:
                    seen.add(item.uid)
                    metas.append(self._metas.meta(item))
            metas.sort(key=lambda m: int(m.id))
            yield ListingPage(metas, cursor=final if last else None, complete=True)

    def _page_ranges(self) -> list[str]:
        """UID ranges of about ``PAGE_SIZE`` messages each; the last one open ("n:*")."""
        wire = self._live_wire
        wire.collected = []
        esearch = "ESEARCH" in self._caps
        done = wire.command("UID SEARCH", b"RETURN (ALL) ALL" if esearch else b"ALL")
        collected, wire.collected = wire.collected, None
        self._check("UID SEARCH", done)
        uids: list[int] = []
        for rest, _lits in collected:
            upper = rest[:8].upper()
            if upper.startswith(b"ESEARCH"):
                words = rest.split()
                for i, word in enumerate(words[:-1]):
                    if word.upper() == b"ALL":
                        uids.extend(expand_uid_set(words[i + 1].decode("ascii")))
            elif upper.startswith(b"SEARCH"):
                uids.extend(int(w) for w in rest.split()[1:] if w.isdigit())
        uids.sort()
        if not uids:
            return ["1:*"]
        ranges = []
        for start in range(0, len(uids), PAGE_SIZE):
            chunk = uids[start : start + PAGE_SIZE]
            ranges.append(f"{chunk[0]}:{chunk[-1]}")
        lo = ranges[-1].split(":", 1)[0]
        ranges[-1] = f"{lo}:*"
        return ranges

    # ------------------------------------------------------------------ fetching
    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """Exact bytes of ``msgs`` with fresh flags and dates, one UID FETCH per uid
        set (one for a usual batch). Vanished messages are not yielded. Read-only
        (BODY.PEEK)."""
        if not msgs:
            return
        by_uid = {int(m.id): m for m in msgs}
        items: list[FetchItem] = []
        with self._guard("fetch"):
            self._ensure_open(folder)
            wire = self._live_wire
            for uids in uid_sets(list(by_uid)):
                got = wire.uid_fetch(uids, FETCH_ITEMS)
                self._check("UID FETCH", got.completion)
                items.extend(got.items)
        for item in items:
            old = by_uid.pop(item.uid, None)
            if old is None or item.body is None:
                if old is not None:
                    by_uid[item.uid] = old
                continue
            meta = MessageMeta(
                id=old.id,
                size=item.size if item.size is not None else len(item.body),
                flags=self._metas.flags(item.flags),
                internal_date=(parse_internaldate(item.internal_date) if item.internal_date else None)
                or old.internal_date,
                message_id=old.message_id,
                extra=dict(old.extra),
            )
            yield meta, item.body

    # ------------------------------------------------------------------ appending
    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        """Store ``items`` with flags, keywords and internal dates: one MULTIAPPEND
        when the server offers it, else pipelined APPENDs (a partial failure is
        rolled back with UIDPLUS, so the batch is all or nothing). Literals are
        non-synchronizing with LITERAL+ (LITERAL-: up to 4 KB). Returns the APPENDUID
        UIDs (None each without UIDPLUS). Raises QuotaError, MessageError (flags are
        checked before anything is sent), FolderError ([TRYCREATE]: the folder is
        missing) or TransientError (throttling, a lost connection: outcome unknown)."""
        if not items:
            return []
        name = self.namespace.encode(folder.path)
        entries = []
        for meta, raw in items:
            date = format_internaldate(_aware(meta.internal_date) or meta.internal_date) if meta.internal_date else b""
            entries.append(AppendEntry(_flag_list(meta), date, raw))
        mailbox = self._quote(name).encode("ascii")
        plus, minus = "LITERAL+" in self._caps, "LITERAL-" in self._caps
        with self._guard("APPEND"):
            wire = self._live_wire
            self._seen_sizes = None
            if len(entries) == 1 or "MULTIAPPEND" in self._caps:
                then = self._size_check(name)
                sink = FetchResult(items=[], completion=Completion("OK", b""))
                done, after = wire.append_then(mailbox, entries, plus=plus, minus=minus, then=then, sink=sink)
                if after:  # EXAMINE, UID FETCH floor:*
                    self._selected = (name, True) if after[0].ok else None
                    self._imap.state = "SELECTED" if after[0].ok else "AUTH"  # keep imaplib's view in step
                self._append_failed(done)
                if len(after) == 2 and after[0].ok and after[1].ok:
                    self._seen_sizes = (name, {str(i.uid): i.size for i in sink.items if i.size is not None})
                return self._appended_ids([done.text], len(entries), name)
            # Dovecot (and others) open the target folder for every APPEND unless it is
            # the selected one: EXAMINE it first (once per folder) halves the server's
            # cost per message here (0.62 -> 0.31 ms on Dovecot 2.3; MULTIAPPEND needs
            # no such help: one open per batch)
            self._ensure_open(folder)
            results = wire.append_pipelined(mailbox, entries, plus=plus, minus=minus)
            failed = [r for r in results if not r.ok]
            if not failed:
                return self._appended_ids([r.text for r in results], 1, name)
            stored = [r for r in results if r.ok]
            first = next((r for r in failed if not _is_throttled(r.describe())), failed[0])
            text = first.describe()
            if not stored or _is_quota(text) or "[TRYCREATE]" in text.upper():
                # nothing to undo, or the mailbox stops (quota) / the folder is missing
                # (nothing was stored): the pending rows are reconciled on the next run
                self._append_failed(first)
            # a refused message (MessageError): the caller retries the batch one by one,
            # so what was stored must go first; a throttling answer (TransientError)
            # too, for now: the engine would match the stored ones on its retry, but
            # its counters then report them as "already there" (see the report).
            # Each APPEND was a command of its own, so even a BAD leaves the connection
            # usable if a NOOP still answers in step.
            self._check_in_sync()
            if self._client is None:
                raise TransientError(
                    f"{self._where}: APPEND refused for part of a batch ({text}) and the connection was lost; "
                    "the destination is reconciled before anything is sent again"
                )
            self._roll_back(folder, stored, text)
            self._append_failed(first)
        raise AssertionError("unreachable")  # pragma: no cover

    def _size_check(self, name: str) -> tuple[tuple[str, bytes], ...]:
        """The commands that carry the stored-size check in the round trip of an
        APPEND into a folder not selected yet: EXAMINE (a fresh view shows what the
        APPEND stored; a pipelined FETCH on the selected folder might not) and the
        sizes of its UIDs from the floor on. Nothing when the folder is selected (a
        later batch: ``stored_sizes`` asks on its own) or its floor is unknown."""
        floor = self._floors.get(name)
        caps = self.capabilities
        if floor is None or not (caps.reports_stored_sizes and caps.exact_sizes):
            return ()
        if self._selected is not None and self._selected[0] == name:
            return ()
        self._selected = None
        return (("EXAMINE", self._quote(name).encode("ascii")), ("UID FETCH", b"%d:*" % floor + SIZE_ITEMS))

    def _appended_ids(self, texts: Sequence[bytes], per_text: int, name: str | None = None) -> list[str | None]:
        """The APPENDUID UIDs of the completions (None each without UIDPLUS). With
        ``name``: the folder's floor and written mark move past them."""
        if "UIDPLUS" not in self._caps:
            return [None] * (len(texts) * per_text)
        ids = [uid for text in texts for uid in parse_appenduid(text, per_text)]
        match = _APPENDUID.search(texts[-1]) if texts else None
        if name is not None and match and ids and all(i is not None for i in ids):
            top = max(int(i) for i in ids if i is not None) + 1
            self._floors[name] = max(self._floors.get(name, 0), top)
            self._marks[name] = (int(match.group(1)), top)
        return ids

    def stored_sizes(self, folder: FolderInfo, ids: Sequence[str]) -> dict[str, int]:
        """RFC822.SIZE of these UIDs of ``folder`` as the server stores them: one UID
        FETCH per uid set (one for a usual batch: APPENDUID gives consecutive UIDs),
        pipelined, on the EXAMINEd folder. UIDs the server does not show are left out.
        Read-only. TransientError when the connection is lost, FolderError when refused."""
        if not ids:
            return {}
        name = self.namespace.encode(folder.path)
        seen = self._seen_sizes
        if seen is not None and seen[0] == name and all(i in seen[1] for i in ids):
            return {i: seen[1][i] for i in ids}  # fetched in the APPEND's round trip
        commands = [("UID FETCH", part.encode("ascii") + SIZE_ITEMS) for part in uid_sets([int(i) for i in ids])]
        sink = FetchResult(items=[], completion=Completion("OK", b""))
        with self._guard("UID FETCH"):
            for start in range(0, len(commands), PIPELINE_DEPTH):
                chunk = commands[start : start + PIPELINE_DEPTH]
                if self._selected is None or self._selected[0] != name:
                    self._examine_with(folder, chunk, sink)  # one round trip, not two
                    continue
                for done in self._live_wire.pipeline(chunk, sink):
                    self._check("UID FETCH", done)
        wanted = set(ids)
        return {str(item.uid): item.size for item in sink.items if item.size is not None and str(item.uid) in wanted}

    def _append_failed(self, done: Completion) -> None:
        """Raise the error of a refused APPEND (nothing when OK)."""
        if done.ok:
            return
        text = done.describe()
        if _is_throttled(text):
            if done.status == "BAD":
                self._lost()
            self._raise_if_throttled("APPEND", text)
        if done.status == "BAD":
            # with non-synchronizing literals the server may have read the rest of
            # our literals as commands: this connection cannot be trusted any more
            self._lost()
            self._refused(text)
        self._raise_if_throttled("APPEND", text)
        self._check_in_sync()
        self._refused(text)

    def _roll_back(self, folder: FolderInfo, stored: Sequence[Completion], why: str) -> None:
        """Expunge the messages of a pipelined batch that were stored before another
        was refused; TransientError when that is impossible (the caller reconciles)."""
        uids = self._appended_ids([r.text for r in stored], 1)
        if any(u is None for u in uids):
            raise TransientError(
                f"{self._where}: APPEND refused for part of a batch ({why}) and the rest cannot be rolled back "
                "without UIDPLUS; the destination is reconciled before anything is sent again"
            )
        self._expunge_uids(folder, [int(u) for u in uids if u is not None])

    def _check_in_sync(self) -> None:
        """NOOP after a refused APPEND; drop the connection if the answer is garbled."""
        try:
            if not self._live_wire.command("NOOP", b"").ok:
                self._lost()
        except Exception:
            self._lost()

    def _refused(self, text: str) -> NoReturn:
        if _is_quota(text):
            raise QuotaError(f"{self._where}: mailbox full: {text}")
        if "[TRYCREATE]" in text.upper():
            raise FolderError(f"{self._where}: folder missing: {text}")
        raise MessageError(f"{self._where}: APPEND refused: {text}")

    # ------------------------------------------------------------------ changing
    def set_flags(self, folder: FolderInfo, changes: Sequence[tuple[str, frozenset[str]]]) -> None:
        """Give each UID exactly its flag set (system flags and keywords; \\Recent and
        flags IMAP cannot carry are left out, with a warning): one UID STORE
        FLAGS.SILENT per distinct set and uid set, pipelined. UIDs that are gone are
        no error. FolderError when the server refuses."""
        if not changes:
            return
        groups: dict[bytes, list[int]] = defaultdict(list)
        for uid, flags in changes:
            keep = []
            for flag in sorted(flags):
                try:
                    spelled = _imap_flag(flag, uid)
                except MessageError as exc:
                    log.warning("%s: %s; left out", self._where, exc)
                    continue
                if spelled is not None:
                    keep.append(spelled)
            groups[("(" + " ".join(keep) + ")").encode("ascii")].append(int(uid))
        commands = [
            ("UID STORE", f"{uids} FLAGS.SILENT ".encode("ascii") + flag_list)
            for flag_list, members in groups.items()
            for uids in uid_sets(members)
        ]
        with self._guard("STORE"):
            self._ensure_open(folder, writable=True)
            self._pipeline_checked(commands)

    def delete(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> None:
        """Expunge exactly these UIDs (UID STORE +FLAGS.SILENT (\\Deleted), then UID
        EXPUNGE of the same set; other \\Deleted messages are left alone). UIDs that
        are gone are no error. Needs UIDPLUS: without it FolderError, nothing done."""
        if not msgs:
            return
        if "UIDPLUS" not in self._caps:
            raise FolderError(
                f"{self._where}: the server lacks UIDPLUS, so messages cannot be deleted one by one "
                "(EXPUNGE would also remove other messages marked \\Deleted); nothing was deleted"
            )
        with self._guard("delete"):
            self._expunge_uids(folder, [int(m.id) for m in msgs])

    def _expunge_uids(self, folder: FolderInfo, uids: Sequence[int]) -> None:
        self._ensure_open(folder, writable=True)
        commands: list[tuple[str, bytes]] = []
        for part in uid_sets(uids):
            commands.append(("UID STORE", part.encode("ascii") + b" +FLAGS.SILENT (\\Deleted)"))
            commands.append(("UID EXPUNGE", part.encode("ascii")))
        self._pipeline_checked(commands)

    def _pipeline_checked(self, commands: Sequence[tuple[str, bytes]]) -> None:
        wire = self._live_wire
        for start in range(0, len(commands), PIPELINE_DEPTH):
            chunk = commands[start : start + PIPELINE_DEPTH]
            for (name, _args), done in zip(chunk, wire.pipeline(chunk), strict=True):
                self._check(name, done)

    # ------------------------------------------------------------------ quota
    def quota(self) -> tuple[int, int] | None:
        """(used, limit) bytes of the inbox's storage quota root (GETQUOTAROOT INBOX),
        or None when the server has no QUOTA or no storage limit."""
        if "QUOTA" not in self._caps:
            return None
        with self._guard("GETQUOTAROOT"):
            _roots, quotas = self._conn.get_quota_root("INBOX")
        for q in quotas:
            if str(q.resource).upper() == "STORAGE" and q.limit:
                return int(q.usage) * 1024, int(q.limit) * 1024
        return None

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """LOGOUT, swallowing errors. Idempotent."""
        client, self._client = self._client, None
        self._selected = None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            _shutdown(client)


def _disabled(account: Account) -> set[str]:
    value = account.options.get("imap_disable") if account.options else None
    if not value:
        return set()
    words = value.split() if isinstance(value, str) else list(value)
    return {str(w).upper() for w in words}
