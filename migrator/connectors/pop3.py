"""POP3 source connector (poplib for the session, an exact reader for the data).

POP3 is one folder without flags: ``list_folders`` returns ``("INBOX",)`` and the
engine maps it to the plan's ``pop3_folder``. Everything POP3-specific stays here.

Decisions (each one documented because POP3 leaves it open):

* **Identity** is the UIDL. A server without UIDL gets a documented fallback id
  ``nouidl-<size>-<sha256 of the TOP 0 header block>``; the 2nd, 3rd ... message with
  the same size and header block (in message-number order) gets ``-2``, ``-3`` ....
  Such ids are stable across sessions as long as the messages stay; deleting the
  first of two identical messages gives the second one the first one's id (they are
  indistinguishable anyway). A UIDL the server repeats gets the same suffixes.
* **Internal date** = the time the message arrived in this mailbox: the date of the
  topmost ``Received:`` header (each hop prepends one, so the topmost was written
  by the last hop, the server holding the mailbox), else the next Received header
  whose date parses, else ``Date:``, else the time of the listing (UTC, whole
  seconds). Dates without a zone (``-0000``) are taken as UTC.
* **Headers** come from ``TOP n 0``; a server without TOP (or a TOP that fails for
  one message) costs a full ``RETR`` of that message during the listing (the
  message is then downloaded twice: once to list, once to copy).
* **Round trips**: with PIPELINING (RFC 2449) up to ``WINDOW`` commands are in
  flight (UIDL + LIST, the TOPs, the RETRs, the DELEs); without it, strictly one
  command at a time. The connector option ``pipelining: false`` turns it off.
* **Exact bytes**: multi-line answers are read raw, line endings kept, dot-stuffing
  undone (RFC 1939 3). The terminating line must start a new line, so a server adds
  CRLF to a message that does not end with one; when the RETR bytes are exactly the
  LIST size + 2 and end in CRLF, that CRLF was added and is removed (Dovecot's LIST
  size equals the IMAP RFC822.SIZE; with it the bytes equal IMAP's BODY[]).
* **Login**: AUTH XOAUTH2 when the endpoint has ``oauth``. Otherwise APOP when the
  greeting offers a timestamp and the connection is not encrypted (APOP then keeps
  the password off the wire); USER/PASS on TLS/STLS connections (the password is
  protected there, and USER/PASS also works where the server stores hashed
  passwords). A refused APOP is an AuthError, never a retry with PASS in the clear
  (a downgrade an attacker could provoke); ``auth: password`` on the endpoint
  forces USER/PASS.
* **Deletion** (``delete``): DELE of exactly the given ids, by the message numbers
  of this session's listing; ids not in it are skipped, never another message. The
  server deletes at QUIT (``close``): a dropped connection deletes nothing.
  ``close`` raises TransientError when this session sent DELEs and QUIT was not
  answered with +OK, so that the engine does not record deletions that did not
  happen. After a session that already failed, ``close`` never raises.
* **Side effect**: POP3 has no read-only retrieve. Dovecot marks RETRieved messages
  \\Seen for its IMAP view (unless ``pop3_no_flag_updates``); TOP does not.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import poplib
import re
import ssl
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from migrator.connectors.imap import TLS_FIX, _ssl_context
from migrator.errors import AuthError, ConnectError, MigratorError, PlanError, TLSError, TransientError
from migrator.model import Account, Capabilities, FolderInfo, MessageMeta, header_block, message_id_from_header_block

__all__ = ["WINDOW", "Pop3Store", "fallback_ids", "header_date", "open_pop3", "read_multiline"]

log = logging.getLogger("migrator.pop3")

Role = Literal["source", "destination"]

WINDOW = 64  # commands in flight with PIPELINING (a few hundred bytes: never blocks the sender)
CHUNK = 1 << 20  # longest piece read at once; longer lines are read in pieces
INBOX = FolderInfo(("INBOX",), validity=None)
_TIMESTAMP = re.compile(rb"\+OK[^<]*(<[^>]*>)")
_RESP_CODE = re.compile(rb"^-ERR \[([A-Z0-9/-]+)\]", re.IGNORECASE)
POPLIB_EOF = b"-ERR EOF"  # what poplib raises (error_proto) when the connection closes before an answer
_TRANSIENT_CODES = {"IN-USE", "SYS/TEMP", "LOGIN-DELAY"}


# --------------------------------------------------------------------------- pure helpers
def read_multiline(readline: Callable[[int], bytes]) -> bytes:
    """The body of a multi-line answer after its status line, exact: line endings as
    sent, dot-stuffing undone, up to and without the terminating ``.`` line.
    ``readline(limit)`` is a binary file's readline. EOFError when the server hangs up."""
    chunks: list[bytes] = []
    at_start = True
    while True:
        line = readline(CHUNK)
        if not line:
            raise EOFError("connection closed in the middle of an answer")
        if at_start and line[:1] == b".":
            if line in (b".\r\n", b".\n"):
                return b"".join(chunks)
            line = line[1:]
        chunks.append(line)
        at_start = line.endswith(b"\n")


