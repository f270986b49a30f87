"""IMAP (Dovecot) <-> Exchange (the schema-checked EWS test server), end to end through
``migrator run PLAN``.

The EWS server runs in this process; ``migrator`` runs as a subprocess talking to it
over HTTP with exchangelib, unmodified. Every SOAP request and response is validated
against Microsoft's schemas (the ``ews`` fixture fails the test at teardown otherwise).

* IMAP -> EWS: every message lands in the right folder with its exact bytes (the
  server keeps what it was given), is not a draft unless it was one, and keeps its
  received date, read, flagged, answered state and keywords; a second run copies 0.
* With ErrorServerBusy on every tenth CreateItem: no duplicate, none lost, and the
  client waited at least BackOffMilliseconds each time (measured by the server).
* EWS -> IMAP: the destination holds exactly the MIME Exchange exports (not byte-
  identical to what Exchange was given, so parsed fields are compared with the
  originals too), with flags and received dates; a second run copies 0; a run killed
  with SIGKILL resumes mid-folder from the saved SyncState.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.corpus import CorpusMessage, generate, load_maildir
from integration.dovecot import DovecotServer
from integration.ews import fixtures
from integration.ews.mailboxes import ews_path, seed, snapshot
from integration.ews.server import EwsServer
from integration.snapshot import Snapshot, diff_snapshots, snapshot_imap

ews_schema = fixtures.ews_schema  # the fixtures this module uses
ews = fixtures.ews
COUNT = 1200
BUSY_COUNT = 400  # the ErrorServerBusy runs: enough CreateItem requests, half the time
MAX_ATTACHMENT = 300 * 1024
PW = "pw-Geheim-42"
EWS_PW = "ews-Geheim-17"


def corpus(count: int = COUNT) -> list[CorpusMessage]:
    return list(generate(count, seed=11, max_attachment=MAX_ATTACHMENT))


def non_empty(snap: Snapshot) -> Snapshot:
    return {k: v for k, v in snap.items() if v}


def migrator(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


def runs(state: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(state) as db:
        return list(db.execute("select copied, matched, status from runs order by id"))


def write_plan(
    tmp_path: Path,
    dovecot: DovecotServer,
    ews_server: EwsServer,
    imap_user: str,
    smtp: str,
    to_ews: bool,
    batch_messages: int = 500,
) -> Path:
    imap = f"{{type: imap, host: {dovecot.host}, port: {dovecot.imap_port}, security: none, password_env: IMAP_PW}}"
    exch = (
        f"{{type: ews, service_endpoint: '{ews_server.url}', version: Exchange2016, auth: basic, password_env: EWS_PW}}"
    )
    imap_side, ews_side = f"{{user: {imap_user}}}", f"{{user: '{smtp}'}}"
    plan = tmp_path / "ews.yaml"
    plan.write_text(
        f"""version: 1
name: ews
state: ews.db
endpoints:
  imap: {imap}
  exchange: {exch}
defaults: {{batch_messages: {batch_messages}}}
source: {"imap" if to_ews else "exchange"}
destination: {"exchange" if to_ews else "imap"}
mailboxes:
  - id: box
    source: {imap_side if to_ews else ews_side}
    destination: {ews_side if to_ews else imap_side}
