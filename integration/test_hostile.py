"""Hostile messages (integration/hostile.py): each one is copied byte-exact or
reported (skipped or failed, with a reason in the JSON report); none is lost
silently and none stops the run. Three paths: IMAP -> IMAP, Maildir -> IMAP and
mbox -> Maildir.

What "byte-exact" means where Dovecot is involved: Dovecot stores messages with LF
line ends and serves them with CRLF, and serves a NUL byte as 0x80 (outside the
BINARY extension). So

* IMAP -> IMAP: what the destination server returns for a message (BODY[], flags,
  keywords, INTERNALDATE) equals what the source server returns for it;
* Maildir -> IMAP: what the destination returns equals what the same Dovecot
  returns for the original bytes placed in a Maildir directly (a reference
  mailbox), i.e. migrator sent the bytes as they are;
* mbox -> Maildir (no server): the Maildir file holds exactly the bytes of the mbox
  entry (mboxrd unquoted; a message that did not end with a newline has the one the
  mbox format added), with the From_ line's date as mtime.

A message the destination itself stores differently (Dovecot stores CR CR LF as CR LF,
2 bytes shorter) passes only when the report names it in ``altered_messages`` with the
sizes sent and stored, and everything but its bytes (flags, keywords, date) is intact.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import imapclient
import pytest

from integration.dovecot import DovecotServer
from integration.harness import PW, PlanMailbox, Users, check_state, forget_user, imap_url, migrator, write_plan
from integration.hostile import (
    HostileMessage,
    hostile_messages,
    mbox_content,
    name_of_maildir_key,
    write_maildir,
    write_mbox,
)
from integration.snapshot import MessageFacts, facts_of

HOSTILE_IMAP_ONLY_REFUSALS = {"empty": "zero byte"}  # Dovecot: "Can't save a zero byte message"
# Dovecot (mail_save_crlf = no) stores CR CR LF as CR LF: the destination itself cannot
# hold this message byte for byte; the report must name it (altered_messages).
DEST_ALTERS = frozenset({"cr-cr-lf"})


@pytest.fixture
def users(dovecot: DovecotServer, new_user) -> Iterator[Users]:
    """Fresh destination users, removed again after the test (tmpfs is RAM)."""
    made = Users(dovecot, new_user)
    yield made
    made.forget()


@pytest.fixture(scope="module")
def corpus() -> list[HostileMessage]:
    return hostile_messages()


def by_date(corpus: list[HostileMessage]) -> dict[datetime, HostileMessage]:
    out = {m.internal_date: m for m in corpus}
    assert len(out) == len(corpus), "internal dates identify the messages: they must be unique"
    return out


@dataclass(frozen=True)
class Seen:
    """One message as a server or a store shows it."""

    id: str
    facts: MessageFacts


def imap_inbox(server: DovecotServer, user: str) -> list[Seen]:
    """Every INBOX message (UID, exact BODY[], flags, date), one FETCH per message."""
    client = imapclient.IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=120)
    client.normalise_times = False
    try:
        client.login(user, PW)
        client.select_folder("INBOX", readonly=True)
        out = []
        for uid in sorted(client.search("ALL")):
            item = client.fetch([uid], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])[uid]
            out.append(Seen(str(uid), facts_of(item[b"BODY[]"], item[b"FLAGS"], item[b"INTERNALDATE"])))
        return out
    finally:
        client.logout()


def maildir_inbox(root: Path) -> list[Seen]:
    """Every message file of a Maildir's INBOX (exact bytes, flag letters, mtime)."""
    letters = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
    out = []
    for sub in ("new", "cur"):
        for path in sorted((root / sub).iterdir()):
            info = path.name.rpartition(":2,")[2] if ":2," in path.name else ""
            flags = [letters[c] for c in info if c in letters]
            date = datetime.fromtimestamp(int(path.stat().st_mtime), UTC)
            out.append(Seen(path.name, facts_of(path.read_bytes(), flags, date)))
    return out


@dataclass(frozen=True)
class Altered:
    """An ``altered_messages`` entry of the JSON report."""

    sent: int
    stored: int
    reason: str


