"""Nightly mirror jobs against a real Dovecot (issue 9): delta sync, modes, deletion guard.

A recording TCP tap between migrator and Dovecot counts the IMAP commands a run
sends, so "an unchanged mailbox costs almost nothing" is checked on the wire.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from integration.corpus import generate, load_maildir
from integration.dovecot import DovecotServer
from integration.snapshot import Snapshot, diff_snapshots, snapshot_imap

PW = "pw-mirror-1"


class Tap:
    """A TCP forwarder on 127.0.0.1 that records what the client sends."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=30)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, record: bool) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if record:
                    with self._lock:
                        self.sent += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        with self._lock:
            self.sent.clear()

    def commands(self) -> list[str]:
        """Client command lines, literals skipped (sizes in {N} or {N+})."""
        with self._lock:
            data = bytes(self.sent)
        out, i = [], 0
        while i < len(data):
            j = data.find(b"\r\n", i)
            if j < 0:
                break
            line = data[i:j].decode("utf-8", "replace")
            i = j + 2
            m = re.search(r"\{(\d+)\+?\}$", line)
            if m:
                i += int(m.group(1))  # the literal's bytes; the command goes on after it
            out.append(line)
        return out

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def uid_count(uid_set: str) -> int:
    n = 0
    for part in uid_set.split(","):
        if ":" in part:
            a, b = part.split(":")
            if b == "*":
                return 10**9
            n += abs(int(b) - int(a)) + 1
        elif part:
            n += 1
    return n


def body_fetches(lines: list[str]) -> int:
    """Messages whose bodies were fetched (UID FETCH <set> (... BODY.PEEK[] ...))."""
    total = 0
    for line in lines:
        m = re.match(r"\S+ UID FETCH (\S+) \((.*)\)", line, re.I)
        if m and "BODY.PEEK[]" in m.group(2).upper():
            total += uid_count(m.group(1))
    return total


def migrator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MIGRATOR_SOURCE_PASSWORD": PW, "MIGRATOR_DEST_PASSWORD": PW, **(env or {})},
    )


def snap(server: DovecotServer, user: str) -> Snapshot:
    return snapshot_imap(server.host, server.imap_port, user, PW)


def last_run(state: Path) -> dict[str, int]:
    with sqlite3.connect(state) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("select * from runs order by id desc limit 1").fetchone())


@pytest.fixture
def pair(dovecot: DovecotServer, new_user):
    src, dst = new_user(dovecot, PW), new_user(dovecot, PW)
    load_maildir(generate(300, seed=21, max_attachment=100_000), dovecot.maildir(src),
                 uid=dovecot.mail_uid, gid=dovecot.mail_gid)  # fmt: skip
    dovecot.force_resync(src)
    return src, dst


def copy_args(server: DovecotServer, src: str, dst: str, state: Path, *extra: str, port: int | None = None):
    p = port or server.imap_port
    return ("copy", f"imap://{src}@{server.host}:{p}?tls=off", f"imap://{dst}@{server.host}:{p}?tls=off",
            "--state", str(state), *extra)  # fmt: skip


def imap(server: DovecotServer, user: str):
    import imapclient

    c = imapclient.IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    c.login(user, PW)
    return c