""",
        encoding="utf-8",
    )
    return plan


ENV = {"IMAP_PW": PW, "EWS_PW": EWS_PW}


@pytest.fixture(scope="module")
def messages() -> list[CorpusMessage]:
    return corpus()


@pytest.fixture(scope="module")
def imap_source(dovecot: DovecotServer, _user_counter, messages) -> tuple[str, Snapshot]:
    """A Dovecot mailbox holding the corpus (read-only for the tests)."""
    user = f"ewssrc{next(_user_counter)}"
    dovecot.add_user(user, PW)
    load_maildir(messages, dovecot.maildir(user), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(user)
    snap = snapshot_imap(dovecot.host, dovecot.imap_port, user, PW)
    assert sum(len(v) for v in snap.values()) == COUNT
    return user, snap


@pytest.fixture(scope="module")
def small_imap_source(dovecot: DovecotServer, _user_counter, messages) -> tuple[str, Snapshot]:
    """A Dovecot mailbox holding the first BUSY_COUNT messages of the corpus."""
    user = f"ewsbusy{next(_user_counter)}"
    dovecot.add_user(user, PW)
    load_maildir(messages[:BUSY_COUNT], dovecot.maildir(user), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(user)
    snap = snapshot_imap(dovecot.host, dovecot.imap_port, user, PW)
    assert sum(len(v) for v in snap.values()) == BUSY_COUNT
    return user, snap


def expected_in_exchange(src: Snapshot) -> Snapshot:
    """The source snapshot with folders named as in the Exchange mailbox."""
    return {ews_path(k): v for k, v in non_empty(src).items()}


def timed_run(plan: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    out = migrator("run", str(plan), env=ENV)
    return out, time.monotonic() - t0


def test_imap_to_ews_keeps_folders_bytes_flags_dates_and_rerun_copies_nothing(
    dovecot, imap_source, ews, tmp_path, record_property
):
    user, src_snap = imap_source
    smtp = "alice@example.org"
    mbx = ews.store.add_mailbox(smtp, EWS_PW)
    plan = write_plan(tmp_path, dovecot, ews, user, smtp, to_ews=True)
    dry = migrator("run", str(plan), "--dry-run", env=ENV)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert not [x for x in ews.exchanges if x.op in ("CreateFolder", "CreateItem")]  # a dry run writes nothing
    first, seconds = timed_run(plan)
    assert first.returncode == 0, first.stdout + first.stderr
    got = snapshot(mbx, ews.store.lock, exported=False)
    assert diff_snapshots(expected_in_exchange(src_snap), got) == []
    with ews.store.lock:
        items = [i for f in mbx.folders.values() for i in f.items.values()]
    assert len(items) == COUNT
    # not a draft unless it was one (without PR_MESSAGE_FLAGS every item would be)
    want_drafts = sum(1 for v in src_snap.values() for f in v if "\\Draft" in f.flags)
    assert 0 < sum(i.is_draft for i in items) == want_drafts < COUNT
    record_property("imap_to_ews_messages_per_second", round(COUNT / seconds, 1))
    print(f"IMAP -> EWS: {COUNT} messages in {seconds:.1f}s = {COUNT / seconds:.1f} msg/s")
    second, _ = timed_run(plan)
    assert second.returncode == 0, second.stdout + second.stderr
    assert snapshot(mbx, ews.store.lock, exported=False) == got
    (c1, m1, s1), (c2, m2, s2) = runs(tmp_path / "ews.db")
    assert (c1, m1, s1) == (COUNT, 0, "ok")
    assert (c2, m2, s2) == (0, 0, "ok")
    state = (tmp_path / "ews.db").read_bytes()
    assert EWS_PW.encode() not in state and PW.encode() not in state
    assert EWS_PW not in first.stdout + first.stderr + second.stdout + second.stderr


@pytest.mark.parametrize("mode", ["item", "fault"])
def test_server_busy_on_every_tenth_create_item_loses_nothing_and_duplicates_nothing(
    dovecot, small_imap_source, ews, tmp_path, mode, record_property
):
    """``item``: one item of every tenth CreateItem is throttled while the others are
    stored (a blind re-send of the batch would duplicate them); ``fault``: the whole
    request is refused with a SOAP fault. Either way the client must wait the
    BackOffMilliseconds asked for before its next request."""
    user, src_snap = small_imap_source
    smtp = f"busy-{mode}@example.org"
    mbx = ews.store.add_mailbox(smtp, EWS_PW)
    ews.faults.busy_every = 10
    ews.faults.busy_mode = mode
    ews.faults.busy_backoff_ms = 150
    plan = write_plan(tmp_path, dovecot, ews, user, smtp, to_ews=True, batch_messages=8)
    out, seconds = timed_run(plan)
    assert out.returncode == 0, out.stdout + out.stderr
    assert diff_snapshots(expected_in_exchange(src_snap), snapshot(mbx, ews.store.lock, exported=False)) == []
    creates = ews.ops_named("CreateItem")
    busy = [w for w in ews.backoff_waits if w.waited is not None]
    assert len(creates) >= BUSY_COUNT // 8 and len(busy) >= len(creates) // 10 - 1
    assert all(w.obeyed for w in ews.backoff_waits), [(w.asked, w.waited) for w in ews.backoff_waits]
    waits = sorted(w.waited for w in busy)
    record_property(f"busy_{mode}_waits", f"{len(waits)} waits, min {waits[0]:.3f}s, max {waits[-1]:.3f}s")
    print(
        f"busy ({mode}): {len(waits)} back-offs of 0.150s asked; waited {waits[0]:.3f}..{waits[-1]:.3f}s; "
        f"{BUSY_COUNT / seconds:.1f} msg/s"
    )
    ((copied, matched, status),) = runs(tmp_path / "ews.db")
    assert (copied, matched, status) == (BUSY_COUNT, 0, "ok")


@pytest.fixture
def exchange_source(ews, messages) -> tuple[str, Snapshot]:
    """An Exchange mailbox holding the corpus as received items (seeded in the server)."""
    smtp = "carol@example.org"
    mbx = ews.store.add_mailbox(smtp, EWS_PW)
    assert seed(mbx, messages, ews.store.lock) == COUNT
    return smtp, snapshot(mbx, ews.store.lock, exported=True, to_imap=True)


def parsed_fields(raw: bytes) -> tuple[str, ...]:
    """What a reader sees: Message-ID, Subject, Date, From, and each decoded leaf part."""
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    parts = [str(msg.get(h, "")) for h in ("Message-ID", "Subject", "Date", "From")]
    for part in msg.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True) or b""
            parts.append(hashlib.sha256(payload.replace(b"\r\n", b"\n")).hexdigest())
    return tuple(parts)


def imap_bodies(dovecot: DovecotServer, user: str) -> list[bytes]:
    import imapclient

    client = imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=60)
    out: list[bytes] = []
    try:
        client.login(user, PW)
        for _, _, name in client.list_folders():
            client.select_folder(name, readonly=True)
            uids = client.search("ALL")
            for start in range(0, len(uids), 200):
                for data in client.fetch(uids[start : start + 200], ["BODY.PEEK[]"]).values():
                    out.append(data[b"BODY[]"])
    finally:
        client.logout()
    return out


def test_ews_to_imap_keeps_folders_fields_flags_dates_and_rerun_copies_nothing(
    dovecot, new_user, ews, exchange_source, messages, tmp_path, record_property
):
    smtp, expected = exchange_source
    user = new_user(dovecot, PW)
    plan = write_plan(tmp_path, dovecot, ews, user, smtp, to_ews=False)
    first, seconds = timed_run(plan)
    assert first.returncode == 0, first.stdout + first.stderr
    got = non_empty(snapshot_imap(dovecot.host, dovecot.imap_port, user, PW))
    # exactly the MIME Exchange exports, in the mapped folders, with flags and received dates
    assert diff_snapshots(expected, got) == []
    # ... which is not what Exchange was given: the parsed fields are the originals'
    bodies = imap_bodies(dovecot, user)
    assert sorted(map(parsed_fields, bodies)) == sorted(parsed_fields(m.raw) for m in messages)
    assert not {m.raw for m in messages} & set(bodies)
    record_property("ews_to_imap_messages_per_second", round(COUNT / seconds, 1))
    print(f"EWS -> IMAP: {COUNT} messages in {seconds:.1f}s = {COUNT / seconds:.1f} msg/s")
    before = len(ews.exchanges)
    second, _ = timed_run(plan)
    assert second.returncode == 0, second.stdout + second.stderr
    assert non_empty(snapshot_imap(dovecot.host, dovecot.imap_port, user, PW)) == got
    (c1, _, s1), (c2, m2, s2) = runs(tmp_path / "ews.db")
    assert (c1, s1, c2, m2, s2) == (COUNT, "ok", 0, 0, "ok")
    # the second run asked only for changes since the saved sync states, and fetched nothing
    again = ews.exchanges[before:]
    syncs = [x for x in again if x.op == "SyncFolderItems"]
    assert syncs and all(x.sync_state_sent for x in syncs)
    assert not [x for x in again if x.op == "GetItem"]


def cursors(state: Path) -> dict[str, str]:
    with sqlite3.connect(state) as db:
        return {f: c for f, c in db.execute("select src_folder, cursor from folders where cursor is not null")}


def test_ews_to_imap_resumes_mid_folder_from_the_saved_sync_state_after_kill_9(
    dovecot, new_user, ews, exchange_source, tmp_path
):
    smtp, expected = exchange_source
    user = new_user(dovecot, PW)
    plan = write_plan(tmp_path, dovecot, ews, user, smtp, to_ews=False)
    ews.faults.delay["GetItem"] = 0.05  # slow enough to be killed in the middle of the inbox
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrator", "run", str(plan)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
    )
    inbox = ews.store.mailbox(smtp).distinguished["inbox"]

    def inbox_syncs() -> list:
        return [x for x in ews.ops_named("SyncFolderItems") if x.folder == inbox]

    try:
        deadline = time.monotonic() + 120
        while len(inbox_syncs()) < 3:  # inbox pages 1 and 2 done, page 3 asked for
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach the third inbox page"
            time.sleep(0.02)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    saved = cursors(tmp_path / "ews.db")
    assert saved, "no sync state was saved before the kill"
    inbox_before = len(inbox_syncs())
    ews.faults.delay.clear()
    again, _ = timed_run(plan)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = inbox_syncs()[inbox_before:]
    assert resumed[0].sync_state_sent, "the resumed run listed the inbox from the start"
    assert resumed[0].sync_state_sent in saved.values()
    got = non_empty(snapshot_imap(dovecot.host, dovecot.imap_port, user, PW))
    assert diff_snapshots(expected, got) == []  # nothing lost, nothing twice
    _, (copied, _, status) = runs(tmp_path / "ews.db")
    assert status == "ok" and 0 < copied < COUNT


def small_message(n: int, extra: bytes = b"") -> bytes:
    return (
        f"From: a@example.org\r\nTo: b@example.org\r\nSubject: small {n}\r\n"
        f"Date: Tue, 03 Mar 2020 10:00:00 +0000\r\nMessage-ID: <small-{n}@example.org>\r\n".encode()
        + extra
        + f"\r\nbody {n}\r\n".encode()
        + b"x" * 2000
        + b"\r\n"
    )


def test_a_refused_message_is_recorded_and_a_full_mailbox_stops_alone(dovecot, new_user, ews, tmp_path):
    """ErrorCorruptData for one message: recorded against it, the others are copied.
    ErrorQuotaExceeded: that mailbox stops with a clear error, the other mailbox goes on."""
    import imapclient

    users = [new_user(dovecot, PW), new_user(dovecot, PW)]
    for user in users:
        client = imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=30)
        client.login(user, PW)
        for n in range(10):
            extra = b"X-Test-EWS-Reject: ErrorCorruptData\r\n" if (user == users[0] and n == 4) else b""
            client.append("INBOX", small_message(n, extra), [b"\\Seen"])
        client.logout()
    alice = ews.store.add_mailbox("alice@example.org", EWS_PW)
    bob = ews.store.add_mailbox("bob@example.org", EWS_PW, quota_bytes=20_000)
    plan = tmp_path / "two.yaml"
    plan.write_text(
        f"""version: 1
