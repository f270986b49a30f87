"""Network faults between migrator and Dovecot (integration/faultproxy.py).

Both the source and the destination connection go through one FaultProxy in front
of the private Dovecot. Each fault (a drop after N bytes in either direction, an RST
in the middle of an APPEND literal or a FETCH response, a stall that only a timeout
can notice, a slow server) must end in a complete, exact copy: every source message
at the destination once, flags, keywords and dates intact, and a clean state DB.
Stalls must be detected by the ``?timeout=`` of the copy URL, within a bounded time.

The "Done when" figure: a fault every 1 MiB of traffic across a 2,000-message copy
(``test_fault_every_mebibyte``) runs the engine in-process, because the retry wait
(``RunOptions.max_wait``, 30 s) is not reachable from the command line; set
``MIGRATOR_FAULT_MESSAGES`` to change the corpus size.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.corpus import generate
from integration.dovecot import DovecotServer
from integration.faultproxy import Fault, FaultProxy
from integration.harness import (
    PW,
    PlanMailbox,
    Users,
    assert_consistent,
    forget_user,
    imap_url,
    load_source,
    migrator,
    snap,
    write_plan,
)
from integration.snapshot import Snapshot, diff_snapshots
from migrator.engine import Engine, RunOptions
from migrator.plan import load_plan
from migrator.state import State
from migrator.stats import RunStats

SMALL = 80  # messages of the per-fault cases (about 3 MB)
BIG = int(os.environ.get("MIGRATOR_FAULT_MESSAGES", "2000"))
MIB = 1 << 20
TIMEOUT = 3  # seconds: ?timeout= of the copy URLs (stall detection)


# ----------------------------------------------------------------------------- the proxy itself


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """Answers any request with PAYLOAD, then keeps the connection open for 10 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(100)
                conn.sendall(PAYLOAD)
                stop.wait(10)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()
    stop.set()
    listener.close()
    thread.join(timeout=5)


PAYLOAD = bytes(range(256)) * 2000  # 512,000 bytes


