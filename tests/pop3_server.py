"""A small in-process POP3 server for the paths Dovecot cannot show.

Dovecot always offers UIDL, TOP, CAPA and PIPELINING and answers correctly; the
POP3 connector must also cope with servers that do not (RFC 1939 leaves UIDL and
TOP optional, CAPA came later), with odd answers and with connections cut at QUIT.
This server speaks enough POP3 for that, on 127.0.0.1 with a free port, and records
what the client sent so that tests can assert on the wire (no PASS after a refused
APOP, no command sent ahead without PIPELINING, RETR used instead of TOP, ...).

Usage::

    with FakePop3([raw1, raw2], Quirks(uidl=False)) as server:
        account = server.account()
        ...
        server.maildrop   # the messages left after the sessions' QUITs
        server.commands   # every command line received, in order

It is test code: one maildrop, one user, no TLS.
"""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from migrator.model import Account, Secret

USER = "fakeuser"
PASSWORD = "fake-Secret-77"


@dataclass(frozen=True)
class Quirks:
    """How this server deviates from Dovecot."""

    capa: bool = True  # False: CAPA answers -ERR (an RFC 1939 server)
    uidl: bool = True  # False: UIDL answers -ERR and CAPA does not list it
    top: bool = True  # False: TOP answers -ERR and CAPA does not list it
    pipelining: bool = True  # listed in CAPA
    apop: bool = False  # greeting carries an APOP timestamp; APOP is accepted
    stls: bool = False  # listed in CAPA (STLS itself is refused: no TLS here)
    greeting: str = "+OK fake POP3 server ready"
    top_refused: frozenset[int] = frozenset()  # message numbers whose TOP answers -ERR
    retr_refused: frozenset[int] = frozenset()  # message numbers whose RETR answers -ERR
    odd_reply_to: str | None = None  # a command (e.g. "LIST") answered with a line that is neither +OK nor -ERR
    drop_at_quit: bool = False  # close the connection instead of answering QUIT (nothing is deleted)
    stall_on: str | None = None  # a command that never gets an answer (timeouts)
    uidls: tuple[str, ...] | None = None  # UIDL of each message (default: "uid-<k>-<sha of bytes>")
    xoauth2_token: str | None = None  # accept AUTH XOAUTH2 with this bearer token
    add_final_crlf: bool = True  # end an unterminated last line before "." (RFC 1939; Dovecot does)


@dataclass
class _Session:
    view: list[bytes]
    uidls: list[str]
    deleted: set[int] = field(default_factory=set)
    user: str | None = None
    authed: bool = False
    sasl: bool = False  # the next line is the XOAUTH2 response


