"""Fixtures starting private Dovecot servers for the integration tests.

``dovecot`` (slash layout: prefix "", separator "/") and ``dovecot_courier``
(prefix "INBOX.", separator ".") live for the whole session; ``new_user`` hands out
fresh user names so that no two tests share a mailbox::

    def test_x(dovecot, new_user):
        user = new_user()                    # on ``dovecot``
        other = new_user(dovecot_courier)    # on another server
        store = open_imap(dovecot.account(user), "destination")
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.containers import Backend, choose_backend, start_dovecot
from integration.dovecot import DOVECOT, DovecotServer

NewUser = Callable[..., str]


def _tmp_parent() -> str | None:
    """tmpfs when there is one: faster and steadier than disk on shared machines."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def pytest_report_header(config: pytest.Config) -> str:
    """Which servers the integration tests use: containers (docker-py) or local binaries."""
    try:
        return f"integration servers: {choose_backend().describe()}"
    except RuntimeError as exc:
        return f"integration servers: {exc}"


@pytest.fixture(scope="session")
def server_backend() -> Backend:
    """Docker (a reachable local engine) or the local Debian binaries: see integration/containers.py."""
    return choose_backend()


def _start(layout: str, backend: Backend) -> Iterator[DovecotServer]:
    if backend.kind == "local" and not Path(DOVECOT).exists():
        pytest.fail(
            f"{DOVECOT} is missing: the integration tests need Dovecot (apt-get install dovecot-imapd dovecot-pop3d)",
            pytrace=False,
        )
    server = start_dovecot(backend, layout, _tmp_parent())  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot(server_backend: Backend) -> Iterator[DovecotServer]:
    """A private Dovecot with the slash layout (prefix "", separator "/")."""
    yield from _start("slash", server_backend)


@pytest.fixture(scope="session")
def dovecot_courier(server_backend: Backend) -> Iterator[DovecotServer]:
    """A private Dovecot with the Courier layout (prefix "INBOX.", separator ".")."""
    yield from _start("courier", server_backend)


@pytest.fixture(scope="session")
def _user_counter() -> Iterator[int]:
    return itertools.count(1)


@pytest.fixture
def new_user(request: pytest.FixtureRequest, _user_counter: Iterator[int]) -> NewUser:
    """Factory: ``new_user(server=None, password="pw") -> str`` creates a fresh user
    (on ``dovecot`` unless another server is given) and returns its name."""
    session_tag = uuid.uuid4().hex[:6]

    def make(server: DovecotServer | None = None, password: str = "pw") -> str:
        target = server if server is not None else request.getfixturevalue("dovecot")
        name = f"u{next(_user_counter)}{session_tag}"
        target.add_user(name, password)
        return name

    return make