@dataclass
class Accounting:
    copied: list[str]  # names at the destination (byte-exact, or altered and reported so)
    reported: dict[str, str]  # name -> reason
    lines: list[str]  # problems: lost, altered silently, twice, reported and copied
    altered: dict[str, Altered]  # at the destination as the destination altered it, reported so

    def table(self) -> str:
        rows = [f"{name}: copied byte-exact" for name in self.copied if name not in self.altered]
        rows += [f"{name}: copied, reported: {a.reason}" for name, a in sorted(self.altered.items())]
        rows += [f"{name}: reported: {reason}" for name, reason in sorted(self.reported.items())]
        return "\n".join(rows)


def check_altered(name: str, want: MessageFacts, got: MessageFacts, entry: Altered | None) -> str | None:
    """None when ``got`` is ``want`` as the destination altered it AND the report says
    so with both sizes; else what is wrong."""
    if entry is None:
        return f"{name}: altered and not reported: {want.describe()} -> {got.describe()}"
    if replace(got, sha256=want.sha256, size=want.size) != want:
        return f"{name}: more than its bytes changed: {want.describe()} -> {got.describe()}"
    if (entry.sent, entry.stored) != (want.size, got.size):
        return f"{name}: reported sent {entry.sent} / stored {entry.stored}, but {want.size} -> {got.size}"
    if f"stored {got.size:,} of {want.size:,} bytes" not in entry.reason:
        return f"{name}: the reason does not give the sizes: {entry.reason!r}"
    return None


def account(
    expected: dict[str, MessageFacts],
    dest: list[Seen],
    date_to_name: dict[datetime, str],
    reported: dict[str, str],
    altered: dict[str, Altered] | None = None,
) -> Accounting:
    """Each expected message (by name) is at the destination with exactly its facts,
    or reported (skipped or failed) with a reason; nothing is at the destination twice.
    A copy whose bytes differ passes only when ``altered`` (the report's
    altered_messages) names it with the sizes sent and stored; a byte-exact copy must
    not be named there."""
    altered = altered or {}
    at_dest: dict[str, list[MessageFacts]] = {}
    lines = []
    for seen in dest:
        name = date_to_name.get(seen.facts.internal_date)
        if name is None:
            lines.append(f"unexpected message at the destination: {seen.facts.describe()}")
            continue
        at_dest.setdefault(name, []).append(seen.facts)
    copied = []
    for name, want in expected.items():
        got = at_dest.pop(name, [])
        if len(got) > 1:
            lines.append(f"{name}: {len(got)} copies at the destination")
        if got and got[0] != want:
            problem = check_altered(name, want, got[0], altered.get(name))
            if problem:
                lines.append(problem)
        elif got and name in altered:
            lines.append(f"{name}: copied byte-exact but reported as altered: {altered[name].reason}")
        elif name in altered:
            lines.append(f"{name}: reported as altered but not at the destination")
        if got and name in reported:
            lines.append(f"{name}: at the destination but also reported: {reported[name]}")
        if got:
            copied.append(name)
        elif name not in reported:
            lines.append(f"{name}: LOST: neither at the destination nor in the report")
        elif not reported[name].strip():
            lines.append(f"{name}: reported without a reason")
    lines += [f"{name}: at the destination but not expected" for name in at_dest]
    lines += [f"{name}: reported as altered but not expected" for name in altered if name not in expected]
    return Accounting(
        copied,
        {n: r for n, r in reported.items() if n in expected},
        lines,
        {n: a for n, a in altered.items() if n in expected and n in copied},
    )


def report_entries(path: Path, id_to_name: dict[str, str]) -> tuple[dict[str, str], str]:
    """name -> reason of every skipped or failed message of the JSON report, and the
    mailbox's status."""
    data = json.loads(path.read_text(encoding="utf-8"))
    (mb,) = data["mailboxes"]
    out = {}
    entries = [
        entry
        for key in ("skipped_messages", "failed_messages", "skipped", "failed")  # the schema grew the longer names
        if isinstance(mb.get(key), list)
        for entry in mb[key]
    ]
    for entry in entries:
        name = id_to_name.get(entry["id"], f"unknown id {entry['id']}")
        out[name] = entry["reason"]
    return out, mb["status"]


