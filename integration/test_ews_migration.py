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

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.corpus import CorpusMessage, generate, load_maildir
from integration.dovecot import DovecotServer
from integration.ews import fixtures
from integration.ews.mailboxes import ews_path, snapshot
from integration.ews.server import EwsServer
from integration.snapshot import Snapshot, diff_snapshots, snapshot_imap

ews_schema = fixtures.ews_schema  # the fixtures this module uses
ews = fixtures.ews
COUNT = 1200
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
    tmp_path: Path, dovecot: DovecotServer, ews_server: EwsServer, imap_user: str, smtp: str, to_ews: bool
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
