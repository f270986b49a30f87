"""A local HTTPS OAuth2 token endpoint shaped like the Microsoft identity platform.

Enough of it for msal (pointed at ``authority = https://127.0.0.1:<port>/<tenant>``
with ``validate_authority: false``) and for Dovecot's oauth2 passdb:

* ``GET /<tenant>/v2.0/.well-known/openid-configuration``: the discovery document;
* ``POST /<tenant>/oauth2/v2.0/token``: grants ``client_credentials``,
  ``urn:ietf:params:oauth:grant-type:device_code`` and ``refresh_token``;
* ``POST /<tenant>/oauth2/v2.0/devicecode``: starts a device flow, approved after
  ``device_polls`` polls (the "user" signs in by itself);
* ``POST /introspect`` (``token=...``, RFC 7662 style): ``{"active": true,
  "username": ...}`` while the token lives, ``{"active": false}`` after. Dovecot's
  oauth2 passdb asks it on every XOAUTH2 login.

Access tokens look like JWTs (three base64url parts, ``eyJ...``) and live
``lifetime`` seconds (20 in the tests, so refreshes happen mid-run). App tokens of
tenant T introspect as user ``app@<domain of T>``; Dovecot is configured to compare
only the domain part, which models "the app was granted this tenant's mailboxes".

The TLS certificate is the caller's (the tests reuse the Dovecot fixture's
self-signed one); clients trust it through ``REQUESTS_CA_BUNDLE`` (msal uses
requests) and Dovecot through ``tls_ca_cert_file``.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt(claims: dict[str, object]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "none"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(secrets.token_bytes(16))}"


@dataclass(slots=True)
class Issued:
    token: str
    client_id: str
    username: str
    scope: str
    issued: float
    expires: float
    grant: str


@dataclass(slots=True)
class _Device:
    client_id: str
    scope: str
    polls: int = 0


@dataclass(slots=True)
class TokenServerState:
    """What the server knows; every mutation happens under ``lock``."""

    lifetime: float
    clients: dict[str, str]  # client_id -> secret ("" for public clients)
    tenant_domains: dict[str, str]  # tenant -> mail domain of its app tokens
    device_user: str
    device_polls: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: list[Issued] = field(default_factory=list)
    devices: dict[str, _Device] = field(default_factory=dict)
    refresh: dict[str, tuple[str, str]] = field(default_factory=dict)  # refresh token -> (client, scope)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    introspections: list[tuple[float, bool]] = field(default_factory=list)  # (when, active)


class TokenServer:
    """Start with ``start()``, stop with ``stop()`` (idempotent). Thread-safe."""

    host = "127.0.0.1"

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        lifetime: float = 20.0,
        clients: dict[str, str] | None = None,
        tenant_domains: dict[str, str] | None = None,
        device_user: str = "admin@contoso.test",
        device_polls: int = 1,
    ) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.state = TokenServerState(
            lifetime=lifetime,
            clients=dict(clients or {}),
            tenant_domains=dict(tenant_domains or {}),
            device_user=device_user,
            device_polls=device_polls,
        )
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def authority(self, tenant: str) -> str:
        return f"{self.url}/{tenant}"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def start(self) -> TokenServer:
        state = self.state

        class Handler(_Handler):
            server_state = state

        httpd = ThreadingHTTPServer((self.host, 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def issued(self) -> list[Issued]:
        with self.state.lock:
            return list(self.state.issued)

    def lookup(self, token: str) -> Issued | None:
        with self.state.lock:
            return next((i for i in self.state.issued if i.token == token), None)

    def set_lifetime(self, seconds: float) -> None:
        with self.state.lock:
            self.state.lifetime = seconds


class _Handler(BaseHTTPRequestHandler):
    server_state: TokenServerState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: tokens travel in bodies
        return

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8") if length else ""
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _tenant_and_rest(self) -> tuple[str, str]:
        path = urlsplit(self.path).path.strip("/")
        tenant, _, rest = path.partition("/")
        return tenant, rest

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"https://{host}:{port}"

    # ------------------------------------------------------------------ GET
    def do_GET(self) -> None:
        st = self.server_state
        with st.lock:
            st.requests.append(("GET", urlsplit(self.path).path))
        tenant, rest = self._tenant_and_rest()
        if rest == "v2.0/.well-known/openid-configuration":
            base = f"{self._base()}/{tenant}"
            self._send(
                200,
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "response_types_supported": ["code", "token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
            return
        self._send(404, {"error": "not_found"})

    # ------------------------------------------------------------------ POST
    def do_POST(self) -> None:
        st = self.server_state
        path = urlsplit(self.path).path
        with st.lock:
            st.requests.append(("POST", path))
        form = self._form()
        if path == "/introspect":
            self._introspect(form)
            return
        tenant, rest = self._tenant_and_rest()
        if rest == "oauth2/v2.0/devicecode":
            self._devicecode(tenant, form)
        elif rest == "oauth2/v2.0/token":
            self._token(tenant, form)
        else:
            self._send(404, {"error": "not_found"})

    def _introspect(self, form: dict[str, str]) -> None:
        st = self.server_state
        token = form.get("token", "")
        now = time.time()
        with st.lock:
            hit = next((i for i in st.issued if i.token == token), None)
            active = hit is not None and hit.expires > now
            st.introspections.append((now, active))
        if not active or hit is None:
            self._send(200, {"active": False})
            return
        self._send(200, {"active": True, "username": hit.username, "scope": hit.scope, "exp": int(hit.expires)})

    def _devicecode(self, tenant: str, form: dict[str, str]) -> None:
        st = self.server_state
        client = form.get("client_id", "")
        if client not in st.clients:
            self._send(400, {"error": "unauthorized_client", "error_description": "unknown client"})
            return
        code = secrets.token_urlsafe(24)
        user_code = secrets.token_hex(4).upper()
        with st.lock:
            st.devices[code] = _Device(client, form.get("scope", ""))
        self._send(
            200,
            {
                "device_code": code,
                "user_code": user_code,
                "verification_uri": f"{self._base()}/devicelogin",
                "expires_in": 900,
                "interval": 0,
                "message": f"To sign in, open {self._base()}/devicelogin and enter the code {user_code}.",
            },
        )

    def _token(self, tenant: str, form: dict[str, str]) -> None:
        st = self.server_state
        grant = form.get("grant_type", "")
        client = form.get("client_id", "")
        scope = form.get("scope", "")
        if client not in st.clients:
            self._send(400, {"error": "invalid_client", "error_description": "AADSTS700016: unknown application"})
            return
        if grant == "client_credentials":
            if not st.clients[client] or form.get("client_secret") != st.clients[client]:
                self._send(401, {"error": "invalid_client", "error_description": "AADSTS7000215: invalid secret"})
                return
            domain = st.tenant_domains.get(tenant, f"{tenant}.test")
            self._issue(tenant, client, f"app@{domain}", scope, grant, refresh=False)
            return
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            code = form.get("device_code", "")
            with st.lock:
                dev = st.devices.get(code)
                if dev is not None:
                    dev.polls += 1
                    ready = dev.polls > st.device_polls
                    if ready:
                        del st.devices[code]
            if dev is None:
                self._send(400, {"error": "expired_token", "error_description": "unknown device code"})
            elif not ready:
                self._send(400, {"error": "authorization_pending", "error_description": "waiting for the user"})
            else:
                self._issue(tenant, client, st.device_user, dev.scope, grant, refresh=True)
            return
        if grant == "refresh_token":
            with st.lock:
                known = st.refresh.pop(form.get("refresh_token", ""), None)
            if known is None or known[0] != client:
                self._send(400, {"error": "invalid_grant", "error_description": "AADSTS70008: refresh token expired"})
                return
            self._issue(tenant, client, st.device_user, scope or known[1], grant, refresh=True)
            return
        self._send(400, {"error": "unsupported_grant_type"})

    def _issue(self, tenant: str, client: str, username: str, scope: str, grant: str, *, refresh: bool) -> None:
        st = self.server_state
        now = time.time()
        with st.lock:
            lifetime = st.lifetime
        claims = {"aud": "https://outlook.office365.com", "tid": tenant, "upn": username, "scp": scope}
        token = _jwt({**claims, "iat": int(now), "exp": int(now + lifetime), "jti": secrets.token_hex(8)})
        body: dict[str, object] = {
            "token_type": "Bearer",
            "expires_in": int(lifetime),
            "ext_expires_in": int(lifetime),
            "access_token": token,
            "scope": scope,
        }
        with st.lock:
            st.issued.append(Issued(token, client, username, scope, now, now + lifetime, grant))
        if refresh:
            rt = "rt-" + secrets.token_urlsafe(32)
            with st.lock:
                st.refresh[rt] = (client, scope)
            uid, utid = "00000000-0000-0000-0000-000000000001", tenant
            body["refresh_token"] = rt
            body["client_info"] = _b64(json.dumps({"uid": uid, "utid": utid}).encode())
            body["id_token"] = _jwt(
                {
                    "iss": f"{self._base()}/{tenant}/v2.0",
                    "aud": client,
                    "sub": uid,
                    "oid": uid,
                    "tid": utid,
                    "preferred_username": username,
                    "iat": int(now),
                    "exp": int(now + 3600),
                }
            )
        self._send(200, body)