def altered_entries(path: Path, id_to_name: dict[str, str]) -> dict[str, Altered]:
    """name -> the ``altered_messages`` entry of the JSON report's only mailbox."""
    (mb,) = json.loads(path.read_text(encoding="utf-8"))["mailboxes"]
    out = {}
    for entry in mb.get("altered_messages", []):
        name = id_to_name.get(entry["id"], f"unknown id {entry['id']}")
        assert name not in out, f"{name} named twice in altered_messages"
        out[name] = Altered(entry["sent_bytes"], entry["stored_bytes"], entry["reason"])
    assert mb.get("altered", 0) == len(out), "the altered count and the list disagree"
    return out


def expect_status(out, reported: dict[str, str]) -> None:
    """Exit 0 when nothing was reported as failed, 1 when some messages failed: never
    a stopped mailbox (2, 3) or a crash."""
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


# ----------------------------------------------------------------------------- IMAP -> IMAP


@pytest.fixture(scope="module")
def imap_hostile_source(dovecot: DovecotServer, corpus, _user_counter) -> Iterator[tuple[str, list[Seen]]]:
    user = f"hostile{next(_user_counter)}src"
    dovecot.add_user(user, PW)
    write_maildir(corpus, dovecot.maildir(user), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(user)
    yield user, imap_inbox(dovecot, user)
    forget_user(dovecot, user)


def test_imap_to_imap_hostile_messages(dovecot, corpus, imap_hostile_source, users, tmp_path):
    src_user, src_seen = imap_hostile_source
    names = {d: m.name for d, m in by_date(corpus).items()}
    src_names = {s.id: names[s.facts.internal_date] for s in src_seen}
    missing_at_source = sorted(set(names.values()) - set(src_names.values()))
    assert missing_at_source == [], f"Dovecot does not show these source files: {missing_at_source}"
    dst_user = users()
    state, report = tmp_path / "s.db", tmp_path / "r.json"
    args = ("copy", imap_url(dovecot, src_user), imap_url(dovecot, dst_user), "--state", str(state))
    out = migrator(*args, "--report", str(report))
    reported, status = report_entries(report, src_names)
    altered = altered_entries(report, src_names)
    expect_status(out, reported)
    expected = {src_names[s.id]: s.facts for s in src_seen}
    result = account(expected, imap_inbox(dovecot, dst_user), names, reported, altered)
    print(f"[hostile IMAP -> IMAP]\n{result.table()}")
    assert result.lines == [], "\n".join(result.lines)
    assert status == "ok", "a hostile message stopped the mailbox"
    assert set(result.altered) == DEST_ALTERS
    assert {m.name for m in corpus if not m.hostile} <= set(result.copied)
    assert set(result.reported) == set(HOSTILE_IMAP_ONLY_REFUSALS)
    for name, fragment in HOSTILE_IMAP_ONLY_REFUSALS.items():
        assert fragment in result.reported[name]
    assert out.returncode == 1  # a failed message is worth exit 1
    # again: nothing more, nothing twice
    before = Counter(s.facts for s in imap_inbox(dovecot, dst_user))
    again = migrator(*args)
    assert again.returncode in (0, 1), again.stdout + again.stderr
    assert Counter(s.facts for s in imap_inbox(dovecot, dst_user)) == before
    assert check_state(state).integrity == "ok"


def test_imap_to_imap_hostile_messages_with_lost_state(dovecot, corpus, imap_hostile_source, users, tmp_path):
    """The destination already holds the hostile messages and the state is gone: the
    first visit matches them (Message-ID + size, or content hash) instead of copying
    them twice, whatever their line ends, NULs or missing headers."""
    src_user, src_seen = imap_hostile_source
    names = {d: m.name for d, m in by_date(corpus).items()}
    src_names = {s.id: names[s.facts.internal_date] for s in src_seen}
    dst_user = users()
    args = ("copy", imap_url(dovecot, src_user), imap_url(dovecot, dst_user))
    first = migrator(*args, "--state", str(tmp_path / "a.db"))
    assert first.returncode in (0, 1), first.stdout + first.stderr
    before = Counter(s.facts for s in imap_inbox(dovecot, dst_user))
    fresh = migrator(*args, "--state", str(tmp_path / "b.db"), "--report", str(tmp_path / "b.json"))
    after = Counter(s.facts for s in imap_inbox(dovecot, dst_user))
    twice = [names[f.internal_date] for f in (after - before).elements()]
    print(f"[hostile lost state] copied twice: {twice}")
    assert twice == [], f"copied twice after losing the state: {twice}"
    reported, _ = report_entries(tmp_path / "b.json", src_names)
    assert set(reported) == set(HOSTILE_IMAP_ONLY_REFUSALS), reported
    assert fresh.returncode == 1


def test_failed_message_is_still_failed_on_the_next_run(dovecot, corpus, imap_hostile_source, users, tmp_path):
    """The empty message fails (Dovecot refuses it). Running again must retry it, or at
    least report it again: exit 0 would claim it is at the destination."""
    src_user, src_seen = imap_hostile_source
    names = {d: m.name for d, m in by_date(corpus).items()}
    dst_user = users()
    args = ("copy", imap_url(dovecot, src_user), imap_url(dovecot, dst_user), "--state", str(tmp_path / "s.db"))
    assert migrator(*args).returncode == 1
    again = migrator(*args, "--report", str(tmp_path / "again.json"))
    assert again.returncode == 1, again.stdout[-2000:]
    reported, _ = report_entries(tmp_path / "again.json", {s.id: names[s.facts.internal_date] for s in src_seen})
    assert set(reported) == set(HOSTILE_IMAP_ONLY_REFUSALS), reported


@pytest.fixture
def cr_cr_lf_source(dovecot: DovecotServer, corpus, users) -> tuple[str, list[Seen], dict[datetime, str]]:
    """A source holding a plain message and the CR CR LF one."""
    few = [m for m in corpus if m.name in ("plain-0", *DEST_ALTERS)]
    user = users()
    write_maildir(few, dovecot.maildir(user), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(user)
    return user, imap_inbox(dovecot, user), {m.internal_date: m.name for m in few}


def test_message_the_destination_alters_is_not_silent(dovecot, cr_cr_lf_source, users, tmp_path):
    """Dovecot stores the CR CR LF message 2 bytes shorter. The copy stays (it is the
    best the destination can hold) and is counted as copied, but the run names it: in
    the report's altered_messages with both sizes, as a warning problem, in the
    summary line and in the state DB; the exit code stays 0 (a re-run cannot change it)."""
    src_user, src_seen, names = cr_cr_lf_source
    dst_user = users()
    report, state = tmp_path / "r.json", tmp_path / "s.db"
    args = ("copy", imap_url(dovecot, src_user), imap_url(dovecot, dst_user), "--state", str(state))
    out = migrator(*args, "--report", str(report))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    id_to_name = {s.id: names[s.facts.internal_date] for s in src_seen}
    reported, status = report_entries(report, id_to_name)
    altered = altered_entries(report, id_to_name)
    expected = {names[s.facts.internal_date]: s.facts for s in src_seen}
    result = account(expected, imap_inbox(dovecot, dst_user), names, reported, altered)
    assert result.lines == [], "\n".join(result.lines)
    assert (status, reported, set(result.altered)) == ("ok", {}, DEST_ALTERS)
    (name,) = DEST_ALTERS
    sent, stored = altered[name].sent, altered[name].stored
    assert sent - stored == 2, altered
    data = json.loads(report.read_text(encoding="utf-8"))
    (mb,) = data["mailboxes"]
    assert (mb["copied"], mb["altered"], data["totals"]["altered"]) == (2, 1, 1)
    (problem,) = [p for p in data["problems"] if p["kind"] == "altered-message"]
    assert (problem["severity"], problem["count"], problem["folder"]) == ("warning", 1, "INBOX")
    assert f"stored {stored:,} of {sent:,} bytes" in problem["message"]
    assert mb["trouble"] == "warning"
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("migrator: exit 0:") and "copied 2 message(s)" in last, last
    assert "1 altered by the destination" in last, last
    with sqlite3.connect(state) as db:
        rows = db.execute("select status, reason from messages order by src_id").fetchall()
    assert sorted(rows, key=str) == sorted(
        [("copied", None), ("copied", f"altered by the destination: stored {stored:,} of {sent:,} bytes")], key=str
    )
    # a re-run copies nothing, names nothing new, and leaves the stored copy alone
    again = migrator(*args, "--report", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stdout[-3000:]
    assert altered_entries(tmp_path / "again.json", id_to_name) == {}
    held = Counter(names[s.facts.internal_date] for s in imap_inbox(dovecot, dst_user))
    assert held == dict.fromkeys(names.values(), 1)


def test_message_the_destination_alters_is_not_copied_twice(dovecot, cr_cr_lf_source, users, tmp_path):
    """The destination stores the CR CR LF message 2 bytes shorter, so Message-ID +
    size cannot recognise it: a lost state, or an unconfirmed send after a crash, must
    still not send it again. Recognised that way, the altered copy is named in the
    report as the first copy named it (a crash may have lost that run's report)."""
    src_user, src_seen, names = cr_cr_lf_source
    id_to_name = {s.id: names[s.facts.internal_date] for s in src_seen}
    dst_user = users()
    args = ("copy", imap_url(dovecot, src_user), imap_url(dovecot, dst_user))
    once = {name: 1 for name in names.values()}
    assert migrator(*args, "--state", str(tmp_path / "a.db")).returncode == 0
    assert Counter(names[s.facts.internal_date] for s in imap_inbox(dovecot, dst_user)) == once
    lost = migrator(*args, "--state", str(tmp_path / "b.db"), "--report", str(tmp_path / "b.json"))  # the state is lost
    assert lost.returncode == 0
    assert Counter(names[s.facts.internal_date] for s in imap_inbox(dovecot, dst_user)) == once
    assert set(altered_entries(tmp_path / "b.json", id_to_name)) == DEST_ALTERS
    with sqlite3.connect(tmp_path / "a.db") as db:  # a crash between the APPEND and its checkpoint
        assert db.execute("update messages set status = 'pending', dst_id = null").rowcount == len(once)
    crashed = migrator(*args, "--state", str(tmp_path / "a.db"), "--report", str(tmp_path / "a.json"))
    assert crashed.returncode == 0
    assert Counter(names[s.facts.internal_date] for s in imap_inbox(dovecot, dst_user)) == once
    (altered,) = altered_entries(tmp_path / "a.json", id_to_name).values()
    assert altered.sent - altered.stored == 2, altered
    with sqlite3.connect(tmp_path / "a.db") as db:
        reasons = dict(db.execute("select status, reason from messages where reason is not null"))
    assert reasons == {"matched": altered.reason}, reasons


def test_refused_message_alone_in_its_batch_does_not_stop_the_mailbox(dovecot, corpus, users, tmp_path):
    """``batch_messages: 1``: the empty message is refused in a batch of its own; it
    fails alone and the messages after it are still copied."""
    few = [m for m in corpus if m.name in ("plain-0", "empty", "nul-in-body")]
    src_user, dst_user = users(), users()
    write_maildir(few, dovecot.maildir(src_user), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(src_user)
    plan = write_plan(
        tmp_path / "plan.yaml", dovecot, [PlanMailbox("box", src_user, dst_user)], defaults="{batch_messages: 1}"
    )
    report = tmp_path / "r.json"
    out = migrator("run", str(plan), "--report", str(report))
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    src_seen = imap_inbox(dovecot, src_user)
    names = {m.internal_date: m.name for m in few}
    reported, status = report_entries(report, {s.id: names[s.facts.internal_date] for s in src_seen})
    assert status == "ok", out.stdout[-3000:]
    assert list(reported) == ["empty"]
    held = sorted(names[s.facts.internal_date] for s in imap_inbox(dovecot, dst_user))
    assert held == ["nul-in-body", "plain-0"]


# ----------------------------------------------------------------------------- Maildir -> IMAP


def test_maildir_to_imap_hostile_messages(dovecot, corpus, users, tmp_path):
    """A plan with ``filters.max_size: 50MB``: the 60 MB message is skipped with that
    reason; everything else is copied as Dovecot shows the original bytes."""
    names = {d: m.name for d, m in by_date(corpus).items()}
    source = tmp_path / "Maildir"
    write_maildir(corpus, source)
    reference = users()
    write_maildir(corpus, dovecot.maildir(reference), uid=dovecot.mail_uid, gid=dovecot.mail_gid)
    dovecot.force_resync(reference)
    expected = {names[s.facts.internal_date]: s.facts for s in imap_inbox(dovecot, reference)}
    dst_user = users()
    plan = write_plan(
        tmp_path / "plan.yaml",
        dovecot,
        [PlanMailbox("box", "local", dst_user)],
        src_type="maildir",
        src_path=source,
        defaults="{filters: {max_size: 50MB}}",
    )
    report = tmp_path / "r.json"
    out = migrator("run", str(plan), "--report", str(report))
    keys = {f.name.partition(":2,")[0]: name_of_maildir_key(f.name) or "?" for f in (source / "cur").iterdir()}
    reported, status = report_entries(report, keys)
    expect_status(out, reported)
    result = account(expected, imap_inbox(dovecot, dst_user), names, reported, altered_entries(report, keys))
    print(f"[hostile Maildir -> IMAP]\n{result.table()}")
    assert result.lines == [], "\n".join(result.lines)
    assert status == "ok"
    assert set(result.reported) == {"huge-60mb", *HOSTILE_IMAP_ONLY_REFUSALS}
    assert "max_size" in result.reported["huge-60mb"]
    assert set(result.altered) == DEST_ALTERS
    assert {m.name for m in corpus if not m.hostile} <= set(result.copied)


# ----------------------------------------------------------------------------- mbox -> Maildir


def test_mbox_to_maildir_hostile_messages(corpus, tmp_path):
    names = {d: m.name for d, m in by_date(corpus).items()}
    mbox = tmp_path / "hostile.mbox"
    write_mbox(corpus, mbox)
    out_dir = tmp_path / "out"
    report = tmp_path / "r.json"
    args = ("copy", f"mbox:{mbox}", f"maildir:{out_dir}", "--state", str(tmp_path / "s.db"))
    out = migrator(*args, "--report", str(report))
    expected = {m.name: facts_of(mbox_content(m.raw), [], m.internal_date) for m in corpus}
    ids: dict[str, str] = {}
    seen: Counter[str] = Counter()
    for m in corpus:
        digest = hashlib.sha256(mbox_content(m.raw)).hexdigest()[:24]
        seen[digest] += 1
        ids[f"{digest}-{seen[digest]}"] = m.name
    reported, status = report_entries(report, ids)
    expect_status(out, reported)
    result = account(expected, maildir_inbox(out_dir), names, reported)
    print(f"[hostile mbox -> Maildir]\n{result.table()}")
    assert result.lines == [], "\n".join(result.lines)
    assert status == "ok"
    assert result.reported == {}, "a local Maildir can hold every message"
    assert out.returncode == 0, out.stdout + out.stderr
    again = migrator(*args)
    assert again.returncode == 0 and "copied 0 message(s)" in again.stdout, again.stdout
    assert len(maildir_inbox(out_dir)) == len(corpus)


def test_hostile_corpus_is_what_it_claims(corpus):
    """The corpus really contains each hazard the issue lists."""
    by = {m.name: m.raw for m in corpus}
    assert b"\x00" in by["nul-in-body"] and b"\x00" in by["nul-in-header"]
    assert b"\r\n" not in by["bare-lf"] and b"\n" in by["bare-lf"]
    assert b"\r" in by["bare-cr"].replace(b"\r\n", b"")
    assert any(b > 127 for b in by["8bit-headers"].partition(b"\r\n\r\n")[0])
    assert b"=?utf-8?q?unterminated" in by["bad-encoded-words"]
    assert b":" not in by["no-headers"].split(b"\r\n")[0]
    assert max(len(line) for line in by["header-line-150kb"].split(b"\r\n")) > 100_000
    assert len(by["header-over-100kb"].partition(b"\r\n\r\n")[0]) > 100_000
    assert max(len(line) for line in by["line-20k"].split(b"\r\n")) > 10_000
    assert b'boundary="nope"' in by["mime-boundary-never-used"] and b"--nope" not in by["mime-boundary-never-used"]
    assert len(by["huge-60mb"]) >= 60_000_000
    assert by["empty"] == b""