def test_mirror_follows_every_kind_of_change_and_copy_only_grows(dovecot, pair, new_user, tmp_path):
    src, dst = pair
    copy_dst = new_user(dovecot, PW)
    mirror_state, copy_state = tmp_path / "m.db", tmp_path / "c.db"
    mirror = copy_args(dovecot, src, dst, mirror_state, "--mode", "mirror", "--delete", "--force-delete")
    plain = copy_args(dovecot, src, copy_dst, copy_state)
    for args in (mirror, plain):
        out = migrator(*args)
        assert out.returncode == 0, out.stdout + out.stderr
    before = snap(dovecot, src)

    # change the source: flags, new messages, expunges, a renamed folder, a deleted folder,
    # and a UIDVALIDITY reset (a folder recreated with the same messages)
    c = imap(dovecot, src)
    c.select_folder("INBOX")
    uids = c.search("ALL")
    c.add_flags(uids[:5], [b"\\Flagged", b"Later"])
    c.remove_flags(uids[5:10], [b"\\Seen"])
    c.delete_messages(uids[10:13])
    c.uid_expunge(uids[10:13])
    for m in list(generate(5, seed=99)):
        c.append("INBOX", m.raw, flags=[b"\\Seen"], msg_time=m.internal_date)
    c.rename_folder("Reçus", "Reçus 2024")
    c.delete_folder("Stuff & Things")
    c.logout()
    dovecot.doveadm("mailbox", "rename", "-u", src, "Junk", "Junk-old")
    dovecot.doveadm("mailbox", "create", "-u", src, "Junk")
    dovecot.doveadm("copy", "-u", src, "Junk", "mailbox", "Junk-old", "all")
    dovecot.doveadm("mailbox", "delete", "-u", src, "Junk-old")
    after = snap(dovecot, src)

    out = migrator(*mirror)
    assert out.returncode == 0, out.stdout + out.stderr
    assert diff_snapshots(after, snap(dovecot, dst)) == []  # the mirror equals the changed source
    out = migrator(*plain)
    assert out.returncode == 0, out.stdout + out.stderr
    grown = snap(dovecot, copy_dst)
    # copy mode only grows: nothing of the old source is lost, the new messages arrived
    assert not [line for line in diff_snapshots(before, grown) if "missing at destination" in line]
    assert sum(len(v) for v in grown.values()) == sum(len(v) for v in before.values()) + 5 + len(after[("Reçus 2024",)])
    run = last_run(copy_state)
    assert run["copied"] == 5 + len(after[("Reçus 2024",)]) and run["failed"] == 0


def test_deletion_guard_trips_on_a_source_emptied_by_accident(dovecot, pair, tmp_path):
    src, dst = pair
    state = tmp_path / "g.db"
    mirror = copy_args(dovecot, src, dst, state, "--mode", "mirror", "--delete")
    assert migrator(*mirror).returncode == 0
    full = snap(dovecot, dst)
    c = imap(dovecot, src)
    c.select_folder("INBOX")
    uids = c.search("ALL")
    c.delete_messages(uids)
    c.uid_expunge(uids)
    c.logout()
    out = migrator(*mirror)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "deletion guard" in out.stdout and "--force-delete" in out.stdout
    assert diff_snapshots(full, snap(dovecot, dst)) == []  # nothing deleted
    forced = migrator(*mirror, "--force-delete")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert snap(dovecot, dst)[("INBOX",)] == []
    assert diff_snapshots(snap(dovecot, src), snap(dovecot, dst)) == []


