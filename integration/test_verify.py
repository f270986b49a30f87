"""`migrator verify` against real Dovecots, end to end through the CLI.

The destination is a Dovecot with a per-message size limit it does NOT advertise
(``quota_max_mail_size``): it refuses the one large message of the source with
``NO [LIMIT]`` during the run, so exactly that message fails. ``verify`` must then
exit 1 and name it; after the limit is raised and the plan run again, exit 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from integration.corpus import CorpusMessage, load_maildir
from integration.dovecot import DovecotServer
from integration.report_fixtures import QuotaDovecot, small_corpus
from integration.snapshot import snapshot_imap

PW = "pw-Verify-7"
LIMIT = 100_000
BIG = 180_000


def corpus(tag: str, n: int, big: set[int] = frozenset()) -> list[CorpusMessage]:  # type: ignore[assignment]
    return small_corpus(tag, n, big, BIG)


def load(server: DovecotServer, user: str, msgs: list[CorpusMessage]) -> None:
    load_maildir(msgs, server.maildir(user), uid=server.mail_uid, gid=server.mail_gid, folders=[("Sent",)])
    server.force_resync(user)


def migrator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "SRC_PW": PW, "DST_PW": PW, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args], capture_output=True, text=True, env=full, timeout=300
    )


@pytest.fixture(scope="module")
def strict_dest() -> Iterator[QuotaDovecot]:
    """A destination refusing messages over LIMIT bytes without advertising it."""
    server = QuotaDovecot("slash", "/dev/shm" if os.access("/dev/shm", os.W_OK) else None, max_mail_size=LIMIT,
                          advertise_limit=False)  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_plan(
    tmp_path: Path, src: DovecotServer, dst: DovecotServer, pairs: list[tuple[str, str, str]], name: str = "verify"
) -> Path:
    """A plan with one mailbox per (id, source user, destination user); a source user
    starting with "/" is a local Maildir at that path instead of a user of ``src``."""
    boxes = "".join(
        f"  - id: {mid}\n    source: {{endpoint: local, path: {s}}}\n    destination: {{user: {d}}}\n"
        if s.startswith("/")
        else f"  - id: {mid}\n    source: {{user: {s}}}\n    destination: {{user: {d}}}\n"
        for mid, s, d in pairs
    )
    plan = tmp_path / f"{name}.yaml"
    plan.write_text(
        f"""version: 1
name: {name}
state: {name}.db
endpoints:
  old: {{type: imap, host: {src.host}, port: {src.imap_port}, security: none, password_env: SRC_PW}}
  local: {{type: maildir}}
  new: {{type: imap, host: {dst.host}, port: {dst.imap_port}, security: none, password_env: DST_PW}}
source: old
destination: new
defaults: {{parallel_mailboxes: 2}}
mailboxes:
{boxes}""",
        encoding="utf-8",
    )
    return plan


def run_fail_fix_verify(plan: Path, dest: QuotaDovecot, dst_user: str, tmp_path: Path) -> None:
    """Run (the big message of alice fails), verify names it (exit 1), raise the
    destination's limit, run again, verify passes (exit 0)."""
    first = migrator("run", str(plan))
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 failed" in first.stdout

    v1 = migrator("verify", str(plan), "--report", str(tmp_path / "v1.json"), "--report", str(tmp_path / "v1.html"))
    assert v1.returncode == 1, v1.stdout + v1.stderr
    big_mid = "<vf.8@example.org>"
    # the unaccounted message is named: mailbox, folder, Message-ID, size, and why
    line = next(ln for ln in v1.stdout.splitlines() if "unaccounted" in ln and big_mid in ln)
    assert "INBOX" in line and "failed:" in line and "LIMIT" in line, line
    assert "1 unaccounted" in v1.stdout
    data = json.loads((tmp_path / "v1.json").read_text(encoding="utf-8"))
    assert data["kind"] == "verify" and data["exit_code"] == 1
    alice = next(m for m in data["mailboxes"] if m["id"] == "alice")
    bob = next(m for m in data["mailboxes"] if m["id"] == "bob")
    assert [u["message_id"] for u in alice["unaccounted_messages"]] == [big_mid]
    assert alice["unaccounted_messages"][0]["size"] >= BIG - 200
    assert (alice["source_messages"], alice["at_destination"], alice["unaccounted"]) == (24, 23, 1)
    assert (bob["status"], bob["unaccounted"], bob["at_destination"]) == ("ok", 0, 10)
    assert [(p["mailbox"], p["kind"], p["folder"]) for p in data["problems"] if p["severity"] == "error"] == [
        ("alice", "unaccounted", "INBOX")
    ]
    # the report files are private and the password is nowhere
    assert (tmp_path / "v1.json").stat().st_mode & 0o777 == 0o600
    for out in (v1.stdout + v1.stderr, (tmp_path / "v1.json").read_text(), (tmp_path / "v1.html").read_text()):
        assert PW not in out

    before = snapshot_imap(dest.host, dest.imap_port, dst_user, PW)
    # verify is read-only: a second verify changes nothing at the destination
    assert migrator("verify", str(plan), "-q").returncode == 1
    assert snapshot_imap(dest.host, dest.imap_port, dst_user, PW) == before

    # the fix: the server takes bigger messages now; the re-run copies the failed one
    dest.set_max_mail_size(1_000_000)
    try:
        again = migrator("run", str(plan))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "copied 1 message(s)" in again.stdout, again.stdout
        v2 = migrator("verify", str(plan), "--report", str(tmp_path / "v2.json"))
        assert v2.returncode == 0, v2.stdout + v2.stderr
        assert "0 unaccounted" in v2.stdout
        data = json.loads((tmp_path / "v2.json").read_text(encoding="utf-8"))
        assert data["exit_code"] == 0 and data["totals"]["unaccounted"] == 0
        assert data["totals"]["at_destination"] == 34 and data["totals"]["flag_differences"] == 0
    finally:
        dest.set_max_mail_size(LIMIT)


