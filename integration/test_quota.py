"""A full destination: Dovecot with the quota plugin.

A plan with three mailboxes, one of whose destinations has a quota smaller than its
source: that mailbox stops with a clear "mailbox full" error (exit 1, kind quota, in
the summary and the JSON report), the two others finish exactly, nothing already
copied is lost; after the quota is raised, running the plan again completes the full
mailbox with nothing twice and a consistent state DB.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.corpus import generate
from integration.dovecot import DovecotServer
from integration.harness import (
    PW,
    PlanMailbox,
    check_state,
    load_source,
    migrator,
    not_more_than_source,
    snap,
    write_plan,
)
from integration.snapshot import Snapshot, diff_snapshots


class QuotaServer(DovecotServer):
    """A private Dovecot with the quota plugin (backend "count", no limit unless a
    user has one in the passwd-file: ``userdb_quota_rule``)."""

    def _config(self, login_user: str, internal_user: str) -> str:
        return super()._config(login_user, internal_user) + (
            "mail_plugins = $mail_plugins quota\n"
            "protocol imap {\n  mail_plugins = $mail_plugins imap_quota\n}\n"
            "plugin {\n  quota = count:User quota\n  quota_vsizes = yes\n  quota_rule = *:storage=0\n}\n"
        )

    def set_quota(self, user: str, kib: int | None) -> None:
        """(Re)write the user's passwd-file line with a storage limit (None: none).
        Dovecot reads the file again on the next login."""
        self.add_user(user, PW)
        if kib is not None:
            path = self.users_dir / user
            line = path.read_text(encoding="utf-8").rstrip("\n")
            tmp = self.users_dir / f".{user}.quota"
            tmp.write_text(f"{line}userdb_quota_rule=*:storage={kib}K\n", encoding="utf-8")
            tmp.chmod(0o644)
            os.replace(tmp, path)


def wait_for_limit(server: QuotaServer, user: str, kib: int, seconds: float = 15.0) -> None:
    """Until Dovecot's auth reads the changed passwd-file (it looks at most once a second
    per file), a new login still gets the old limit: wait, bounded, until it shows."""
    deadline = time.monotonic() + seconds
    while True:
        out = server.doveadm("quota", "get", "-u", user)
        if re.search(rf"\bSTORAGE\s+\d+\s+{kib}\b", out):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"quota of {user} not raised to {kib} KiB after {seconds} s:\n{out}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def quota_server() -> Iterator[QuotaServer]:
    server = QuotaServer(parent_dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def mailbox_state(report: dict[str, object], box: str) -> dict[str, object]:
    return next(m for m in report["mailboxes"] if m["id"] == box)  # type: ignore[union-attr, index]


def test_full_mailbox_stops_clearly_others_finish_and_a_rerun_completes(quota_server, tmp_path):
    server = quota_server
    sources: dict[str, Snapshot] = {}
    for i, box in enumerate(("alpha", "full", "gamma")):
        server.set_quota(f"src-{box}", None)
        load_source(server, f"src-{box}", generate(60, seed=40 + i, max_attachment=40_000))
        sources[box] = snap(server, f"src-{box}")
    full_size = sum(f.size for msgs in sources["full"].values() for f in msgs)
    assert full_size > 1_000_000
    for box in ("alpha", "gamma"):
        server.set_quota(f"dst-{box}", None)
    server.set_quota("dst-full", full_size // 3 // 1024)  # about a third fits
    plan = write_plan(
        tmp_path / "plan.yaml",
        server,
        [PlanMailbox(box, f"src-{box}", f"dst-{box}") for box in ("alpha", "full", "gamma")],
        defaults="{parallel_mailboxes: 1, batch_bytes: 64KiB}",  # small batches: the quota bites half-way
    )
    report = tmp_path / "r.json"
    first = migrator("run", str(plan), "--report", str(report))
    assert first.returncode == 1, first.stdout + first.stderr  # a mailbox stopped: exit 1
    data = json.loads(report.read_text(encoding="utf-8"))
    full = mailbox_state(data, "full")
    assert (full["status"], full["error_kind"]) == ("failed", "quota")
    assert "mailbox full" in str(full["error"]) and "quota" in str(full["error"]).lower()
    assert "mailbox full" in first.stdout and "full" in first.stdout
    print(f"[quota] {held_line(first.stdout)}")
    for box in ("alpha", "gamma"):
        assert mailbox_state(data, box)["status"] == "ok"
        assert diff_snapshots(sources[box], snap(server, f"dst-{box}")) == []
    partial = snap(server, "dst-full")
    held = sum(len(v) for v in partial.values())
    assert 0 < held < sum(len(v) for v in sources["full"].values()), "the quota did not bite half-way"
    assert not_more_than_source(sources["full"], partial) == []
    # the administrator raises the quota; the same command finishes the job
    server.set_quota("dst-full", full_size * 2 // 1024)
    wait_for_limit(server, "dst-full", full_size * 2 // 1024)
    second = migrator("run", str(plan))
    assert second.returncode == 0, second.stdout + second.stderr
    for box in ("alpha", "full", "gamma"):
        assert diff_snapshots(sources[box], snap(server, f"dst-{box}")) == []
    assert "copied 0" not in second.stdout  # it did copy the rest of "full"
    st = check_state(tmp_path / "robust.db")
    assert (st.integrity, st.pending) == ("ok", 0), st.statuses
    assert done_per_job(tmp_path / "robust.db") == {
        box: sum(len(v) for v in snap(server, f"dst-{box}").values()) for box in ("alpha", "full", "gamma")
    }


def done_per_job(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(
            conn.execute("select job, count(*) from messages where status in ('copied', 'matched') group by job")
        )


def held_line(stdout: str) -> str:
    return next((line.strip() for line in stdout.splitlines() if "failed (quota)" in line), "?")
