"""Nothing twice when someone else wrote into the destination since a job's last run:
another state DB for the same pair (``migrator copy`` by hand beside the nightly plan),
or the job's own state DB restored from an older backup. The job's new messages are
then matched against what was stored since its last run (one STATUS tells whether
anything was), instead of being copied again."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from integration.corpus import deliver_imap, generate, load_maildir
from integration.dovecot import DovecotServer
from integration.harness import PW, imap_url, migrator
from integration.snapshot import diff_snapshots, snapshot_imap


def copy(server: DovecotServer, src: str, dst: str, state: Path) -> str:
    out = migrator("copy", imap_url(server, src), imap_url(server, dst), "--state", str(state))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def deliver(server: DovecotServer, user: str, count: int, start: int, seed: int) -> None:
    fresh = list(generate(start + count, seed=seed, max_attachment=20_000))[start:]
    deliver_imap(fresh, server.host, server.imap_port, user, PW, separator=server.separator, prefix=server.prefix)


def copies(server: DovecotServer, user: str) -> Counter[tuple[tuple[str, ...], str]]:
    """How often each message (folder, SHA-256 of its bytes) is at ``user``."""
    snap = snapshot_imap(server.host, server.imap_port, user, PW)
    return Counter((folder, m.sha256) for folder, msgs in snap.items() for m in msgs)


def setup(server: DovecotServer, new_user, seed: int) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    src, dst = new_user(server, PW), new_user(server, PW)
    load_maildir(generate(120, seed=seed, max_attachment=20_000), server.maildir(src),
                 uid=server.mail_uid, gid=server.mail_gid)  # fmt: skip
    server.force_resync(src)
    return src, dst


def test_two_state_dbs_for_one_pair_copy_nothing_twice(dovecot, new_user, tmp_path):
    src, dst = setup(dovecot, new_user, seed=61)
    nightly, by_hand = tmp_path / "nightly.db", tmp_path / "by-hand.db"
    copy(dovecot, src, dst, nightly)
    assert "120 already there" in copy(dovecot, src, dst, by_hand)  # its first visit matches all
    deliver(dovecot, src, 5, start=120, seed=61)  # few new messages: an incremental listing
    assert "copied 5 message(s)" in copy(dovecot, src, dst, by_hand)
    out = copy(dovecot, src, dst, nightly)  # the other job: the 5 are there already
    assert "copied 0 message(s)" in out and "125 already there" in out, out
    assert copies(dovecot, dst) == copies(dovecot, src)  # each as often as at the source
    assert diff_snapshots(snapshot_imap(dovecot.host, dovecot.imap_port, src, PW),
                          snapshot_imap(dovecot.host, dovecot.imap_port, dst, PW)) == []  # fmt: skip


def test_a_state_restored_from_a_backup_copies_nothing_twice(dovecot, new_user, tmp_path):
    src, dst = setup(dovecot, new_user, seed=62)
    state, backup = tmp_path / "s.db", tmp_path / "backup.db"
    copy(dovecot, src, dst, state)
    shutil.copyfile(state, backup)  # last week's backup
    deliver(dovecot, src, 30, start=120, seed=62)
    assert "copied 30 message(s)" in copy(dovecot, src, dst, state)
    shutil.copyfile(backup, state)  # the state is restored: it knows none of the 30
    for suffix in ("-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    out = copy(dovecot, src, dst, state)
    assert "copied 0 message(s)" in out, out
    assert copies(dovecot, dst) == copies(dovecot, src)  # each as often as at the source
    # and a job whose destination nobody else touched pays one STATUS per changed folder
    deliver(dovecot, src, 3, start=150, seed=62)
    out = copy(dovecot, src, dst, state)
    assert "copied 3 message(s)" in out and "150 already there" in out, out
    assert copies(dovecot, dst) == copies(dovecot, src)  # each as often as at the source