def test_failed_message_is_named_then_fixed_and_verify_passes(dovecot, strict_dest, new_user, tmp_path):
    """A Maildir source (alice) and an IMAP source (bob) into the strict Dovecot."""
    maildir = tmp_path / "alice-Maildir"
    load_maildir(corpus("vf", 24, big={8}), maildir, folders=[("Sent",)])  # #8: INBOX, batched with 5 others
    bob_src = new_user(dovecot, PW)
    load(dovecot, bob_src, corpus("ok", 10))
    alice_dst, bob_dst = new_user(strict_dest, PW), new_user(strict_dest, PW)
    plan = write_plan(tmp_path, dovecot, strict_dest, [("alice", str(maildir), alice_dst), ("bob", bob_src, bob_dst)])
    run_fail_fix_verify(plan, strict_dest, alice_dst, tmp_path)


def test_imap_source_failed_message_is_retried_after_fix(dovecot, strict_dest, new_user, tmp_path):
    alice_src, bob_src = new_user(dovecot, PW), new_user(dovecot, PW)
    load(dovecot, alice_src, corpus("vf", 24, big={8}))
    load(dovecot, bob_src, corpus("ok", 10))
    alice_dst, bob_dst = new_user(strict_dest, PW), new_user(strict_dest, PW)
    plan = write_plan(tmp_path, dovecot, strict_dest, [("alice", alice_src, alice_dst), ("bob", bob_src, bob_dst)])
    run_fail_fix_verify(plan, strict_dest, alice_dst, tmp_path)


def test_message_deleted_at_destination_and_flag_change_are_reported(dovecot, strict_dest, new_user, tmp_path):
    src, dst = new_user(dovecot, PW), new_user(strict_dest, PW)
    load(dovecot, src, corpus("del", 12))
    plan = write_plan(tmp_path, dovecot, strict_dest, [("carol", src, dst)])
    assert migrator("run", str(plan)).returncode == 0
    assert migrator("verify", str(plan)).returncode == 0

    # a flag changed at the source after the copy: accounted for, but reported
    with IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False) as c:
        c.login(src, PW)
        c.select_folder("Sent")
        uids = c.search(["SUBJECT", "del message 2"])
        assert len(uids) == 1
        c.add_flags(uids, [b"\\Flagged"])
    flagged = migrator("verify", str(plan))
    assert flagged.returncode == 0, flagged.stdout
    assert f"flags differ on 1 message(s) of Sent, e.g. #{uids[0]}" in flagged.stdout

    # a copied message disappears from the destination: unaccounted, with the reason
    strict_dest.doveadm("expunge", "-u", dst, "mailbox", "Archive", "header", "Message-ID", "<del.3@example.org>")
    gone = migrator("verify", str(plan))
    assert gone.returncode == 1, gone.stdout
    line = next(ln for ln in gone.stdout.splitlines() if "<del.3@example.org>" in ln)
    assert "Archive" in line and "recorded as copied" in line and "not at the destination" in line


def test_skipped_with_reason_is_accounted_and_wrong_password_exits_3(dovecot, strict_dest, new_user, tmp_path):
    src, dst = new_user(dovecot, PW), new_user(strict_dest, PW)
    load(dovecot, src, corpus("sk", 8, big={4}))
    plan = write_plan(tmp_path, dovecot, strict_dest, [("dave", src, dst)])
    text = plan.read_text(encoding="utf-8").replace(
        "defaults: {parallel_mailboxes: 2}", "defaults: {parallel_mailboxes: 2, filters: {max_size: 150KB}}"
    )
    plan.write_text(text, encoding="utf-8")
    run = migrator("run", str(plan))
    assert run.returncode == 0, run.stdout + run.stderr
    ok = migrator("verify", str(plan), "--report", str(tmp_path / "v.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    (dave,) = data["mailboxes"]
    assert (dave["skipped"], dave["at_destination"], dave["unaccounted"]) == (1, 7, 0)
    assert "filters.max_size" in dave["skipped_messages"][0]["reason"]

    bad = migrator("verify", str(plan), env={"DST_PW": "not-the-password"})
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "login failed" in bad.stdout and dst in bad.stdout
    assert "not-the-password" not in bad.stdout + bad.stderr
