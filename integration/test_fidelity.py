"""IMAP -> IMAP through a real Dovecot, end to end through the CLI.

A generated corpus (2,000 messages: nested and non-ASCII folders, every flag and
keywords, dates over years, attachments up to 5 MB, messages without Message-ID,
true duplicates, distinct messages sharing a Message-ID, 8-bit headers) is copied
and the destination must be identical: bytes, flags, keywords, internal dates,
folders; and nothing twice, after re-runs, kills, lost checkpoints and a
UIDVALIDITY change.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.corpus import generate, load_maildir
from integration.dovecot import DovecotServer
from integration.snapshot import Snapshot, diff_snapshots, snapshot_imap

COUNT = 2000
PW = "pw-Geheim-42"


def migrator(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MIGRATOR_SOURCE_PASSWORD": PW, "MIGRATOR_DEST_PASSWORD": PW, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def url(server: DovecotServer, user: str) -> str:
    return f"imap://{user}@{server.host}:{server.imap_port}?tls=off"


def snap(server: DovecotServer, user: str) -> Snapshot:
    return snapshot_imap(server.host, server.imap_port, user, PW)


def runs(state: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(state) as db:
        return list(db.execute("select copied, matched, status from runs order by id"))


@pytest.fixture(scope="module")
def source(dovecot: DovecotServer, _user_counter) -> tuple[str, Snapshot]:
    """A source mailbox holding the corpus, loaded once (read-only for the tests)."""
    user = f"src{next(_user_counter)}fid"
    dovecot.add_user(user, PW)
    load_maildir(generate(COUNT, seed=7), dovecot.maildir(user), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(user)
    snapshot = snap(dovecot, user)
    assert sum(len(v) for v in snapshot.values()) == COUNT
    return user, snapshot


@pytest.fixture
def dest(dovecot: DovecotServer, new_user) -> str:
    return new_user(dovecot, PW)


def write_plan(tmp_path: Path, server: DovecotServer, src: str, dst: str) -> Path:
    plan = tmp_path / "fid.yaml"
    plan.write_text(
        f"""version: 1
name: fid
state: fid.db
endpoints:
  old: {{type: imap, host: {server.host}, port: {server.imap_port}, security: none, password_env: SRC_PW}}
  new: {{type: imap, host: {server.host}, port: {server.imap_port}, security: none, password_env: DST_PW}}
source: old
destination: new
mailboxes:
  - id: box
    source: {{user: {src}}}
    destination: {{user: {dst}}}