name: two
state: two.db
endpoints:
  imap: {{type: imap, host: {dovecot.host}, port: {dovecot.imap_port}, security: none, password_env: IMAP_PW}}
  exchange: {{type: ews, service_endpoint: '{ews.url}', version: Exchange2016, auth: basic, password_env: EWS_PW}}
defaults: {{batch_messages: 3}}
source: imap
destination: exchange
mailboxes:
  - {{id: alice, source: {{user: {users[0]}}}, destination: {{user: 'alice@example.org'}}}}
  - {{id: bob, source: {{user: {users[1]}}}, destination: {{user: 'bob@example.org'}}}}
""",
        encoding="utf-8",
    )
    out = migrator("run", str(plan), env=ENV)
    assert out.returncode == 1, out.stdout + out.stderr
    inbox = alice.folders[alice.distinguished["inbox"]]
    assert sorted(i.parsed.subject for i in inbox.items.values()) == sorted(f"small {n}" for n in range(10) if n != 4)
    assert 0 < len(bob.folders[bob.distinguished["inbox"]].items) < 10
    with sqlite3.connect(tmp_path / "two.db") as db:
        errors = list(db.execute("select job, kind, message from errors order by id"))
    refused = [e for e in errors if e[0] == "alice"]
    assert [e[1] for e in refused] == ["message"] and "ErrorCorruptData" in refused[0][2]
    full = [e for e in errors if e[0] == "bob"]
    assert [e[1] for e in full] == ["quota"] and "quota" in full[0][2]
    assert "ErrorCorruptData" in out.stdout + out.stderr and "quota" in (out.stdout + out.stderr).lower()