def test_move_deletes_exactly_what_was_copied(dovecot, pair, tmp_path):
    src, dst = pair
    before = snap(dovecot, src)
    out = migrator(*copy_args(dovecot, src, dst, tmp_path / "mv.db", "--mode", "move"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert diff_snapshots(before, snap(dovecot, dst)) == []
    assert all(not msgs for msgs in snap(dovecot, src).values())  # every copied message left the source


def test_unchanged_mailbox_costs_no_body_fetch_and_changes_send_exactly_themselves(dovecot, pair, tmp_path):
    src, dst = pair
    tap = Tap((dovecot.host, dovecot.imap_port))
    try:
        state = tmp_path / "d.db"
        args = copy_args(dovecot, src, dst, state, "--mode", "mirror", port=tap.port)
        assert migrator(*args).returncode == 0
        tap.reset()
        t0 = time.monotonic()
        out = migrator(*args)
        elapsed = time.monotonic() - t0
        assert out.returncode == 0, out.stdout + out.stderr
        lines = tap.commands()
        verbs = Counter(re.sub(r"^\S+ (UID )?", "", line).split(" ")[0].upper() for line in lines if line)
        assert body_fetches(lines) == 0, lines
        assert not any(v in verbs for v in ("FETCH", "APPEND", "STORE", "SELECT", "EXAMINE")), verbs
        # the summary still accounts for every message, though none was listed
        assert "copied 0 message(s) (0.0 MB), 300 already there" in out.stdout, out.stdout
        # one connection per side: no folder worker logs in for folders known unchanged
        assert verbs["LOGIN"] + verbs["AUTHENTICATE"] == 2, verbs
        print(f"no-change re-run: {elapsed:.2f} s wall (process start included), commands {dict(verbs)}")

        # 20 flag changes and 20 new messages: exactly those travel
        c = imap(dovecot, src)
        c.select_folder("INBOX")
        uids = c.search("ALL")
        c.add_flags(uids[:20], [b"MirrorTest"])  # a keyword the corpus never uses
        new = list(generate(20, seed=77, max_attachment=10_000))
        for m in new:
            c.append("INBOX", m.raw, msg_time=m.internal_date)
        c.logout()
        tap.reset()
        out = migrator(*args, "--report", str(tmp_path / "r.json"))
        assert out.returncode == 0, out.stdout + out.stderr
        lines = tap.commands()
        assert body_fetches(lines) == 20
        run = last_run(state)
        assert run["copied"] == 20
        report = json.loads((tmp_path / "r.json").read_text())
        inbox = [f for m in report["mailboxes"] for f in m["folders"] if f["source"] == "INBOX"]
        assert sum(f.get("flags_changed", 0) for f in inbox) == 20, inbox
        assert diff_snapshots(snap(dovecot, src), snap(dovecot, dst)) == []
    finally:
        tap.close()


def test_first_copy_of_a_small_mailbox_takes_one_connection_pair_and_no_round_trip_per_folder_to_spare(
    dovecot, pair, tmp_path
):
    """A first copy of 300 messages (under FEW_NEW): one login per side (a folder
    worker's logins cost the server more than it would copy); per destination folder
    one round trip creates and subscribes it (no LIST before or after) and its mark
    comes from the APPENDUIDs (no STATUS), exactly its UIDVALIDITY and UIDNEXT."""
    src, dst = pair
    tap = Tap((dovecot.host, dovecot.imap_port))
    try:
        state = tmp_path / "first.db"
        out = migrator(*copy_args(dovecot, src, dst, state, port=tap.port))
        assert out.returncode == 0, out.stdout + out.stderr
        verbs = Counter(re.sub(r"^\S+ (UID )?", "", line).split(" ")[0].upper() for line in tap.commands() if line)
    finally:
        tap.close()
    assert diff_snapshots(snap(dovecot, src), snap(dovecot, dst)) == []
    c = imap(dovecot, dst)
    try:
        listed = c.list_folders()
        folders = [name for _flags, _sep, name in listed]
        uses = {b"\\Sent", b"\\Trash", b"\\Drafts", b"\\Junk", b"\\Archive"}
        special = [name for flags, _sep, name in listed if uses & set(flags)]
        subscribed = {name for _flags, _sep, name in c.list_sub_folders()}
        real = {name: c.folder_status(name, ["UIDVALIDITY", "UIDNEXT"]) for name in folders}
    finally:
        c.logout()
    created = [name for name in folders if name != "INBOX"]
    assert set(created) <= subscribed
    assert verbs["LOGIN"] + verbs["AUTHENTICATE"] == 2, verbs
    # one listing per side, and a look-up only for folders created with a special use
    # (the server may give it by name)
    assert verbs["STATUS"] == 0 and verbs["LIST"] <= 2 + len(special), (verbs, special)
    assert verbs["CREATE"] == len(created) and verbs["SUBSCRIBE"] == len(created), verbs
    with sqlite3.connect(state) as db:
        marks = {folder: (validity, uidnext) for folder, validity, uidnext in
                 db.execute("select dst_folder, validity, uidnext from marks")}  # fmt: skip
    # every folder the copy wrote into, with its numbers as the server gives them now
    want = {f: (real[f][b"UIDVALIDITY"], real[f][b"UIDNEXT"]) for f in folders if real[f][b"UIDNEXT"] > 1}
    assert {"/".join(json.loads(f)): m for f, m in marks.items()} == want
