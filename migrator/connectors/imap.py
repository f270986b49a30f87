"""IMAP connector (imapclient).

Everything IMAP-specific stays here: modified UTF-7, the hierarchy separator, the
personal namespace prefix ("" on Dovecot, "INBOX." on Courier/Cyrus), APPENDUID
response codes, server error texts.

Folder paths handed out and accepted are tuples of decoded parts RELATIVE to the
personal namespace: Dovecot "Archive/2019" and Courier "INBOX.Archive.2019" are both
``("Archive", "2019")``; the inbox is always ``("INBOX",)``. Folders of other
namespaces (other users, shared) are not listed.

Round trips are kept low: one LIST (with LIST-STATUS when offered) per folder
listing, one EXAMINE + one UID FETCH per message listing, one UID FETCH per fetch
batch, one MULTIAPPEND per append batch (LITERAL+ when offered).
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timezone
from typing import Any, Literal, NoReturn

from imapclient import IMAPClient
from imapclient import exceptions as imap_exc
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imap_utf7 import encode as encode_utf7
from imapclient.response_parser import parse_fetch_response, parse_response

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

__all__ = ["ImapStore", "Namespace", "expand_uid_set", "open_imap", "parse_appenduid", "uid_set"]

Role = Literal["source", "destination"]

TLS_FIX = "set ca_file: <path to the CA> on the endpoint, or verify_tls: false / ?verify=off to skip verification"
LIST_ITEMS = "(UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
FETCH_ITEMS = "(UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[])"
HEADER_KEY = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
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


def _text(data: Any) -> str:
    """Server response text (last item of an imaplib data list) as str."""
    if isinstance(data, list | tuple):
        data = data[-1] if data else b""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


def _flags_to_str(flags: Sequence[bytes | str]) -> frozenset[str]:
    out = set()
    for flag in flags:
        text = flag.decode("utf-8", "surrogateescape") if isinstance(flag, bytes) else str(flag)
        if text.upper() != "\\RECENT":
            out.add(text)
    return frozenset(out)


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    offset = value.utcoffset()
    if offset is None:
        return value.replace(tzinfo=UTC)
    return value.replace(tzinfo=timezone(offset))  # a plain stdlib zone, same instant


def _flag_list(meta: MessageMeta) -> bytes:
    """The APPEND flag list of ``meta`` (never \\Recent). MessageError for a flag the
    protocol cannot carry (checked here: a BAD mid-MULTIAPPEND desynchronises)."""
    flags = []
    for flag in sorted(meta.flags):
        upper = flag.upper()
        if upper == "\\RECENT":
            continue
        if flag.startswith("\\"):
            if upper not in _SYSTEM_BY_UPPER:
                raise MessageError(f"flag {flag!r} is not an IMAP system flag", msg_id=meta.id)
            flags.append(_SYSTEM_BY_UPPER[upper])
        elif _ATOM.fullmatch(flag):
            flags.append(flag)
        else:
            raise MessageError(f"keyword {flag!r} cannot be stored over IMAP", msg_id=meta.id)
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
        client.login(user, password)
    except imap_exc.LoginError as exc:
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
        text = re.sub(r"^b'(.*)'$", r"\1", str(exc)).strip().replace(token, "***")
        raise AuthError(f"{host}: XOAUTH2 login failed for {user}: {text}") from None
    except (OSError, imaplib.IMAP4.abort) as exc:
        raise ConnectError(f"{host}: connection lost during login: {exc}") from None


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
    """Source and Destination over one IMAP connection (one thread at a time)."""

    def __init__(self, account: Account, role: Role, client: IMAPClient) -> None:
        self.account = account
        self.role = role
        self._client: IMAPClient | None = client
        self._where = account.describe()
        self._selected: str | None = None  # encoded-free (decoded) name of the EXAMINEd folder
        with self._guard("capabilities"):
            self._caps = {c.decode("ascii", "replace").upper() for c in client.capabilities()}
            self.namespace = self._discover_namespace()
        self.capabilities = Capabilities(
            append_returns_id="UIDPLUS" in self._caps,
            forbidden_name_chars=_forbidden_chars(self.namespace.separator),
            max_message_bytes=self._appendlimit(),
        )

    def __repr__(self) -> str:
        return f"ImapStore({self._where}, {self.role})"

    # ------------------------------------------------------------------ plumbing
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
        """Map socket-level failures to TransientError and drop the connection."""
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

    def _lost(self) -> None:
        if self._client is not None:
            _shutdown(self._client)
        self._client = None

    def _simple(self, name: str, *args: str) -> tuple[str, list[Any]]:
        """One command; BAD raises imaplib.IMAP4.error, NO comes back as typ."""
        self._imap.untagged_responses.clear()
        return self._imap._simple_command(name, *args)  # type: ignore[attr-defined]

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
        (none for \\Noselect containers). Read-only."""
        with self._guard("LIST"):
            return self._list("*")

    def _list(self, pattern: str, exact: str | None = None) -> list[FolderInfo]:
        list_status = "LIST-STATUS" in self._caps and "LIST-EXTENDED" in self._caps
        returns = []
        if "SPECIAL-USE" in self._caps and "LIST-EXTENDED" in self._caps:
            returns.append("SPECIAL-USE")
        if list_status:
            returns.append("STATUS (UIDVALIDITY)")
        args = ['""', self._quote(pattern)]
        if returns:
            args.append(f"RETURN ({' '.join(returns)})")
        typ, data = self._simple("LIST", *args)
        if typ != "OK":
            raise FolderError(f"{self._where}: LIST failed: {_text(data)}")
        raw_list = [i for i in self._imap.untagged_responses.get("LIST", []) if i not in (b"", None)]
        validities = self._status_responses(self._imap.untagged_responses.get("STATUS", []))
        out = []
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
            validity = validities.get(name) if selectable else None
            if selectable and validity is None and not list_status:
                validity = self._status_validity(name)
            out.append(FolderInfo(path=path, special_use=special, validity=validity, selectable=selectable))
        return out

    @staticmethod
    def _status_responses(items: list[Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in items:
            if item in (b"", None):
                continue
            parsed = parse_response([item])
            if len(parsed) < 2 or not isinstance(parsed[-1], tuple):
                continue
            raw = parsed[0]
            name = decode_utf7(raw) if isinstance(raw, bytes) else str(raw)
            values = dict(zip(parsed[-1][::2], parsed[-1][1::2], strict=False))
            validity = values.get(b"UIDVALIDITY")
            if isinstance(validity, int):
                out[name] = validity
        return out

    def _status_validity(self, name: str) -> int | None:
        typ, _data = self._simple("STATUS", self._quote(name), "(UIDVALIDITY)")
        if typ != "OK":
            return None
        return self._status_responses(self._imap.untagged_responses.get("STATUS", [])).get(name)

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        """The folder at ``path`` or None. Read-only."""
        name = self.namespace.encode(path)
        with self._guard("LIST"):
            found = self._list(name, exact=name)
        return found[0] if found else None

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        """Create ``path`` and its missing parents, subscribe it, return it.
        Idempotent. ("INBOX",) is never created. FolderError when refused."""
        existing = self.find_folder(path)
        if existing is not None and existing.selectable:
            return existing
        with self._guard("CREATE"):
            for depth in range(1, len(path) + 1):
                sub = path[:depth]
                if depth == 1 and sub[0].upper() == "INBOX":
                    continue
                use = special_use if depth == len(path) else None
                self._create(self.namespace.encode(sub), use)
            self._simple("SUBSCRIBE", self._quote(self.namespace.encode(path)))
        created = self.find_folder(path)
        if created is None or not created.selectable:
            raise FolderError(f"{self._where}: folder {'/'.join(path)} was not created")
        return created

    def _create(self, name: str, special_use: str | None) -> None:
        if special_use and "CREATE-SPECIAL-USE" in self._caps:
            typ, data = self._simple("CREATE", self._quote(name), f"(USE ({special_use}))")
            if typ == "OK" or self._already_exists(data):
                return
        typ, data = self._simple("CREATE", self._quote(name))
        if typ != "OK" and not self._already_exists(data):
            raise FolderError(f"{self._where}: cannot create {name!r}: {_text(data)}")

    @staticmethod
    def _already_exists(data: Any) -> bool:
        text = _text(data).upper()
        return "ALREADYEXISTS" in text or "ALREADY EXISTS" in text

    # ------------------------------------------------------------------ messages
    def _examine(self, folder: FolderInfo) -> int:
        """EXAMINE ``folder`` (read-only); returns EXISTS. FolderError when refused."""
        name = self.namespace.encode(folder.path)
        self._selected = None
        try:
            info = self._conn.select_folder(name, readonly=True)
        except imap_exc.IMAPClientAbortError:
            raise
        except imaplib.IMAP4.error as exc:
            raise FolderError(f"{self._where}: cannot open folder {'/'.join(folder.path)}: {exc}") from None
        self._selected = name
        return int(info.get(b"EXISTS", 0))

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every message with UID, size, flags, internal date and Message-ID, in one
        UID FETCH. EXAMINE keeps it read-only (no \\Seen side effect)."""
        with self._guard("list messages"):
            if self._examine(folder) == 0:
                return []
            data = self._uid_fetch("1:*", LIST_ITEMS)
        out = []
        for uid, item in data:
            header = item.get(HEADER_KEY)
            out.append(
                MessageMeta(
                    id=str(uid),
                    size=int(item.get(b"RFC822.SIZE", 0)),
                    flags=_flags_to_str(item.get(b"FLAGS", ())),
                    internal_date=_aware(item.get(b"INTERNALDATE")),
                    message_id=message_id_from_header_block(header) if isinstance(header, bytes) else None,
                )
            )
        out.sort(key=lambda m: int(m.id))
        return out

    def _uid_fetch(self, uids: str, items: str) -> list[tuple[int, dict[bytes, Any]]]:
        """(uid, attributes) for every FETCH response that carries a UID."""
        self._imap.untagged_responses.clear()
        typ, data = self._imap.uid("FETCH", uids, items)
        if typ != "OK":
            raise FolderError(f"{self._where}: FETCH failed: {_text(data)}")
        parsed = parse_fetch_response(data, normalise_times=False, uid_is_key=False)
        return [(item[b"UID"], item) for item in parsed.values() if b"UID" in item]

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """Exact bytes of ``msgs`` with fresh flags and dates, in one UID FETCH.
        Vanished messages are not yielded. Read-only (BODY.PEEK)."""
        if not msgs:
            return
        uids = [int(m.id) for m in msgs]
        with self._guard("fetch"):
            name = self.namespace.encode(folder.path)
            if self._selected != name:
                self._examine(folder)
            data = self._uid_fetch(uid_set(uids), FETCH_ITEMS)
        by_uid = {int(m.id): m for m in msgs}
        for uid, item in data:
            body = item.get(b"BODY[]")
            old = by_uid.get(uid)
            if old is None or not isinstance(body, bytes):
                continue
            meta = MessageMeta(
                id=str(uid),
                size=int(item.get(b"RFC822.SIZE", len(body))),
                flags=_flags_to_str(item.get(b"FLAGS", ())),
                internal_date=_aware(item.get(b"INTERNALDATE")) or old.internal_date,
                message_id=old.message_id,
                extra=dict(old.extra),
            )
            yield meta, body

    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        """Store ``items`` with flags, keywords and internal dates: one MULTIAPPEND
        when the server offers it, else one APPEND per item. Returns the APPENDUID
        UIDs (None each without UIDPLUS). Raises QuotaError, MessageError,
        FolderError ([TRYCREATE]: the folder is missing) or TransientError."""
        if not items:
            return []
        name = self.namespace.encode(folder.path)
        if "MULTIAPPEND" in self._caps and len(items) > 1:
            return self._append_batch(name, items)
        out: list[str | None] = []
        for item in items:
            out.extend(self._append_batch(name, [item]))
        return out

    def _append_batch(self, name: str, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        # imaplib's append() rewrites bare CR/LF and waits for a continuation per
        # literal; _raw_command sends the bytes untouched, with LITERAL+ if offered.
        from imapclient.imapclient import _literal

        args: list[bytes] = [self._quote(name).encode("ascii")]
        for meta, raw in items:
            args.append(_flag_list(meta))
            if meta.internal_date is not None:
                args.append(f'"{datetime_to_INTERNALDATE(_aware(meta.internal_date))}"'.encode("ascii"))
            args.append(_literal(raw))
        with self._guard("APPEND"):
            self._imap.untagged_responses.clear()
            try:
                typ, data = self._conn._raw_command(b"APPEND", args, uid=False)
            except imap_exc.IMAPClientAbortError as exc:
                if "waiting for continuation" in str(exc):
                    self._refused(str(exc))  # answered before the literals: still in sync
                raise
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                # BAD: with LITERAL+ the server may read the rest of our literals as
                # commands, so this connection cannot be trusted any more.
                self._lost()
                self._refused(str(exc))
            if typ != "OK":
                self._check_in_sync()
                self._refused(_text(data))
        last = data[-1] if data and isinstance(data[-1], bytes) else b""
        return parse_appenduid(last, len(items))

    def _check_in_sync(self) -> None:
        """NOOP after a refused APPEND; drop the connection if the answer is garbled."""
        try:
            typ, _data = self._simple("NOOP")
            if typ != "OK":
                self._lost()
        except Exception:
            self._lost()

    def _refused(self, text: str) -> NoReturn:
        if _is_quota(text):
            raise QuotaError(f"{self._where}: mailbox full: {text}")
        if "[TRYCREATE]" in text.upper():
            raise FolderError(f"{self._where}: folder missing: {text}")
        raise MessageError(f"{self._where}: APPEND refused: {text}")

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
