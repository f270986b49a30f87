"""OAuth2 tokens (migrator.auth) against a local HTTPS token endpoint (integration/tokenserver.py).

msal talks to the endpoint for real (discovery, token, device code, refresh); only the
provider's clock is moved by hand to test refresh-before-expiry without waiting.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.dovecot import free_ports, make_certificate
from integration.tokenserver import TokenServer
from migrator.auth import (
    IMAP_SCOPE,
    TokenProvider,
    TokenProviders,
    access_token,
    default_scopes,
    jwt_expiry,
    mask,
    xoauth2,
)
from migrator.errors import AuthError, ConnectError, is_retryable
from migrator.model import Account, OAuth, Secret

SECRET = "s3cr3t-Cl1ent-Value"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tokcert"))


@pytest.fixture
def server(certs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs[0]))
    with TokenServer(*certs, lifetime=20, clients={"app-1": SECRET, "public-1": ""}) as srv:
        yield srv


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def cc(server: TokenServer, secret: str = SECRET) -> OAuth:
    return OAuth(
        flow="client_credentials",
        tenant="contoso",
        client_id="app-1",
        client_secret=Secret(value=secret),
        authority=server.authority("contoso"),
        validate_authority=False,
    )


def test_xoauth2_and_mask() -> None:
    assert xoauth2("a@b.test", "TOK") == "user=a@b.test\x01auth=Bearer TOK\x01\x01"
    jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"
    assert mask(f"login failed for {jwt} and pw hunter2", "hunter2") == "login failed for *** and pw ***"


@pytest.mark.parametrize(
    ("flow", "kind", "expected"),
    [
        ("client_credentials", "imap", (IMAP_SCOPE,)),
        ("client_credentials", "pop3", (IMAP_SCOPE,)),
        ("client_credentials", "exchange-online", (IMAP_SCOPE,)),
        ("device_code", "imap", ("https://outlook.office365.com/IMAP.AccessAsUser.All",)),
        ("device_code", "exchange-online", ("https://outlook.office365.com/IMAP.AccessAsUser.All",)),
        ("device_code", "pop3", ("https://outlook.office365.com/POP.AccessAsUser.All",)),
        ("device_code", "ews", ("https://outlook.office365.com/EWS.AccessAsUser.All",)),
    ],
)
def test_default_scopes(flow: str, kind: str, expected: tuple[str, ...]) -> None:
    oauth = OAuth(flow=flow, tenant="t", client_id="c")  # type: ignore[arg-type]
    assert default_scopes(oauth, kind) == expected
    assert default_scopes(OAuth(flow=flow, scopes=("x",)), kind) == ("x",)  # type: ignore[arg-type]


def test_token_file_is_read_again_on_every_call(tmp_path: Path) -> None:
    path = tmp_path / "token.txt"
    path.write_text("first-token\n")
    account = Account(type="imap", host="h", user="u", oauth=OAuth(flow="token_file", token_file=str(path)))
    providers = TokenProviders()
    assert access_token(account, providers=providers) == "first-token"
    path.write_text('{"access_token": "second-token", "expires_in": 3599}')
    assert access_token(account, providers=providers) == "second-token"
    path.write_text("   \n")
    with pytest.raises(AuthError, match="no access token"):
        access_token(account, providers=providers)
    path.unlink()
    with pytest.raises(AuthError, match="cannot read") as err:
        access_token(account, providers=providers)
    assert not is_retryable(err.value)


def test_client_credentials_cached_then_refreshed_before_expiry(server: TokenServer) -> None:
    import time

    clock = Clock(time.time())
    provider = TokenProvider(cc(server), (IMAP_SCOPE,), clock=clock)
    first = provider.token()
    assert first.startswith("eyJ")
    issued = server.lookup(first)
    assert issued is not None and issued.client_id == "app-1" and issued.scope == IMAP_SCOPE
    assert issued.username == "app@contoso.test"
    clock.now += 10  # 10 of 20 s left: still used
    assert provider.token() == first
    assert provider.fetches == 1
    clock.now += 6.5  # 3.5 s left < 20 % of 20 s: refreshed before it expires
    second = provider.token()
    assert second != first and provider.fetches == 2
    assert len([i for i in server.issued() if i.grant == "client_credentials"]) == 2


def test_one_fetch_for_many_threads(server: TokenServer) -> None:
    provider = TokenProviders().get(cc(server), (IMAP_SCOPE,))
    got: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        token = provider.token()
        with lock:
            got.append(token)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 8 and len(set(got)) == 1
    assert provider.fetches == 1


def test_providers_are_shared_per_settings(server: TokenServer) -> None:
    providers = TokenProviders()
    a = Account(type="exchange-online", host="h", user="a@contoso.test", oauth=cc(server))
    b = Account(type="exchange-online", host="h", user="b@contoso.test", oauth=cc(server))
    assert access_token(a, providers=providers) == access_token(b, providers=providers)
    assert len(server.issued()) == 1


def test_wrong_secret_is_an_auth_error_without_the_secret(server: TokenServer) -> None:
    account = Account(type="imap", host="h", user="u", oauth=cc(server, secret="wrong-" + SECRET))
    with pytest.raises(AuthError) as err:
        access_token(account, providers=TokenProviders())
    text = str(err.value)
    assert "invalid_client" in text and "AADSTS7000215" in text
    assert SECRET not in text and not is_retryable(err.value)


def test_unreachable_endpoint_is_retryable(certs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs[0]))
    (port,) = free_ports(1)
    oauth = OAuth(
        flow="client_credentials",
        client_id="app-1",
        client_secret=Secret(value=SECRET),
        authority=f"https://127.0.0.1:{port}/contoso",
        validate_authority=False,
    )
    with pytest.raises(ConnectError) as err:
        access_token(Account(type="imap", host="h", user="u", oauth=oauth), providers=TokenProviders())
    assert is_retryable(err.value) and SECRET not in str(err.value)


def test_device_code_prompts_once_then_refreshes_from_the_cache(
    server: TokenServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "state" / "msal-cache.json"
    oauth = OAuth(
        flow="device_code",
        tenant="contoso",
        client_id="public-1",
        authority=server.authority("contoso"),
        cache_file=str(cache),
        validate_authority=False,
    )
    account = Account(type="exchange-online", host="h", user="admin@contoso.test", oauth=oauth)
    token = access_token(account, providers=TokenProviders())
    err = capsys.readouterr().err
    assert "enter the code" in err and token not in err
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    devicecode_calls = [p for m, p in server.state.requests if p.endswith("/devicecode")]
    assert len(devicecode_calls) == 1
    # A later run (new providers, same cache file): no prompt, the refresh token is used.
    again = access_token(account, providers=TokenProviders())
    assert capsys.readouterr().err == ""
    assert len([p for m, p in server.state.requests if p.endswith("/devicecode")]) == 1
    issued = server.lookup(again)
    assert issued is not None and issued.username == "admin@contoso.test"
    assert issued.scope.split()[0] == "https://outlook.office365.com/IMAP.AccessAsUser.All"


def test_no_secret_in_reprs(server: TokenServer) -> None:
    provider = TokenProvider(cc(server), (IMAP_SCOPE,))
    token = provider.token()
    assert token not in repr(provider)
    assert SECRET not in repr(provider) and SECRET not in repr(cc(server))


def test_leases_know_when_tokens_expire(server: TokenServer, tmp_path: Path) -> None:
    import time

    lease = TokenProvider(cc(server), (IMAP_SCOPE,)).lease()
    issued = server.lookup(lease.value)
    assert issued is not None and lease.expires == pytest.approx(issued.expires, abs=2)
    claimed = jwt_expiry(lease.value)  # never later than the token itself says (expires_in is rounded)
    assert claimed is not None and lease.expires <= claimed
    assert lease.fresh(time.time()) and not lease.fresh(lease.expires - 3)  # under 20 % of 20 s left
    assert lease.value not in repr(lease)
    path = tmp_path / "token"
    path.write_text(lease.value)
    file_lease = TokenProvider(OAuth(flow="token_file", token_file=str(path)), ()).lease()
    assert file_lease.expires == pytest.approx(issued.expires, abs=1)  # the JWT's exp claim
    path.write_text("opaque-token")
    opaque = TokenProvider(OAuth(flow="token_file", token_file=str(path)), ()).lease()
    assert opaque.expires is None and opaque.fresh(time.time() + 10**6)
    assert jwt_expiry("a.b") is None and jwt_expiry("x.eyJleHAiOiAxMH0.y") == 10.0
