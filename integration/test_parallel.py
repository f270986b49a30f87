"""The parallel core against a real Dovecot: several mailboxes and several folders at
once under a shared connection budget, and the byte-rate limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from integration.corpus import generate, load_maildir
from integration.snapshot import diff_snapshots, snapshot_imap

PW = "pw-par-9"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MIGRATOR_SOURCE_PASSWORD": PW, "MIGRATOR_DEST_PASSWORD": PW, **(env or {})},
    )


def test_many_mailboxes_and_folders_under_one_connection(dovecot, new_user, tmp_path: Path):
    """Four mailboxes, three folder workers each, but at most ONE connection slot per
    server: every worker needs two (source and destination on the same server), granted
    together, so nothing deadlocks and everything arrives exactly once."""
    pairs = []
    for n in range(4):
        src, dst = new_user(dovecot, PW), new_user(dovecot, PW)
        load_maildir(generate(150, seed=40 + n, max_attachment=200_000), dovecot.maildir(src),
                     uid=dovecot.mail_uid, gid=dovecot.mail_gid)  # fmt: skip
        dovecot.force_resync(src)
        pairs.append((src, dst))
    mailboxes = "\n".join(
        f"  - {{id: m{n}, source: {{user: {s}}}, destination: {{user: {d}}}}}" for n, (s, d) in enumerate(pairs)
    )
    plan = tmp_path / "par.yaml"
    plan.write_text(
        f"""version: 1
state: par.db
endpoints:
  d: {{type: imap, host: {dovecot.host}, port: {dovecot.imap_port}, security: none, password_env: PW}}
source: d
destination: d
defaults: {{parallel_mailboxes: 4, folder_workers: 3, batch_messages: 20}}
mailboxes:
{mailboxes}
""",
        encoding="utf-8",
    )
    out = run("run", str(plan), "--max-connections", "1", env={"PW": PW})
    assert out.returncode == 0, out.stdout + out.stderr
    for src, dst in pairs:
        a = snapshot_imap(dovecot.host, dovecot.imap_port, src, PW)
        b = snapshot_imap(dovecot.host, dovecot.imap_port, dst, PW)
        assert diff_snapshots(a, b) == []
    again = run("run", str(plan), env={"PW": PW})
    assert again.returncode == 0 and "copied 0 message(s)" in again.stdout


def test_bwlimit_paces_the_copy(dovecot, new_user, tmp_path: Path):
    src, dst = new_user(dovecot, PW), new_user(dovecot, PW)
    msgs = [m for m in generate(60, seed=5, max_attachment=100_000)]
    load_maildir(msgs, dovecot.maildir(src), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(src)
    total = sum(len(m.raw) for m in msgs)
    rate = total // 2  # bytes per second: about three seconds of data at this rate, one free burst
    url = f"imap://{{}}@{dovecot.host}:{dovecot.imap_port}?tls=off"
    t0 = time.monotonic()
    out = run("copy", url.format(src), url.format(dst), "--state", str(tmp_path / "bw.db"), "--bwlimit", str(rate))
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    # a lower bound only (never flaky on a slow machine): the limit cannot be beaten
    assert elapsed >= 0.9, f"copied {total} bytes at --bwlimit {rate}/s in {elapsed:.2f} s"
    a = snapshot_imap(dovecot.host, dovecot.imap_port, src, PW)
    assert diff_snapshots(a, snapshot_imap(dovecot.host, dovecot.imap_port, dst, PW)) == []


def test_bad_bwlimit_is_a_one_line_error(tmp_path: Path):
    out = run("copy", f"maildir:{tmp_path}", f"maildir:{tmp_path}/x", "--bwlimit", "fast")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--bwlimit" in out.stderr
