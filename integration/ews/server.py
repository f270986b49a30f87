"""An in-process EWS server for tests: threaded HTTP on 127.0.0.1, a random port,
SOAP validated against Microsoft's schemas, mailboxes in memory, faults on demand.

Usage::

    with EwsServer() as server:
        server.store.add_mailbox("alice@example.org", "pw")
        account = server.account("alice@example.org")     # a migrator Account, type "ews"
        ...
        server.assert_clean()   # every request and response validated, back-offs obeyed

Authentication: HTTP Basic (login + password from the store), OAuth2 bearer tokens
(``store.add_impersonator(app, token=...)``) and NTLM when ``ntlm_users`` is set:
pyspnego's NTLM acceptor checks the NTLMv2 answer against the credentials in the file
NTLM_USER_FILE names (``DOMAIN:user:password`` lines; the environment variable is the
caller's to set), and, as IIS does, the TCP connection stays authenticated. The login
is then ``DOMAIN\\user``. Anything else gets 401.

Faults (``server.faults``): ErrorServerBusy with BackOffMilliseconds on every n-th
CreateItem (as a SOAP fault for the whole request, or for one item of the batch while
the others are stored), one-shot HTTP statuses (503, 401), a connection dropped before
the request is processed or in the middle of the response after it was processed, a
per-item error for messages carrying ``X-Test-EWS-Reject: <ResponseCode>``, a size
limit (ErrorMessageSizeExceeded) and mailbox quotas (ErrorQuotaExceeded).

Everything is recorded: ``exchanges`` (one row per HTTP request), ``validation_errors``
(schema problems of requests and responses), ``backoff_waits`` (how long the client
waited after each ErrorServerBusy, against what it was asked).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from lxml import etree

from integration.ews import ops
from integration.ews.soap import SchemaValidator, envelope, fault, local, s, t, to_bytes
from integration.ews.store import Store
from migrator.model import Account, Secret

PATH = "/EWS/Exchange.asmx"
REJECT_HEADER = b"X-Test-EWS-Reject:"
BACKOFF_TOLERANCE = 0.01  # seconds: the client starts waiting when it reads the answer


@dataclass
class OneShot:
    """A fault for the next matching request (after ``skip`` matching ones passed)."""

    action: Literal["http", "drop_before", "drop_after", "busy"]
    op: str = "*"
    status: int = 503
    retry_after: int | None = None
    back_off_ms: int = 100
    skip: int = 0
    fired_at: float | None = None


@dataclass
class Faults:
    busy_every: int = 0  # every n-th CreateItem request is throttled (0: never)
    busy_mode: Literal["item", "fault"] = "item"
    busy_backoff_ms: int = 200
    busy_limit: int | None = None  # at most this many throttled requests (None: no limit)
    max_item_bytes: int | None = None  # ErrorMessageSizeExceeded above this MIME size
    oneshots: list[OneShot] = field(default_factory=list)
    delay: dict[str, float] = field(default_factory=dict)  # operation -> seconds to sleep before answering


@dataclass
class Exchange:
    op: str
    login: str
    mailbox: str
    started: float
    ended: float = 0.0
    http_status: int = 200
    codes: list[str] = field(default_factory=list)
    fault: str | None = None
    sync_state_sent: str | None = None  # SyncFolderItems: the SyncState the client sent
    folder: str | None = None  # SyncFolderItems, CreateItem, FindItem: the folder id acted on
    items: int = 0  # CreateItem: items in the request
    dropped: bool = False
    client: str = ""  # login and client port: one TCP connection


@dataclass
class BackoffWait:
    client: str
    asked: float
    waited: float | None = None  # None: no request came afterwards

    @property
    def obeyed(self) -> bool:
        return self.waited is None or self.waited + BACKOFF_TOLERANCE >= self.asked


class EwsServer:
    def __init__(self, validator: SchemaValidator | None = None, version: str = "Exchange2016"):
        self.validator = validator or SchemaValidator()
        self.store = Store()
        self.faults = Faults()
        self.version = version
        self.exchanges: list[Exchange] = []
        self.validation_errors: list[str] = []
        self.backoff_waits: list[BackoffWait] = []
        self._pending_backoff: dict[str, tuple[float, BackoffWait]] = {}
        self._lock = threading.Lock()
        self._create_count = 0
        self._busy_sent = 0
        self._orders = {
            name: {c: i for i, c in enumerate(self._sequence(name))} for name in ("MessageType", "FolderType")
        }
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.ntlm = False  # offer and accept NTLM (see the module docstring)

    def _sequence(self, type_name: str) -> list[str]:
        xsd_type = self.validator.schema.maps.types[f"{{{ops.T}}}{type_name}"]
        return [e.local_name for e in xsd_type.content.iter_elements()]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EwsServer:
        server = self

        class Handler(_Handler):
            ews = server

        self._httpd = _HttpServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            with self._lock:
                for c in list(self._conns):
                    with contextlib.suppress(OSError):
                        c.shutdown(socket.SHUT_RDWR)
            self._httpd = None

    def __enter__(self) -> EwsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    # ------------------------------------------------------------------ helpers for tests
    def account(self, smtp: str, password: str = "pw", **options: Any) -> Account:
        """A migrator Account (type "ews") for ``smtp`` on this server: explicit endpoint,
        Exchange2016, basic auth, unless ``options`` say otherwise (an option set to None
        is left out)."""
        opts: dict[str, Any] = {"service_endpoint": self.url, "version": self.version, "auth": "basic"}
        opts.update(options)
        return Account(
            type="ews",
            host="127.0.0.1",
            port=self.port,
            security="none",
            user=smtp,
            secret=Secret(value=password),
            options={k: v for k, v in opts.items() if v is not None},
            timeout=20.0,
        )

    def ops_named(self, op: str) -> list[Exchange]:
        with self._lock:
            return [x for x in self.exchanges if x.op == op]

    def problems(self) -> list[str]:
        """Schema problems and disobeyed back-offs (empty when all is well)."""
        with self._lock:
            out = list(self.validation_errors)
            out += [
                f"{w.client} sent its next request {w.waited:.3f}s after ErrorServerBusy asking for {w.asked:.3f}s"
                for w in self.backoff_waits
                if not w.obeyed
            ]
        return out

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "EWS test server problems:\n" + "\n".join(problems[:30])

    # ------------------------------------------------------------------ request handling
    def _record_backoff(self, client: str, ended: float, seconds: float) -> None:
        with self._lock:
            w = BackoffWait(client, seconds)
            self.backoff_waits.append(w)
            self._pending_backoff[client] = (ended, w)

    def _note_request(self, client: str, started: float) -> None:
        with self._lock:
            pending = self._pending_backoff.pop(client, None)
        if pending is not None:
            ended, w = pending
            w.waited = started - ended

    def _oneshot(self, op: str) -> OneShot | None:
        with self._lock:
            for f in self.faults.oneshots:
                if f.fired_at is None and f.op in ("*", op):
                    if f.skip > 0:
                        f.skip -= 1
                        continue
                    f.fired_at = time.monotonic()
                    return f
        return None

    def handle(self, handler: _Handler, login: str, body: bytes) -> None:
        started = time.monotonic()
        # back-offs are owed per connection (Exchange asks the client to wait before it
        # retries; other connections of the same login get their own answers)
        client = f"{login} from port {handler.client_address[1]}"
        self._note_request(client, started)
        try:
            root = etree.fromstring(body)
        except etree.XMLSyntaxError as exc:
            self._invalid(handler, login, started, f"request is not XML: {exc}")
            return
        header = root.find(s("Header"))
        soap_body = root.find(s("Body"))
        if root.tag != s("Envelope") or soap_body is None or len(soap_body) != 1:
            self._invalid(handler, login, started, "request is not a SOAP envelope with one body element")
            return
        req = soap_body[0]
        op_name = local(req.tag)
        to_check = [req] + (list(header) if header is not None else [])
        problems = self.validator.problems(to_check)
        ex = Exchange(op_name, login, "", started, client=client)
        with self._lock:
            self.exchanges.append(ex)
        if problems:
            with self._lock:
                self.validation_errors.extend(f"request {op_name}: {p}" for p in problems)
            self._send_fault(handler, ex, ops.SoapFault("ErrorSchemaValidation", "; ".join(problems)[:500]))
            return
        version = "Exchange2007_SP1"
        impersonate: str | None = None
        if header is not None:
            rsv = header.find(t("RequestServerVersion"))
            if rsv is not None:
                version = rsv.get("Version", version)
            imp = header.find(f"{t('ExchangeImpersonation')}/{t('ConnectingSID')}")
            if imp is not None and len(imp):
                impersonate = (imp[0].text or "").strip().lower()
        if op_name == "SyncFolderItems":
            ex.sync_state_sent = req.findtext(f"{{{ops.M}}}SyncState") or ""
        target = req.find(f".//{t('FolderId')}")
        if target is not None:
            ex.folder = target.get("Id")
        if op_name == "CreateItem":
            items = req.find(f"{{{ops.M}}}Items")
            ex.items = len(items) if items is not None else 0
        try:
            mailbox = self._target(login, impersonate)
        except ops.SoapFault as exc:
            self._send_fault(handler, ex, exc)
            return
        ex.mailbox = mailbox.smtp
        shot = self._oneshot(op_name)
        if shot is not None and shot.action != "drop_after":
            self._apply_shot(handler, ex, shot)
            return
        hook = None
        if op_name == "CreateItem":
            with self._lock:
                self._create_count += 1
                nth = self._create_count
            every, limit = self.faults.busy_every, self.faults.busy_limit
            if every and nth % every == 0 and (limit is None or self._busy_sent < limit):
                with self._lock:
                    self._busy_sent += 1
                if self.faults.busy_mode == "fault":
                    self._send_fault(
                        handler,
                        ex,
                        ops.SoapFault(
                            "ErrorServerBusy",
                            "The server cannot service this request right now. Try again later.",
                            self.faults.busy_backoff_ms,
                        ),
                    )
                    return
                victim = ex.items // 2
                hook = self._item_hook(victim)
            else:
                hook = self._item_hook(None)
        op = ops.Op(
            store=self.store,
            login=login,
            mailbox=mailbox,
            version=version,
            now=lambda: datetime.now(UTC),
            orders=self._orders,
            item_hook=hook,
        )
        pause = self.faults.delay.get(op_name)
        if pause:
            time.sleep(pause)
        handler_fn = ops.HANDLERS.get(op_name)
        try:
            if handler_fn is None:
                raise ops.SoapFault("ErrorInvalidRequest", f"the test server does not implement {op_name}")
            with self.store.lock:
                resp = handler_fn(op, req)
        except ops.SoapFault as exc:
            self._send_fault(handler, ex, exc)
            return
        ex.codes = op.codes
        env = envelope(resp, version)
        problems = self.validator.problems([resp, *env.find(s("Header"))])
        if problems:
            with self._lock:
                self.validation_errors.extend(f"response {op_name}: {p}" for p in problems)
        payload = to_bytes(env)
        if shot is not None:  # drop_after: processed, now the answer breaks off
            ex.dropped = True
            handler.send_partial(payload)
            ex.ended = time.monotonic()
            return
        handler.send_xml(200, payload)
        ex.ended = time.monotonic()
        busy = [c for c in op.codes if c == "ErrorServerBusy"]
        if busy:
            self._record_backoff(client, ex.ended, self.faults.busy_backoff_ms / 1000)

    def _item_hook(self, victim: int | None) -> Any:
        faults = self.faults

        def hook(index: int, raw: bytes) -> ops.ItemOutcome | None:
            if victim is not None and index == victim:
                return ops.ItemOutcome("ErrorServerBusy", faults.busy_backoff_ms)
            marker = raw.find(REJECT_HEADER)
            head_end = raw.find(b"\r\n\r\n")
            if marker >= 0 and (head_end < 0 or marker < head_end):
                code = raw[marker + len(REJECT_HEADER) :].split(b"\r\n", 1)[0].strip().decode()
                return ops.ItemOutcome(code)
            if faults.max_item_bytes is not None and len(raw) > faults.max_item_bytes:
                return ops.ItemOutcome("ErrorMessageSizeExceeded")
            return None

        return hook

    def _target(self, login: str, impersonate: str | None) -> Any:
        store = self.store
        if impersonate is not None:
            if login not in store.impersonators:
                raise ops.SoapFault("ErrorImpersonateUserDenied", f"{login} may not impersonate {impersonate}")
            mbx = store.mailbox(impersonate)
            if mbx is None:
                raise ops.SoapFault("ErrorNonExistentMailbox", f"no mailbox {impersonate}")
            return mbx
        own = store.login_mailbox.get(login)
        mbx = store.mailbox(own) if own else None
        if mbx is None:
            raise ops.SoapFault("ErrorNonExistentMailbox", f"{login} has no mailbox")
        return mbx

    def _apply_shot(self, handler: _Handler, ex: Exchange, shot: OneShot) -> None:
        if shot.action == "http":
            ex.http_status = shot.status
            headers = {"Retry-After": str(shot.retry_after)} if shot.retry_after else {}
            if shot.status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="ews"'
            handler.send_plain(shot.status, f"injected HTTP {shot.status}".encode(), headers)
        elif shot.action == "drop_before":
            ex.dropped = True
            handler.drop()
        elif shot.action == "busy":
            self._send_fault(handler, ex, ops.SoapFault("ErrorServerBusy", "The server is busy.", shot.back_off_ms))
            return
        ex.ended = time.monotonic()

    def _send_fault(self, handler: _Handler, ex: Exchange, exc: ops.SoapFault) -> None:
        ex.fault = exc.code
        ex.http_status = 500
        env = fault(exc.code, exc.message, exc.back_off_ms, faultcode=f"a:{exc.code}")
        handler.send_xml(500, to_bytes(env))
        ex.ended = time.monotonic()
        if exc.code == "ErrorServerBusy" and exc.back_off_ms is not None:
            self._record_backoff(ex.client, ex.ended, exc.back_off_ms / 1000)

    def _invalid(self, handler: _Handler, login: str, started: float, problem: str) -> None:
        with self._lock:
            self.validation_errors.append(problem)
            self.exchanges.append(Exchange("?", login, "", started, time.monotonic(), 400))
        handler.send_plain(400, problem.encode(), {})


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is not an error of the server."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    ews: EwsServer

    def setup(self) -> None:
        super().setup()
        with self.ews._lock:
            self.ews._conns.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.ews._lock:
            self.ews._conns.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    ntlm_login: str | None = None  # this connection passed an NTLM handshake as ...
    _ntlm: Any = None  # a handshake in progress on this connection

    def _ntlm_step(self, token: str) -> str | None:
        """One NTLM leg: None when the client must send another message (the 401 with
        the challenge has been sent), else the login."""
        import spnego
        from spnego.exceptions import SpnegoError

        if self._ntlm is None:
            self._ntlm = spnego.server(protocol="ntlm")
        try:
            out = self._ntlm.step(base64.b64decode(token))
        except (SpnegoError, ValueError):
            self._ntlm = None
            self.send_plain(401, b"unauthorized", {"WWW-Authenticate": "NTLM"})
            return None
        if not self._ntlm.complete:
            challenge = "NTLM " + base64.b64encode(out or b"").decode()
            self.send_plain(401, b"unauthorized", {"WWW-Authenticate": challenge})
            return None
        self.ntlm_login = str(self._ntlm.client_principal)
        self._ntlm = None
        return self.ntlm_login

    def _login(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        store = self.ews.store
        if not auth and self.ntlm_login is not None:
            return self.ntlm_login
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user if store.passwords.get(user) == password else None
        if scheme.lower() == "bearer":
            return store.tokens.get(value.strip())
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path.split("?")[0].lower() != PATH.lower():
            self.send_plain(404, b"not found", {})
            return
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "ntlm" and self.ews.ntlm:
            login = self._ntlm_step(token.strip())
            if login is None:
                return  # the challenge (or a refusal) was sent
        else:
            login = self._login()
        if login is None:
            offer = 'Basic realm="ews"' if not self.ews.ntlm else "NTLM"
            self.send_plain(401, b"unauthorized", {"WWW-Authenticate": offer})
            return
        self.ews.handle(self, login, body)

    def do_GET(self) -> None:
        self.send_plain(405, b"POST only", {})

    def send_plain(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_xml(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_partial(self, body: bytes) -> None:
        """Headers announcing the whole body, half of it, then the connection drops."""
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.drop()

    def drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
