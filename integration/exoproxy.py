"""An IMAP proxy in front of Dovecot that answers like Exchange Online.

It listens on 127.0.0.1 with TLS (as outlook.office365.com:993 does), talks plain
IMAP to Dovecot, and applies Exchange Online's rules to what passes:

* capabilities cut down to Exchange Online's (no MULTIAPPEND, no LIST-STATUS, no
  SPECIAL-USE, no APPENDLIMIT, ...): one APPEND per message, as against the real
  service;
* every ``throttle_every``-th APPEND is answered ``NO Request is throttled.
  Suggested Backoff Time: N milliseconds`` and not forwarded (``throttle_style``
  "bad-bye" answers ``BAD ...`` followed by ``* BYE Connection closed. 14`` and drops
  the connection, the other form seen in the wild);
* an APPEND over ``max_message_bytes`` is refused (``NO [TOOBIG] ...``), one with a
  line over ``max_line`` octets gets ``BAD Command Error. 10``;
* optionally, a session whose XOAUTH2 token has expired is ended with ``* BYE
  Session invalidated - AccessTokenExpired`` at its next command (``token_expiry``
  tells when a token expires);
* optionally, Message-IDs matching ``rewrite_message_id`` are replaced, the original
  kept in ``X-MS-Exchange-Parent-Message-Id`` (what Exchange Online does to some
  messages).

Every decision is recorded in ``events`` (time, connection, kind, detail) so that
tests can measure, e.g., the pause between a throttling answer and the next APPEND.
Tokens never appear in events.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

EXO_CAPABILITIES = (
    "IMAP4",
    "IMAP4rev1",
    "AUTH=PLAIN",
    "AUTH=XOAUTH2",
    "SASL-IR",
    "UIDPLUS",
    "MOVE",
    "ID",
    "UNSELECT",
    "CHILDREN",
    "IDLE",
    "NAMESPACE",
    "LITERAL+",
)
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n$")
_CAP_LINE = re.compile(rb"^\* CAPABILITY [^\r\n]*", re.IGNORECASE)
_CAP_CODE = re.compile(rb"\[CAPABILITY [^\]]*\]", re.IGNORECASE)
_MID = re.compile(rb"^(Message-ID:[ \t]*)(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class ExoRules:
    throttle_every: int = 200  # 0: never
    backoff_ms: int = 1500
    throttle_style: str = "no"  # "no" | "bad-bye"
    max_message_bytes: int | None = 35 * 1024 * 1024
    max_line: int | None = 10_000
    token_expiry: Callable[[str], float | None] | None = None
    rewrite_message_id: Callable[[bytes], bool] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # time.monotonic()
    conn: int
    kind: str  # "append", "throttled", "toobig", "longline", "bye-expired", "login", "rewritten",
    # and why a session ended early: "setup-failed", "client-side-error", "server-side-error"
    detail: str = ""
    mailbox: str = ""  # the APPEND's target folder (as sent, mUTF-7), for APPEND events


@dataclass(slots=True)
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    appends_seen: int = 0
    conn_ids: int = 0
    events: list[Event] = field(default_factory=list)


class ExoProxy:
    """``start()`` / ``stop()``; ``port`` is where clients connect (TLS)."""

    host = "127.0.0.1"

    def __init__(self, upstream: tuple[str, int], cert: Path, key: Path, rules: ExoRules | None = None) -> None:
        self.upstream = upstream
        self.rules = rules or ExoRules()
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._counters = _Counters()
        self._conns: list[socket.socket] = []
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ExoProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="exoproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._counters.lock:
            conns = list(self._conns)
        for c in conns:  # shutdown first: it wakes a pump blocked in recv (close alone
            with contextlib.suppress(OSError):  # does not while a makefile() holds the socket)
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()

    def __enter__(self) -> ExoProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def events(self) -> list[Event]:
        with self._counters.lock:
            return list(self._counters.events)

    def record(self, conn: int, kind: str, detail: str = "", mailbox: str = "") -> None:
        with self._counters.lock:
            self._counters.events.append(Event(time.monotonic(), conn, kind, detail, mailbox))

    def next_append(self) -> int:
        with self._counters.lock:
            self._counters.appends_seen += 1
            return self._counters.appends_seen

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._counters.lock:
                self._counters.conn_ids += 1
                cid = self._counters.conn_ids
                self._conns.append(raw)
            threading.Thread(target=self._serve, args=(raw, cid), name=f"exoproxy-{cid}", daemon=True).start()

    def _serve(self, raw: socket.socket, cid: int) -> None:
        try:
            raw.settimeout(30)
            client = self._ctx.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError as exc:
            self.record(cid, "setup-failed", repr(exc))
            with contextlib.suppress(OSError):
                raw.close()
            return
        # an idle session is not an error (Exchange keeps one for 30 minutes): no read
        # timeout from here on; stop() closes the sockets, which ends both pumps
        client.settimeout(None)
        upstream.settimeout(None)
        with self._counters.lock:
            self._conns += [client, upstream]  # (wrap_socket detached raw: stop() closes these)
        _Session(self, cid, client, upstream).run()


class _Session:
    """One client connection: two pumps (client->server with the rules, server->client
    with the capability rewrite) sharing a lock for writes to the client."""

    def __init__(self, proxy: ExoProxy, cid: int, client: ssl.SSLSocket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.rules = proxy.rules
        self.cid = cid
        self.client = client
        self.upstream = upstream
        self.cin = client.makefile("rb")
        self.uin = upstream.makefile("rb")
        self.wlock = threading.Lock()
        self.token: str | None = None
        self.closed = threading.Event()

    def run(self) -> None:
        pump = threading.Thread(target=self._server_to_client, daemon=True)
        pump.start()
        try:
            self._client_to_server()
        except (OSError, ValueError) as exc:
            self.proxy.record(self.cid, "client-side-error", repr(exc))
        finally:
            self._close()
            pump.join(timeout=5)

    def _close(self) -> None:
        self.closed.set()
        for s in (self.upstream, self.client):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _to_client(self, data: bytes) -> None:
        with self.wlock:
            self.client.sendall(data)

    # ------------------------------------------------------------------ server -> client
    def _server_to_client(self) -> None:
        try:
            while not self.closed.is_set():
                line = self.uin.readline()
                if not line:
                    break
                line = _CAP_LINE.sub(b"* CAPABILITY " + " ".join(EXO_CAPABILITIES).encode(), line)
                line = _CAP_CODE.sub(b"[CAPABILITY " + " ".join(EXO_CAPABILITIES).encode() + b"]", line)
                out = [line]
                m = _LITERAL.search(line)
                while m:
                    data = self.uin.read(int(m.group(1)))
                    rest = self.uin.readline()
                    out += [data, rest]
                    m = _LITERAL.search(rest)
                self._to_client(b"".join(out))
        except (OSError, ValueError) as exc:
            if not self.closed.is_set():
                self.proxy.record(self.cid, "server-side-error", repr(exc))
        finally:
            self.closed.set()
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ client -> server
    def _read_command(self) -> list[tuple[bytes, bytes | None]] | None:
        """One client command: [(line, literal or None), ...]; sends "+" for
        synchronising literals (upstream always gets LITERAL+)."""
        parts: list[tuple[bytes, bytes | None]] = []
        while True:
            line = self.cin.readline(1 << 20)
            if not line:
                return None
            m = _LITERAL.search(line)
            if not m:
                parts.append((line, None))
                return parts
            if not m.group(2):
                self._to_client(b"+ Ready for additional command text.\r\n")
            data = self.cin.read(int(m.group(1)))
            parts.append((line, data))

    def _client_to_server(self) -> None:
        sasl_pending = False
        while not self.closed.is_set():
            parts = self._read_command()
            if parts is None:
                return
            first = parts[0][0]
            if sasl_pending:  # the SASL response line of an AUTHENTICATE
                sasl_pending = False
                self._note_token(first.strip())
                self.upstream.sendall(first)
                continue
            words = first.split(b" ", 3)
            tag = words[0]
            verb = words[1].upper().strip() if len(words) > 1 else b""
            if verb == b"AUTHENTICATE" and len(words) > 2 and words[2].strip().upper() == b"XOAUTH2":
                if len(words) > 3:
                    self._note_token(words[3].strip())
                else:
                    sasl_pending = True
            elif self._expired():
                self.proxy.record(self.cid, "bye-expired", verb.decode("ascii", "replace"))
                self._to_client(b"* BYE Session invalidated - AccessTokenExpired\r\n")
                return
            if verb == b"APPEND" and self._append_refused(tag, parts):
                if self.closed.is_set():
                    return
                continue
            self.upstream.sendall(_with_literal_plus(parts))

    def _note_token(self, b64: bytes) -> None:
        try:
            text = base64.b64decode(b64, validate=True).decode("utf-8", "replace")
        except (ValueError, base64.binascii.Error):  # type: ignore[attr-defined]
            return
        m = re.search(r"auth=Bearer ([^\x01]+)", text)
        if m:
            self.token = m.group(1)
            user = re.search(r"user=([^\x01]*)", text)
            self.proxy.record(self.cid, "login", user.group(1) if user else "")

    def _expired(self) -> bool:
        if self.rules.token_expiry is None or self.token is None:
            return False
        expires = self.rules.token_expiry(self.token)
        return expires is not None and time.time() >= expires

    def _append_refused(self, tag: bytes, parts: list[tuple[bytes, bytes | None]]) -> bool:
        """Apply the APPEND rules; True when answered here (not forwarded)."""
        body = next((lit for _, lit in reversed(parts) if lit is not None), b"")
        m = re.match(rb'\S+ APPEND ("(?:[^"\\]|\\.)*"|\S+)', parts[0][0], re.IGNORECASE)
        mailbox = m.group(1).strip(b'"').decode("ascii", "replace") if m else ""
        n = self.proxy.next_append()
        rules = self.rules
        if rules.throttle_every and n % rules.throttle_every == 0:
            self.proxy.record(self.cid, "throttled", str(rules.backoff_ms), mailbox)
            text = f"Request is throttled. Suggested Backoff Time: {rules.backoff_ms} milliseconds"
            if rules.throttle_style == "bad-bye":
                self._to_client(tag + b" BAD " + text.encode() + b"\r\n* BYE Connection closed. 14\r\n")
                self.closed.set()
            else:
                self._to_client(tag + b" NO " + text.encode() + b"\r\n")
            return True
        if rules.max_message_bytes is not None and len(body) > rules.max_message_bytes:
            self.proxy.record(self.cid, "toobig", str(len(body)))
            limit = rules.max_message_bytes // 1024
            self._to_client(
                tag
                + f" NO [TOOBIG] Message size exceeds fixed maximum message size. "
                f"Size: {len(body) // 1024} KB, Max size: {limit} KB\r\n".encode()
            )
            return True
        if rules.max_line is not None and _longest_line(body) > rules.max_line:
            self.proxy.record(self.cid, "longline", str(_longest_line(body)))
            self._to_client(tag + b" BAD Command Error. 10\r\n")
            return True
        if rules.rewrite_message_id is not None and rules.rewrite_message_id(body):
            new_body = _rewrite_mid(body)
            if new_body != body:
                self.proxy.record(self.cid, "rewritten")
                for i in range(len(parts) - 1, -1, -1):
                    line, lit = parts[i]
                    if lit is not None:
                        parts[i] = (_LITERAL.sub(f"{{{len(new_body)}}}\r\n".encode(), line), new_body)
                        break
        self.proxy.record(self.cid, "append", str(len(body)), mailbox)
        return False


def _with_literal_plus(parts: list[tuple[bytes, bytes | None]]) -> bytes:
    out = []
    for line, lit in parts:
        if lit is None:
            out.append(line)
        else:
            out.append(_LITERAL.sub(f"{{{len(lit)}+}}\r\n".encode(), line))
            out.append(lit)
    return b"".join(out)


def _longest_line(body: bytes) -> int:
    return max((len(x) for x in body.replace(b"\r\n", b"\n").split(b"\n")), default=0)


def _rewrite_mid(body: bytes) -> bytes:
    head_end = body.find(b"\r\n\r\n")
    head = body[: head_end + 2] if head_end >= 0 else body
    m = _MID.search(head)
    if not m:
        return body
    original = m.group(2)
    digest = hashlib.sha1(original).hexdigest()[:16].upper()
    new_id = f"<EXO{digest}@EX.PROD.OUTLOOK.test>".encode()
    head = head[: m.start(2)] + new_id + head[m.end(2) :]
    head = head + b"X-MS-Exchange-Parent-Message-Id: " + original + b"\r\n"
    return head + body[len(body[: head_end + 2]) :] if head_end >= 0 else head