class FakePop3:
    """The server. ``maildrop``, ``commands`` and ``sent_ahead`` may be read by the
    test while no session runs."""

    host = "127.0.0.1"

    def __init__(self, messages: list[bytes], quirks: Quirks | None = None) -> None:
        """``messages``: the maildrop, in order (the k-th keeps its UIDL when others go)."""
        self.quirks = quirks or Quirks()
        uidls = self.quirks.uidls or tuple(
            f"uid-{k}-{hashlib.sha256(raw).hexdigest()[:12]}" for k, raw in enumerate(messages, 1)
        )
        self._drop: list[tuple[str, bytes]] = list(zip(uidls, messages, strict=True))
        self.commands: list[str] = []
        self.sent_ahead = 0  # commands that arrived before the previous one was answered
        self.sessions = 0
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._stamp = "<1896.697170952@fake.example>"

    @property
    def maildrop(self) -> list[bytes]:
        """The messages on the server now (after the QUITs so far)."""
        with self._lock:
            return [raw for _, raw in self._drop]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakePop3:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((self.host, 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False  # a stalled session must not hold up stop()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakePop3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def account(self, password: str = PASSWORD, **kwargs: object) -> Account:
        """A POP3 Account for this server (security "none")."""
        return Account(
            type="pop3",
            host=self.host,
            port=self.port,
            security="none",
            user=USER,
            secret=Secret(value=password),
            **kwargs,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ protocol
    def _capa(self) -> list[str]:
        caps = ["USER"]
        if self.quirks.uidl:
            caps.append("UIDL")
        if self.quirks.top:
            caps.append("TOP")
        if self.quirks.pipelining:
            caps.append("PIPELINING")
        if self.quirks.stls:
            caps.append("STLS")
        if self.quirks.xoauth2_token:
            caps.append("SASL XOAUTH2")
        return caps

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self.sessions += 1
        greeting = self.quirks.greeting + (f" {self._stamp}" if self.quirks.apop else "")
        sock.sendall(greeting.encode() + b"\r\n")
        if not greeting.startswith("+OK"):
            sock.close()
            return
        session = _Session(view=[], uidls=[])
        buf = b""
        while True:
            while b"\n" not in buf:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            command = line.rstrip(b"\r").decode("utf-8", "replace")
            ahead = bool(buf) or bool(select.select([sock], [], [], 0)[0])
            with self._lock:
                self.commands.append(command)
                if ahead:
                    self.sent_ahead += 1
            try:
                reply = self._answer(session, command)
            except _Hangup:
                sock.close()
                return
            if reply is None:
                continue  # stalled
            try:
                sock.sendall(reply)
            except OSError:
                return
            if command.upper() == "QUIT":
                sock.close()
                return

    def _answer(self, s: _Session, command: str) -> bytes | None:
        q = self.quirks
        if s.sasl:
            s.sasl = False
            return self._xoauth2_response(s, command)
        verb, _, arg = command.partition(" ")
        verb = verb.upper()
        if q.stall_on and verb == q.stall_on.upper():
            time.sleep(30)
            return None
        if q.odd_reply_to and verb == q.odd_reply_to.upper():
            return b"* this is not a POP3 answer\r\n"
        if verb == "CAPA":
            if not q.capa:
                return b"-ERR unknown command\r\n"
            return _multi(b"+OK capabilities", "".join(c + "\r\n" for c in self._capa()).encode())
        if verb == "QUIT":
            if q.drop_at_quit and s.deleted:
                raise _Hangup
            if s.authed and s.deleted:
                with self._lock:
                    gone = {s.uidls[n - 1] for n in s.deleted}
                    self._drop = [(u, raw) for u, raw in self._drop if u not in gone]
            return b"+OK bye\r\n"
        if not s.authed:
            return self._auth(s, verb, arg)
        return self._transaction(s, verb, arg)

    def _login(self, s: _Session) -> bytes:
        with self._lock:
            s.view = [raw for _, raw in self._drop]
            s.uidls = [u for u, _ in self._drop]
        s.authed = True
        return b"+OK logged in\r\n"

    def _auth(self, s: _Session, verb: str, arg: str) -> bytes:
        q = self.quirks
        if verb == "STLS":
            return b"-ERR TLS is not available here\r\n"
        if verb == "USER":
            s.user = arg
            return b"+OK\r\n"
        if verb == "PASS":
            if s.user == USER and arg == PASSWORD:
                return self._login(s)
            return b"-ERR [AUTH] Authentication failed.\r\n"
        if verb == "APOP" and q.apop:
            user, _, digest = arg.partition(" ")
            want = hashlib.md5((self._stamp + PASSWORD).encode(), usedforsecurity=False).hexdigest()
            if user == USER and digest == want:
                return self._login(s)
            return b"-ERR [AUTH] APOP authentication failed.\r\n"
        if verb == "AUTH" and arg.upper() == "XOAUTH2" and q.xoauth2_token:
            s.sasl = True
            return b"+ \r\n"
        return b"-ERR not authenticated\r\n"

    def _xoauth2_response(self, s: _Session, line: str) -> bytes:
        try:
            decoded = base64.b64decode(line, validate=True).decode()
        except ValueError:
            return b"-ERR bad base64\r\n"
        if decoded == f"user={USER}\x01auth=Bearer {self.quirks.xoauth2_token}\x01\x01":
            return self._login(s)
        return b"-ERR [AUTH] invalid token\r\n"

    def _number(self, s: _Session, arg: str) -> int | None:
        try:
            n = int(arg.split()[0])
        except (ValueError, IndexError):
            return None
        return n if 1 <= n <= len(s.view) and n not in s.deleted else None

    def _transaction(self, s: _Session, verb: str, arg: str) -> bytes:
        q = self.quirks
        live = [n for n in range(1, len(s.view) + 1) if n not in s.deleted]
        if verb == "STAT":
            return f"+OK {len(live)} {sum(len(s.view[n - 1]) for n in live)}\r\n".encode()
        if verb == "NOOP":
            return b"+OK\r\n"
        if verb == "LIST":
            return _multi(b"+OK", "".join(f"{n} {len(s.view[n - 1])}\r\n" for n in live).encode())
        if verb == "UIDL":
            if not q.uidl:
                return b"-ERR unknown command\r\n"
            return _multi(b"+OK", "".join(f"{n} {s.uidls[n - 1]}\r\n" for n in live).encode())
        n = self._number(s, arg)
        if verb in ("RETR", "TOP", "DELE") and n is None:
            return b"-ERR no such message\r\n"
        assert n is not None or verb not in ("RETR", "TOP", "DELE")
        if verb == "RETR" and n is not None:
            if n in q.retr_refused:
                return b"-ERR [SYS/PERM] cannot read this message\r\n"
            return _multi(b"+OK message follows", _wire(s.view[n - 1], q.add_final_crlf))
        if verb == "TOP" and n is not None:
            if not q.top or n in q.top_refused:
                return b"-ERR TOP not available\r\n"
            lines = int(arg.split()[1]) if len(arg.split()) > 1 else 0
            return _multi(b"+OK top follows", _wire(_top(s.view[n - 1], lines), True))
        if verb == "DELE" and n is not None:
            s.deleted.add(n)
            return b"+OK deleted\r\n"
        if verb == "RSET":
            s.deleted.clear()
            return b"+OK\r\n"
        return b"-ERR unknown command\r\n"


class _Hangup(Exception):
    """Close the connection without answering."""


def _lines(raw: bytes) -> Iterator[bytes]:
    """Lines of ``raw`` with their LF kept (a last line without LF as it is)."""
    start = 0
    while start < len(raw):
        end = raw.find(b"\n", start)
        if end < 0:
            yield raw[start:]
            return
        yield raw[start : end + 1]
        start = end + 1


def _wire(raw: bytes, add_final_crlf: bool) -> bytes:
    """``raw`` dot-stuffed, its last line ended, ready to be followed by "."."""
    out = b"".join(b"." + line if line.startswith(b".") else line for line in _lines(raw))
    if add_final_crlf and out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def _multi(status: bytes, body: bytes) -> bytes:
    return status + b"\r\n" + body + b".\r\n"


def _top(raw: bytes, lines: int) -> bytes:
    """The header block (with its empty line) and ``lines`` body lines."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    head, body = raw[: end + 4], raw[end + 4 :]
    return head + b"".join(list(_lines(body))[:lines])