def fetch_all(port: int, timeout: float = 2.0) -> tuple[bytes, str]:
    """(bytes received, how it ended: "eof" | "rst" | "timeout")."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(b"GET\r\n")
        got = bytearray()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return bytes(got), "eof"
                got += data
                if len(got) == len(PAYLOAD):
                    return bytes(got), "complete"
        except ConnectionResetError:
            return bytes(got), "rst"
        except TimeoutError:
            return bytes(got), "timeout"


def test_proxy_passes_bytes_untouched(echo_server):
    with FaultProxy(echo_server) as proxy:
        assert fetch_all(proxy.port) == (PAYLOAD, "complete")
        # the proxy counts a piece after sending it on: the client may have it first
        deadline = time.monotonic() + 5
        while proxy.bytes["down"] < len(PAYLOAD) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.injected == [] and proxy.bytes == {"up": 5, "down": len(PAYLOAD)}


def test_proxy_drop_after_exactly_n_bytes(echo_server):
    with FaultProxy(echo_server) as proxy:
        proxy.add(Fault("drop", "down", after=12_345))
        assert fetch_all(proxy.port) == (PAYLOAD[:12_345], "eof")
        assert [(i.action, i.offset) for i in proxy.injected] == [("drop", 12_345)]


def test_proxy_reset_after_a_pattern_is_an_rst(echo_server):
    pattern = bytes(range(250, 256)) + bytes(range(10))  # first seen at offset 250
    with FaultProxy(echo_server) as proxy:
        proxy.add(Fault("reset", "down", after=1000, pattern=pattern))
        got, how = fetch_all(proxy.port)
    assert how == "rst" and PAYLOAD.startswith(got) and len(got) <= 250 + len(pattern) + 1000


def test_proxy_stall_is_only_noticed_by_a_timeout(echo_server):
    with FaultProxy(echo_server) as proxy:
        proxy.add(Fault("stall", "down", after=5000))
        began = time.monotonic()
        got, how = fetch_all(proxy.port, timeout=1.0)
    assert (got, how) == (PAYLOAD[:5000], "timeout")
    assert 0.9 < time.monotonic() - began < 5


def test_proxy_cuts_before_the_line_holding_a_pattern(echo_server):
    with FaultProxy(echo_server) as proxy:
        proxy.add(Fault("drop", "down", pattern=bytes(range(100, 110)), before_line=True))
        assert fetch_all(proxy.port) == (PAYLOAD[:11], "eof")  # the line began after the b"\n" at offset 10


def test_proxy_throttle_and_periodic_faults(echo_server):
    with FaultProxy(echo_server) as proxy:
        proxy.throttle(1_000_000)  # 512 KB at 1 MB/s: about half a second
        began = time.monotonic()
        assert fetch_all(proxy.port, timeout=5)[1] == "complete"
        assert 0.4 < time.monotonic() - began < 3
        proxy.throttle(None)
        proxy.every(100_000, ("drop", "reset"))
        first, second = fetch_all(proxy.port), fetch_all(proxy.port)
    assert first == (PAYLOAD[: 100_000 - 5], "eof")  # the 5 request bytes count too
    assert second[1] == "rst" and len(second[0]) <= 100_000 - 5
    assert [i.action for i in proxy.injected] == ["drop", "reset"]


# ----------------------------------------------------------------------------- faults in a real copy


@pytest.fixture(scope="module")
def small_source(dovecot: DovecotServer, _user_counter) -> Iterator[tuple[str, Snapshot]]:
    user = f"net{next(_user_counter)}src"
    dovecot.add_user(user, PW)
    load_source(dovecot, user, generate(SMALL, seed=5, max_attachment=200_000))
    snapshot = snap(dovecot, user)
    assert sum(len(v) for v in snapshot.values()) == SMALL
    yield user, snapshot
    forget_user(dovecot, user)


@pytest.fixture
def users(dovecot: DovecotServer, new_user) -> Iterator[Users]:
    """Fresh destination users, removed again after the test (tmpfs is RAM)."""
    made = Users(dovecot, new_user)
    yield made
    made.forget()


@pytest.fixture
def proxy(dovecot: DovecotServer) -> Iterator[FaultProxy]:
    with FaultProxy((dovecot.host, dovecot.imap_port)) as p:
        yield p


def copy_through(proxy: FaultProxy, dovecot: DovecotServer, src: str, dst: str, state: Path, timeout: float = 120):
    query = f"tls=off&timeout={TIMEOUT}"
    return migrator(
        "copy",
        imap_url(dovecot, src, port=proxy.port, query=query),
        imap_url(dovecot, dst, port=proxy.port, query=query),
        "--state",
        str(state),
        timeout=timeout,
    )


def last_run(state: Path) -> tuple[int, int]:
    with sqlite3.connect(state) as db:
        copied, matched = db.execute("select copied, matched from runs order by id desc limit 1").fetchone()
    return copied, matched


FAULTS = {
    # a drop in the middle of a FETCH response (source side)
    "drop-in-fetch": Fault("drop", "down", after=40_000, pattern=b"BODY[] {"),
    # a drop while the client sends an APPEND literal (destination side)
    "drop-in-append": Fault("drop", "up", after=30_000, pattern=b"APPEND"),
    # RST in the middle of an APPEND literal
    "reset-in-append": Fault("reset", "up", after=100_000, pattern=b"APPEND"),
    # RST in the middle of a FETCH response
    "reset-in-fetch": Fault("reset", "down", after=150_000, pattern=b"BODY[] {"),
    # the server stored the batch, the client never hears the OK: must be matched, not resent
    "drop-after-append-accepted": Fault("drop", "down", pattern=b"[APPENDUID ", before_line=True),
    # the first command's answer is cut short (login / capabilities)
    "drop-early": Fault("drop", "down", after=20),
    # the connection is closed while the server has LOGIN to answer: imapclient calls
    # that a LoginError ("socket error: EOF"), which must not fail the mailbox as refused
    "drop-in-login": Fault("drop", "up", pattern=b" LOGIN "),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_copy_completes_exactly_once_despite(name, dovecot, small_source, users, proxy, tmp_path):
    src_user, src_snap = small_source
    dst = users()
    proxy.add(FAULTS[name])
    state = tmp_path / "s.db"
    out = copy_through(proxy, dovecot, src_user, dst, state)
    assert out.returncode == 0, out.stdout + out.stderr
    assert proxy.count() == 1, f"the fault did not fire: {proxy.injected}"
    assert "reconnecting" in out.stderr, out.stderr  # the engine retried
    got = snap(dovecot, dst)
    assert diff_snapshots(src_snap, got) == []
    assert_consistent(state, got)
    copied, matched = last_run(state)
    if name == "drop-after-append-accepted":
        assert matched > 0, f"the accepted batch was not recognised at the destination: {out.stderr}"
    assert copied + matched == SMALL
    assert PW not in out.stdout + out.stderr


@pytest.mark.parametrize("direction", ["down", "up"])
def test_stall_is_detected_by_the_timeout(direction, dovecot, small_source, users, proxy, tmp_path):
    src_user, src_snap = small_source
    dst = users()
    pattern = b"BODY[] {" if direction == "down" else b"APPEND"
    proxy.add(Fault("stall", direction, after=10_000, pattern=pattern))  # type: ignore[arg-type]
    began = time.monotonic()
    out = copy_through(proxy, dovecot, src_user, dst, tmp_path / "s.db", timeout=90)
    took = time.monotonic() - began
    assert out.returncode == 0, out.stdout + out.stderr
    assert proxy.count("stall") == 1
    assert "timed out" in out.stderr, out.stderr
    assert took < 60, f"a {TIMEOUT} s timeout took {took:.0f} s to notice a stall"
    got = snap(dovecot, dst)
    assert diff_snapshots(src_snap, got) == []
    assert_consistent(tmp_path / "s.db", got)


def test_slow_server_is_not_a_timeout(dovecot, small_source, users, proxy, tmp_path):
    """A server answering at 1 MB/s (well under the speed of the loopback) is slow, not
    dead: the copy completes without a retry and takes the time the bytes need."""
    src_user, src_snap = small_source
    dst = users()
    total = sum(f.size for msgs in src_snap.values() for f in msgs)
    proxy.throttle(1_000_000, "down")
    proxy.throttle(1_000_000, "up")
    began = time.monotonic()
    out = copy_through(proxy, dovecot, src_user, dst, tmp_path / "s.db")
    took = time.monotonic() - began
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reconnecting" not in out.stderr
    assert took > total / 1_000_000, f"{total} bytes at 1 MB/s took only {took:.1f} s: the throttle did nothing"
    assert diff_snapshots(src_snap, snap(dovecot, dst)) == []


def test_connections_dropped_at_connect_then_back(dovecot, small_source, users, proxy, tmp_path):
    """The first connections are dropped as soon as they open (a server restarting):
    the copy retries and completes once the server answers again."""
    src_user, src_snap = small_source
    dst = users()
    for _ in range(2):
        proxy.add(Fault("drop", "down", after=0))
    out = copy_through(proxy, dovecot, src_user, dst, tmp_path / "s.db")
    assert proxy.count("drop") == 2
    assert out.returncode == 0, out.stdout + out.stderr
    assert diff_snapshots(src_snap, snap(dovecot, dst)) == []


# ----------------------------------------------------------------------------- the "Done when" figure


@pytest.fixture(scope="module")
def big_source(dovecot: DovecotServer, _user_counter) -> Iterator[tuple[str, Snapshot]]:
    user = f"net{next(_user_counter)}big"
    dovecot.add_user(user, PW)
    load_source(dovecot, user, generate(BIG, seed=21, max_attachment=150_000))
    snapshot = snap(dovecot, user)
    assert sum(len(v) for v in snapshot.values()) == BIG
    yield user, snapshot
    forget_user(dovecot, user)


class _Retries(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "reconnecting" in msg:
            self.lines.append(msg)


def test_fault_every_mebibyte(dovecot, big_source, users, tmp_path, monkeypatch):
    """A drop or an RST (alternately) every 1 MiB of traffic, counted over both
    directions of all connections, across a 2,000-message copy: it completes, with
    nothing lost and nothing twice."""
    src_user, src_snap = big_source
    dst = users()
    monkeypatch.setenv("SRC_PW", PW)
    monkeypatch.setenv("DST_PW", PW)
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        plan_file = write_plan(
            tmp_path / "plan.yaml",
            dovecot,
            [PlanMailbox("box", src_user, dst)],
            defaults="{retries: 1000, batch_bytes: 128KiB, batch_messages: 100}",
            src_port=proxy.port,
            dst_port=proxy.port,
        )
        plan = load_plan(plan_file)
        proxy.every(MIB, ("drop", "reset"))
        retries = _Retries()
        logger = logging.getLogger("migrator")
        logger.addHandler(retries)
        began = time.monotonic()
        state = State.open(tmp_path / "robust.db")
        try:
            stats = RunStats([j.id for j in plan.jobs])
            Engine(plan.jobs, state, stats, RunOptions(max_wait=0.02, command="run")).run()
        finally:
            state.close()
            logger.removeHandler(retries)
        took = time.monotonic() - began
        proxy.every(0)
        faults, traffic = proxy.count(), proxy.bytes["up"] + proxy.bytes["down"]
    mb = stats.mailboxes["box"]
    assert mb.status == "ok", (mb.error, mb.failed_messages[:3])
    got = snap(dovecot, dst)
    assert diff_snapshots(src_snap, got) == []
    st = assert_consistent(tmp_path / "robust.db", got)
    assert faults >= traffic // MIB - 1 and faults > 10
    total = sum(len(v) for v in src_snap.values())
    print(
        f"[faults] {total} messages, {sum(f.size for v in src_snap.values() for f in v) / 1e6:.1f} MB; "
        f"{traffic / MIB:.0f} MiB through the proxy, {faults} faults injected "
        f"({proxy.count('drop')} drops, {proxy.count('reset')} resets), {len(retries.lines)} retries, "
        f"state: {st.statuses.get('copied', 0)} copied + {st.statuses.get('matched', 0)} matched after "
        "unconfirmed sends, "
        f"{sum(st.done_by_folder.values())} at the destination: 0 lost, 0 duplicated, in {took:.0f} s"
    )


def test_progress_between_faults_resets_the_retry_budget(dovecot, small_source, users, proxy, tmp_path):
    """A drop every 1 MiB with ``retries: 1`` and one folder at a time (parallel folder
    workers would share each MiB between them): an attempt moves at most about 0.9 MB
    (listing, a 128 KiB fetch batch or one message of up to 0.3 MB, the batch fetched
    ahead, the append) before it confirms a batch, so every attempt advances and the
    copy must finish."""
    src_user, src_snap = small_source
    dst = users()
    plan_file = write_plan(
        tmp_path / "plan.yaml",
        dovecot,
        [PlanMailbox("box", src_user, dst)],
        defaults="{retries: 1, batch_bytes: 128KiB, batch_messages: 100, folder_workers: 1}",
        src_port=proxy.port,
        dst_port=proxy.port,
    )
    proxy.every(MIB, ("drop",))
    out = migrator("run", str(plan_file), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert proxy.count() >= 3  # more faults than the budget of one folder
    assert diff_snapshots(src_snap, snap(dovecot, dst)) == []