""",
        encoding="utf-8",
    )
    return plan


def test_plan_run_is_exact_and_second_run_copies_nothing(dovecot, source, dest, tmp_path):
    src_user, src_snap = source
    plan = write_plan(tmp_path, dovecot, src_user, dest)
    env = {"SRC_PW": PW, "DST_PW": PW}
    first = migrator("run", str(plan), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []
    second = migrator("run", str(plan), env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []
    state = tmp_path / "fid.db"
    (c1, m1, s1), (c2, m2, s2) = runs(state)
    assert (c1, m1, s1) == (COUNT, 0, "ok")
    assert (c2, m2, s2) == (0, 0, "ok")
    assert "copied 0 message(s)" in second.stdout
    # the password is nowhere in the state DB or the output
    assert PW.encode() not in state.read_bytes()
    assert PW not in first.stdout + first.stderr + second.stdout


def test_copy_command_is_exact_and_idempotent(dovecot, source, dest, tmp_path):
    src_user, src_snap = source
    state = tmp_path / "pair.db"
    args = ("copy", url(dovecot, src_user), url(dovecot, dest), "--state", str(state))
    first = migrator(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []
    second = migrator(*args)
    assert second.returncode == 0
    assert runs(state)[-1][:2] == (0, 0)
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []


def test_kill_9_then_resume_gives_exact_copy(dovecot, source, dest, tmp_path):
    src_user, src_snap = source
    state = tmp_path / "kill.db"
    args = [sys.executable, "-m", "migrator", "copy", url(dovecot, src_user), url(dovecot, dest), "--state", str(state)]
    env = {**os.environ, "MIGRATOR_SOURCE_PASSWORD": PW, "MIGRATOR_DEST_PASSWORD": PW}
    for threshold in (300, 1100):  # two kills at different depths
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if state.exists():
                    try:
                        with sqlite3.connect(state, timeout=1) as db:
                            n = db.execute("select count(*) from messages where status='copied'").fetchone()[0]
                    except sqlite3.Error:
                        n = 0
                    if n >= threshold:
                        break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    resumed = migrator("copy", url(dovecot, src_user), url(dovecot, dest), "--state", str(state))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []


def test_unconfirmed_sends_are_matched_not_resent(dovecot, source, dest, tmp_path):
    """A crash after the destination accepted a batch but before the checkpoint:
    simulated by turning confirmed rows back into 'pending'."""
    src_user, src_snap = source
    state = tmp_path / "pending.db"
    args = ("copy", url(dovecot, src_user), url(dovecot, dest), "--state", str(state))
    assert migrator(*args).returncode == 0
    with sqlite3.connect(state) as db:
        db.execute("update messages set status = 'pending' where rowid % 3 = 0")
        n_pending = db.execute("select count(*) from messages where status='pending'").fetchone()[0]
    assert n_pending > 500
    again = migrator(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    copied, matched, _ = runs(state)[-1]
    assert (copied, matched) == (0, n_pending)
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []


def test_lost_state_copies_nothing_twice(dovecot, source, dest, tmp_path):
    src_user, src_snap = source
    args = ("copy", url(dovecot, src_user), url(dovecot, dest))
    assert migrator(*args, "--state", str(tmp_path / "a.db")).returncode == 0
    fresh = migrator(*args, "--state", str(tmp_path / "b.db"))
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    copied, matched, _ = runs(tmp_path / "b.db")[-1]
    assert (copied, matched) == (0, COUNT)
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []


def test_uidvalidity_change_causes_no_duplicates(dovecot, new_user, tmp_path):
    """The source folder is deleted and recreated (new UIDVALIDITY, new UIDs) between runs."""
    src_user = new_user(dovecot, PW)
    dst_user = new_user(dovecot, PW)
    msgs = list(generate(300, seed=3))
    load_maildir(msgs, dovecot.maildir(src_user), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(src_user)
    state = tmp_path / "uv.db"
    args = ("copy", url(dovecot, src_user), url(dovecot, dst_user), "--state", str(state))
    assert migrator(*args).returncode == 0
    before = snap(dovecot, src_user)
    # recreate INBOX's sibling "Sent" with the same messages: new UIDVALIDITY
    tmp = "Sent-moved"
    dovecot.doveadm("mailbox", "rename", "-u", src_user, "Sent", tmp)
    dovecot.doveadm("mailbox", "create", "-u", src_user, "Sent")
    dovecot.doveadm("copy", "-u", src_user, "Sent", "mailbox", tmp, "all")
    dovecot.doveadm("mailbox", "delete", "-u", src_user, tmp)
    after = snap(dovecot, src_user)
    assert diff_snapshots(before, after) == []  # same content, new validity
    again = migrator(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    copied, matched, _ = runs(state)[-1]
    assert copied == 0 and matched == len(after[("Sent",)])
    assert diff_snapshots(after, snap(dovecot, dst_user)) == []


def test_dry_run_writes_nothing(dovecot, source, dest, tmp_path):
    src_user, _ = source
    state = tmp_path / "dry.db"
    out = migrator("copy", url(dovecot, src_user), url(dovecot, dest), "--state", str(state), "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"would copy {COUNT:,} message(s)" in out.stdout
    assert dovecot.doveadm("mailbox", "list", "-u", dest).split() == ["INBOX"]
    assert dovecot.doveadm("search", "-u", dest, "ALL").strip() == ""
    assert not state.exists()


def test_wrong_password_exit_3_names_the_mailbox(dovecot, source, dest, tmp_path):
    src_user, _ = source
    out = migrator(
        "copy",
        url(dovecot, src_user),
        url(dovecot, dest),
        "--state",
        str(tmp_path / "w.db"),
        env={"MIGRATOR_DEST_PASSWORD": "not-the-password"},
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert dest in out.stdout + out.stderr
    assert "not-the-password" not in out.stdout + out.stderr


def test_slash_layout_to_courier_layout_translates_separators(dovecot, dovecot_courier, source, new_user, tmp_path):
    """Dovecot "/" with prefix "" -> a Courier-style "INBOX." namespace with "." separator."""
    src_user, src_snap = source
    dst_user = new_user(dovecot_courier, PW)
    dst_url = f"imap://{dst_user}@{dovecot_courier.host}:{dovecot_courier.imap_port}?tls=off"
    out = migrator("copy", url(dovecot, src_user), dst_url, "--state", str(tmp_path / "c.db"))
    assert out.returncode == 0, out.stdout + out.stderr
    got = snapshot_imap(dovecot_courier.host, dovecot_courier.imap_port, dst_user, PW)
    assert diff_snapshots(src_snap, got) == []
    # on the server the folders really are INBOX.-prefixed and "."-separated
    listed = dovecot_courier.doveadm("mailbox", "list", "-u", dst_user).split("\n")
    assert "INBOX.Archive.2019" in listed and "INBOX.Projects.Alpha.Specs" in listed