def header_date(block: bytes) -> datetime | None:
    """The arrival time a header block tells: the first (topmost) Received header
    whose date parses, else Date:, else None. Timezone-aware (no zone: UTC)."""
    received: list[bytes] = []
    date: bytes | None = None
    for name, value in _headers(block):
        if name == b"received":
            received.append(value.rpartition(b";")[2])
        elif name == b"date" and date is None:
            date = value
    for candidate in (*received, date):
        parsed = _parse_date(candidate)
        if parsed is not None:
            return parsed
    return None


def _headers(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(lower-case name, unfolded value) of each header field of ``block``."""
    name: bytes | None = None
    value = b""
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and name is not None:
            value += b" " + line.strip()
            continue
        if name is not None:
            yield name, value.strip()
            name = None
        if not line:
            return
        head, colon, rest = line.partition(b":")
        if colon and head and b" " not in head.strip():
            name, value = head.strip().lower(), rest
    if name is not None:
        yield name, value.strip()


def _parse_date(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = parsedate_to_datetime(raw.decode("latin-1").strip())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if parsed.year < 1970:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def fallback_ids(entries: Sequence[tuple[int, bytes]]) -> list[str]:
    """Ids for a server without UIDL, one per (size, TOP 0 header block) in message
    order: ``nouidl-<size>-<sha256>``, with ``-2``, ``-3`` ... for repeats."""
    return _suffixed([f"nouidl-{size}-{hashlib.sha256(block).hexdigest()}" for size, block in entries])


def _suffixed(ids: Sequence[str]) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for base in ids:
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").strip()


# --------------------------------------------------------------------------- opening
def open_pop3(account: Account, role: Role) -> Pop3Store:
    """Connect (POP3S, STLS or plain), log in and return the store. POP3 is only a
    source: a destination is a PlanError. Raises ConnectError, TLSError or AuthError
    (whose text names the user and host, never the password or token)."""
    if role != "source":
        raise PlanError(f"{account.describe()}: POP3 can only be a migration source, not a {role}")
    if not account.host:
        raise ConnectError(f"{account.describe()}: no host given", retryable=False)
    pop = _connect(account)
    try:
        caps = _capa(pop)
        if account.security == "starttls":
            _stls(pop, account, caps)
            caps = _capa(pop)
        _login(pop, account)
        return Pop3Store(account, pop, caps)
    except BaseException:
        _shutdown(pop)
        raise


def _where(account: Account) -> str:
    return f"{account.host}:{account.port or (995 if account.security == 'tls' else 110)}"


def _connect(account: Account) -> poplib.POP3:
    host, where = account.host or "", _where(account)
    port = int(where.rpartition(":")[2])
    try:
        if account.security == "tls":
            return poplib.POP3_SSL(host, port, timeout=account.timeout, context=_ssl_context(account))
        return poplib.POP3(host, port, timeout=account.timeout)
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(f"{where}: certificate verification failed ({exc.verify_message}); {TLS_FIX}") from None
    except ssl.SSLError as exc:
        raise TLSError(f"{where}: TLS negotiation failed: {exc}") from None
    except poplib.error_proto as exc:
        raise ConnectError(f"{where}: the server refused the connection: {_text(_as_bytes(exc))}") from None
    except OSError as exc:
        raise ConnectError(f"{where}: cannot connect: {exc}") from None


def _as_bytes(exc: BaseException) -> bytes:
    arg = exc.args[0] if exc.args else b""
    return arg if isinstance(arg, bytes) else str(arg).encode()


def _capa(pop: poplib.POP3) -> dict[str, list[str]]:
    """CAPA as {NAME: args}; {} when the server has no CAPA (RFC 1939 servers)."""
    try:
        return {k.upper(): v for k, v in pop.capa().items()}
    except poplib.error_proto:
        return {}


def _stls(pop: poplib.POP3, account: Account, caps: dict[str, list[str]]) -> None:
    where = _where(account)
    if "STLS" not in caps:
        raise TLSError(f"{where}: the server does not offer STLS; use security: tls (POP3S) or none")
    try:
        pop._shortcmd("STLS")  # type: ignore[attr-defined]
        pop.sock = _ssl_context(account).wrap_socket(pop.sock, server_hostname=account.host)
        pop.file = pop.sock.makefile("rb")
        pop._tls_established = True  # type: ignore[attr-defined]
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(f"{where}: certificate verification failed ({exc.verify_message}); {TLS_FIX}") from None
    except ssl.SSLError as exc:
        raise TLSError(f"{where}: STLS negotiation failed: {exc}") from None
    except poplib.error_proto as exc:
        raise TLSError(f"{where}: STLS refused: {_text(_as_bytes(exc))}") from None
    except OSError as exc:
        raise ConnectError(f"{where}: STLS failed: {exc}") from None


def _login(pop: poplib.POP3, account: Account) -> None:
    host, user = account.host, account.user or ""
    if account.oauth is not None:
        _xoauth2(pop, account)
        return
    if account.secret is None:
        raise AuthError(f"{host}: no password given for {user}")
    password = account.secret.get()
    stamp = _TIMESTAMP.match(pop.welcome)
    apop = stamp is not None and account.security == "none" and account.options.get("auth") != "password"
    method = "APOP" if apop else "USER/PASS"
    try:
        if apop and stamp is not None:
            secret = stamp.group(1) + password.encode("utf-8")
            digest = hashlib.md5(secret, usedforsecurity=False).hexdigest()  # RFC 1939 prescribes MD5
            pop._shortcmd(f"APOP {user} {digest}")  # type: ignore[attr-defined]
        else:
            pop.user(user)
            pop.pass_(password)
    except poplib.error_proto as exc:
        raw = _as_bytes(exc)
        _raise_if_connection_lost(host, raw)
        text = _text(raw).replace(password, "***") if password else _text(raw)
        code = _RESP_CODE.match(raw)
        if code and code.group(1).decode().upper() in _TRANSIENT_CODES:
            raise ConnectError(f"{host}: {method} login for {user} not possible now: {text}") from None
        hint = "; if the server cannot check APOP for this account, set auth: password" if apop else ""
        raise AuthError(f"{host}: {method} login failed for {user}: {text}{hint}") from None
    except OSError as exc:
        raise ConnectError(f"{host}: connection lost during login: {exc}") from None


def _raise_if_connection_lost(host: str | None, raw: bytes) -> None:
    """poplib reports a connection closed before the answer as error_proto("-ERR EOF"),
    like a refused login; it is transient (retried), not a wrong password."""
    if raw == POPLIB_EOF:
        raise ConnectError(f"{host}: connection lost during login (closed by the server)")


def _xoauth2(pop: poplib.POP3, account: Account) -> None:
    """AUTH XOAUTH2: the command, the server's "+" continuation, then the base64
    SASL response (Microsoft's documented exchange). A failure answers with a "+"
    carrying an error description, which is acknowledged with an empty line."""
    from migrator.auth import access_token, xoauth2

    host, user = account.host, account.user or ""
    token = access_token(account)
    initial = base64.b64encode(xoauth2(user, token).encode("utf-8")).decode("ascii")
    try:
        first = pop._shortcmd("AUTH XOAUTH2")  # type: ignore[attr-defined]
        if first.startswith(b"+OK"):
            raise AuthError(f"{host}: XOAUTH2 login failed for {user}: unexpected answer {_text(first)}")
        answer = pop._shortcmd(initial)  # type: ignore[attr-defined]
        if answer.startswith(b"+ ") or answer == b"+":  # an error description; acknowledge it
            detail = _text(answer[1:])
            with suppress(poplib.error_proto):
                pop._shortcmd("")  # type: ignore[attr-defined]
            raise AuthError(f"{host}: XOAUTH2 login failed for {user}: {_decode_challenge(detail)}")
    except poplib.error_proto as exc:
        _raise_if_connection_lost(host, _as_bytes(exc))
        text = _text(_as_bytes(exc)).replace(token, "***")
        raise AuthError(f"{host}: XOAUTH2 login failed for {user}: {text}") from None
    except OSError as exc:
        raise ConnectError(f"{host}: connection lost during login: {exc}") from None


def _decode_challenge(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (ValueError, UnicodeError):
        return text


def _shutdown(pop: poplib.POP3) -> None:
    with suppress(Exception):
        pop.close()


# --------------------------------------------------------------------------- the store
@dataclass(slots=True)
class _Entry:
    number: int
    size: int
    meta: MessageMeta | None = None  # filled by list_messages
    unreadable: str | None = None  # the server's answer when neither TOP nor RETR worked


class Pop3Store:
    """A POP3 maildrop as a one-folder Source (one thread at a time).

    A POP3 session sees the maildrop as it was at login, so the listing is made
    once per session and the message numbers of DELE/RETR come from it."""

    capabilities = Capabilities(folders=False, flags=False, keywords=False, internal_date=True, can_delete=True)

    def __init__(self, account: Account, pop: poplib.POP3, caps: dict[str, list[str]]) -> None:
        self.account = account
        self._pop: poplib.POP3 | None = pop
        self._where = account.describe()
        self._caps = caps
        self.pipelining = "PIPELINING" in caps and account.options.get("pipelining", True) is not False
        self._top: bool | None = True if "TOP" in caps else (False if caps else None)  # None: probe
        self._entries: list[_Entry] | None = None  # this session's listing, in message order
        self._by_id: dict[str, _Entry] = {}
        self._uidl = True
        self._deleted: set[int] = set()  # message numbers DELEted in this session

    def __repr__(self) -> str:
        return f"Pop3Store({self._where})"

    # ------------------------------------------------------------------ plumbing
    @property
    def _conn(self) -> poplib.POP3:
        if self._pop is None:
            raise TransientError(f"{self._where}: connection closed")
        return self._pop

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Socket failures -> TransientError, and the connection is dropped."""
        try:
            yield
        except MigratorError:
            raise
        except TimeoutError as exc:
            self._lost()
            raise TransientError(f"{self._where}: {what}: timed out ({exc})") from None
        except (OSError, EOFError, poplib.error_proto) as exc:
            self._lost()
            raise TransientError(f"{self._where}: {what}: connection lost: {exc}") from None

    def _lost(self) -> None:
        """Drop the connection without QUIT: the server discards this session's DELEs."""
        if self._pop is not None:
            _shutdown(self._pop)
        self._pop = None
        self._deleted.clear()

    def _send(self, commands: Sequence[str]) -> None:
        self._conn.sock.sendall(b"".join(c.encode("utf-8") + b"\r\n" for c in commands))

    def _status(self) -> bytes:
        line = self._conn.file.readline(CHUNK)
        if not line:
            raise EOFError("the server closed the connection")
        if not (line.startswith(b"+OK") or line.startswith(b"-ERR")):
            self._lost()
            raise TransientError(f"{self._where}: unexpected answer {_text(line[:200])!r}; connection dropped")
        return line

    def _pipeline(self, commands: Sequence[str], multi: bool) -> Iterator[tuple[int, bytes, bytes | None]]:
        """Send ``commands`` (``WINDOW`` in flight with PIPELINING, else one at a time)
        and yield (index, status line, body or None) in order; a -ERR has no body.
        Closing the generator early reads the answers still in flight."""
        window = WINDOW if self.pipelining else 1
        sent = done = 0
        try:
            while done < len(commands):
                if sent < len(commands) and sent - done <= window // 2:
                    upto = min(len(commands), done + window)
                    self._send(commands[sent:upto])
                    sent = upto
                status = self._status()
                body = read_multiline(self._conn.file.readline) if multi and status.startswith(b"+OK") else None
                done += 1
                yield done - 1, status, body
        finally:
            if done < sent and self._pop is not None:
                try:
                    for _ in range(sent - done):
                        if self._status().startswith(b"+OK") and multi:
                            read_multiline(self._conn.file.readline)
                except Exception:
                    self._lost()

    # ------------------------------------------------------------------ listing
    def list_folders(self) -> list[FolderInfo]:
        """The one POP3 folder, ("INBOX",), without validity."""
        return [INBOX]

    def _numbers(self) -> list[_Entry]:
        """UIDL + LIST of this session (pipelined). Falls back to content ids when
        UIDL is refused."""
        with self._guard("LIST"):
            answers = {i: (s, b) for i, s, b in self._pipeline(["LIST", "UIDL"], multi=True)}
        status, body = answers[0]
        if body is None:
            raise TransientError(f"{self._where}: LIST refused: {_text(status)}")
        entries = []
        for line in body.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                entries.append(_Entry(number=int(parts[0]), size=int(parts[1])))
        uid_status, uid_body = answers[1]
        self._uidl = uid_body is not None
        if uid_body is None:
            log.info("%s: no UIDL (%s): ids are size + header hash", self._where, _text(uid_status))
            return entries
        uids: dict[int, str] = {}
        for line in uid_body.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                uids[int(parts[0])] = parts[1].decode("ascii", "replace")
        missing = [e.number for e in entries if e.number not in uids]
        if missing:
            raise TransientError(f"{self._where}: UIDL does not list message(s) {missing[:5]}")
        ids = _suffixed([uids[e.number] for e in entries])
        if len(set(uids.values())) != len(uids):
            log.warning("%s: the server repeats UIDLs; repeats get -2, -3 ... suffixes", self._where)
        for entry, uid in zip(entries, ids, strict=True):
            entry.meta = MessageMeta(id=uid, size=entry.size)
        return entries

    def _probe_top(self, first: _Entry) -> bool:
        with self._guard("TOP"):
            (_, status, _body), *_ = list(self._pipeline([f"TOP {first.number} 0"], multi=True))
        return status.startswith(b"+OK")

    def _header_blocks(self, entries: Sequence[_Entry]) -> dict[int, bytes]:
        """Header block of each entry: TOP n 0 (pipelined), RETR where TOP is missing
        or failed for that message. Unreadable messages are marked, not returned."""
        if entries and self._top is None:
            self._top = self._probe_top(entries[0])
        blocks: dict[int, bytes] = {}
        retry: list[_Entry] = list(entries)
        if self._top:
            retry = []
            with self._guard("TOP"):
                cmds = [f"TOP {e.number} 0" for e in entries]
                for i, status, body in self._pipeline(cmds, multi=True):
                    if body is None:
                        log.warning(
                            "%s: TOP %d refused (%s); reading it whole", self._where, entries[i].number, _text(status)
                        )
                        retry.append(entries[i])
                    else:
                        blocks[entries[i].number] = body
        if retry:
            with self._guard("RETR"):
                for i, status, body in self._pipeline([f"RETR {e.number}" for e in retry], multi=True):
                    if body is None:
                        retry[i].unreadable = _text(status)
                        log.warning("%s: message %d cannot be read: %s", self._where, retry[i].number, _text(status))
                    else:
                        blocks[retry[i].number] = header_block(body)
        return blocks

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every message: id (UIDL or fallback), LIST size, Message-ID and internal
        date from the headers. Uses TOP (no \\Seen side effect). The result is this
        session's view; a message the server cannot read at all is still listed
        (without Message-ID) so that it is reported when fetch cannot give it."""
        if self._entries is not None:
            return [e.meta for e in self._entries if e.meta is not None and e.number not in self._deleted]
        listed_at = datetime.now(UTC).replace(microsecond=0)
        entries = self._numbers()
        blocks = self._header_blocks(entries)
        if not self._uidl:
            ids = fallback_ids([(e.size, blocks.get(e.number, b"")) for e in entries])
            for entry, fid in zip(entries, ids, strict=True):
                if entry.number not in blocks:
                    fid = f"nouidl-{entry.size}-unreadable-{entry.number}"
                entry.meta = MessageMeta(id=fid, size=entry.size)
        for entry in entries:
            block = blocks.get(entry.number, b"")
            assert entry.meta is not None
            entry.meta = replace(
                entry.meta,
                internal_date=header_date(block) or listed_at,
                message_id=message_id_from_header_block(block),
            )
        self._entries = entries
        self._by_id = {e.meta.id: e for e in entries if e.meta is not None}
        return [e.meta for e in entries if e.meta is not None]

    def _session_entries(self) -> dict[str, _Entry]:
        if self._entries is None:
            self.list_messages(INBOX)
        return self._by_id

    # ------------------------------------------------------------------ fetching
    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """Exact bytes of ``msgs`` via RETR (pipelined), each with this session's
        metadata. Messages no longer in the maildrop, deleted in this session or
        refused by the server are not yielded."""
        if not msgs:
            return
        by_id = self._session_entries()
        wanted = [by_id[m.id] for m in msgs if m.id in by_id and by_id[m.id].number not in self._deleted]
        if not wanted:
            return
        with self._guard("RETR"):
            for i, status, body in self._pipeline([f"RETR {e.number}" for e in wanted], multi=True):
                entry = wanted[i]
                if body is None:
                    log.warning("%s: RETR %d refused: %s", self._where, entry.number, _text(status))
                    continue
                if len(body) == entry.size + 2 and body.endswith(b"\r\n"):
                    body = body[:-2]  # the server ended the last line for the terminator
                assert entry.meta is not None
                yield entry.meta, body

    # ------------------------------------------------------------------ deleting
    def delete(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> None:
        """DELE exactly ``msgs`` (by this session's message numbers; ids not in the
        maildrop are skipped). Takes effect at QUIT (``close``), not before.
        TransientError when the server refuses a DELE (the others stay marked)."""
        by_id = self._session_entries()
        numbers = sorted({by_id[m.id].number for m in msgs if m.id in by_id} - self._deleted)
        if not numbers:
            return
        refused: list[str] = []
        with self._guard("DELE"):
            for i, status, _ in self._pipeline([f"DELE {n}" for n in numbers], multi=False):
                if status.startswith(b"+OK"):
                    self._deleted.add(numbers[i])
                else:
                    refused.append(f"{numbers[i]}: {_text(status)}")
        if refused:
            raise TransientError(f"{self._where}: DELE refused for message(s) {'; '.join(refused[:5])}")

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """QUIT: the server applies this session's DELEs now. Idempotent. Raises
        TransientError only when DELEs were sent and QUIT did not answer +OK (the
        deletions may not have happened); never after a session that already failed."""
        pop, self._pop = self._pop, None
        pending = len(self._deleted)
        self._deleted.clear()
        self._entries, self._by_id = None, {}
        if pop is None:
            return
        problem: str | None = None
        try:
            pop._shortcmd("QUIT")  # type: ignore[attr-defined]
        except poplib.error_proto as exc:
            problem = f"QUIT answered {_text(_as_bytes(exc))}"
        except (OSError, EOFError) as exc:
            problem = f"connection lost at QUIT: {exc}"
        finally:
            _shutdown(pop)
        if problem and pending:
            raise TransientError(
                f"{self._where}: {problem}; the deletion of {pending} message(s) may not have taken effect"
            )
        if problem:
            log.debug("%s: %s", self._where, problem)
