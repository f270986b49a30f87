"""Pure tests (no server) of the corpus generator, the Maildir loader and the comparer."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from imapclient import imap_utf7

from integration.corpus import (
    EMPTY_FOLDERS,
    FOLDERS,
    INBOX,
    KEYWORDS,
    NONEMPTY_FOLDERS,
    CorpusMessage,
    generate,
    load_maildir,
    maildir_dir_name,
)
from integration.snapshot import (
    MessageFacts,
    Snapshot,
    diff_snapshots,
    facts_of,
    snapshot_corpus,
)

MAX_ATTACHMENT = 5 * 1024 * 1024


@dataclass(frozen=True)
class Summary:
    """Per-message facts of generate(2000) (bodies are not kept)."""

    folder: tuple[str, ...]
    flags: frozenset[str]
    date: datetime
    sha: str
    size: int
    message_id: bytes | None
    eight_bit_header: bool
    crlf_only: bool
    header: bytes


def _summarise(m: CorpusMessage) -> Summary:
    head = m.raw.split(b"\r\n\r\n", 1)[0]
    mid = re.search(rb"^Message-ID: (.*)$", head, re.MULTILINE | re.IGNORECASE)
    stripped = m.raw.replace(b"\r\n", b"")
    return Summary(
        folder=m.folder,
        flags=m.flags,
        date=m.internal_date,
        sha=facts_of(m.raw, m.flags, m.internal_date).sha256,
        size=len(m.raw),
        message_id=mid.group(1).strip() if mid else None,
        eight_bit_header=any(b >= 0x80 for b in head),
        crlf_only=b"\r" not in stripped and b"\n" not in stripped,
        header=head,
    )


@pytest.fixture(scope="module")
def corpus2000() -> list[Summary]:
    return [_summarise(m) for m in generate(2000, seed=1, max_attachment=MAX_ATTACHMENT)]


# ----------------------------------------------------------------------------- generator


def test_same_seed_same_bytes_and_prefix_property() -> None:
    a = list(generate(60, seed=7))
    assert a == list(generate(60, seed=7))
    assert list(generate(25, seed=7)) == a[:25]
    other = list(generate(60, seed=8))
    assert [m.raw for m in other] != [m.raw for m in a]


def test_every_message_uses_crlf_only(corpus2000: list[Summary]) -> None:
    assert all(s.crlf_only for s in corpus2000)


def test_true_duplicates_exist(corpus2000: list[Summary]) -> None:
    by_sha = Counter(s.sha for s in corpus2000)
    dups = [sha for sha, n in by_sha.items() if n > 1]
    assert 5 <= len(dups) <= 60
    # message 14 is a byte copy of message 3
    assert corpus2000[14].sha == corpus2000[3].sha


def test_distinct_messages_share_message_ids(corpus2000: list[Summary]) -> None:
    shas_by_mid: dict[bytes, set[str]] = {}
    for s in corpus2000:
        if s.message_id is not None:
            shas_by_mid.setdefault(s.message_id, set()).add(s.sha)
    shared = [mid for mid, shas in shas_by_mid.items() if len(shas) > 1]
    assert len(shared) >= 2
    assert corpus2000[19].message_id == corpus2000[2].message_id
    assert corpus2000[19].sha != corpus2000[2].sha


def test_some_messages_lack_message_id(corpus2000: list[Summary]) -> None:
    missing = [i for i, s in enumerate(corpus2000) if s.message_id is None]
    assert 5 in missing
    assert 3 <= len(missing) <= 40


def test_raw_8bit_headers_and_rfc2047(corpus2000: list[Summary]) -> None:
    eight = [s for s in corpus2000 if s.eight_bit_header]
    assert corpus2000[9].eight_bit_header
    assert 20 <= len(eight) <= 150
    assert any("ü".encode() in s.header for s in eight)
    assert sum(b"=?UTF-8?B?" in s.header for s in corpus2000) > 50
    assert sum(b"=?UTF-8?Q?" in s.header for s in corpus2000) > 30


def test_size_mix_and_large_attachment(corpus2000: list[Summary]) -> None:
    sizes = sorted(s.size for s in corpus2000)
    assert 2 * 1024 <= sizes[len(sizes) // 2] <= 60 * 1024
    assert sizes[-1] >= MAX_ATTACHMENT * 4 // 3  # base64 of ~max_attachment bytes
    assert corpus2000[1999].size == sizes[-1]
    with_attachment = sum(b"multipart/mixed" in s.header for s in corpus2000)
    assert 0.10 * 2000 <= with_attachment <= 0.20 * 2000
    assert sum(s.size > 100 * 1024 for s in corpus2000) >= 15


def test_every_nonempty_folder_used_and_empty_ones_not(corpus2000: list[Summary]) -> None:
    used = {s.folder for s in corpus2000}
    assert used == set(NONEMPTY_FOLDERS)
    assert not used & set(EMPTY_FOLDERS)
    assert set(FOLDERS) == set(NONEMPTY_FOLDERS) | set(EMPTY_FOLDERS)
    for folder in FOLDERS:  # every parent is itself a folder
        assert all(folder[:d] in FOLDERS for d in range(1, len(folder)))


def test_flags_keywords_and_drafts(corpus2000: list[Summary]) -> None:
    all_flags = Counter(f for s in corpus2000 for f in s.flags)
    for flag in ("\\Seen", "\\Flagged", "\\Answered", "\\Draft", *KEYWORDS):
        assert all_flags[flag] > 0, flag
    assert "\\Deleted" not in all_flags
    drafts = [s for s in corpus2000 if "\\Draft" in s.flags]
    assert sum(s.folder == ("Drafts",) for s in drafts) > len(drafts) / 2
    assert {"$Forwarded", "Work"} <= corpus2000[23].flags


def test_internal_dates(corpus2000: list[Summary]) -> None:
    lo, hi = datetime(2010, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
    assert all(s.date.tzinfo is not None and s.date.microsecond == 0 for s in corpus2000)
    assert all(lo <= s.date < hi for s in corpus2000)
    assert len({s.date.utcoffset() for s in corpus2000}) >= 8


def test_mime_structures_parse_cleanly() -> None:
    kinds: Counter[str] = Counter()
    for m in generate(300, seed=3, max_attachment=200 * 1024):
        msg = email.message_from_bytes(m.raw, policy=email.policy.compat32)
        assert not msg.defects
        for part in msg.walk():
            kinds[part.get_content_type()] += 1
            kinds[str(part.get("Content-Transfer-Encoding", "")).lower()] += 1
            assert not part.defects
            if not part.is_multipart():
                assert part.get_payload(decode=True) is not None
    for kind in ("multipart/alternative", "multipart/mixed", "text/html", "base64", "quoted-printable", "8bit"):
        assert kinds[kind] > 0, kind


# ----------------------------------------------------------------------------- maildir


_LETTER_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}


def _read_maildir(root: Path) -> Snapshot:
    """Independent reader of the files load_maildir writes (Dovecot's interpretation)."""
    out: dict[tuple[str, ...], list[MessageFacts]] = {}
    boxes = [(INBOX, root)] + [
        (tuple(imap_utf7.decode(p.encode()) for p in d.name[1:].split(".")), d)
        for d in root.iterdir()
        if d.is_dir() and d.name.startswith(".")
    ]
    for folder, box in boxes:
        kw_file = box / "dovecot-keywords"
        kwmap = {}
        if kw_file.exists():
            for line in kw_file.read_text().splitlines():
                idx, name = line.split(" ", 1)
                kwmap[chr(ord("a") + int(idx))] = name
        assert not any((box / "new").iterdir())
        facts = []
        for f in (box / "cur").iterdir():
            base, letters = f.name.split(":2,")
            fields = dict(x.split("=") for x in base.split(",")[1:])
            raw = f.read_bytes()
            assert int(fields["S"]) == len(raw) == int(fields["W"])
            assert list(letters) == sorted(letters)
            flags = {_LETTER_FLAGS.get(c) or kwmap[c] for c in letters}
            date = datetime.fromtimestamp(os.stat(f).st_mtime, UTC)
            facts.append(facts_of(raw, flags, date))
        out[folder] = facts
    return out


def test_load_maildir_round_trips(tmp_path: Path) -> None:
    messages = list(generate(300, seed=5, max_attachment=150 * 1024))
    summary = load_maildir(messages, tmp_path / "Maildir", uid=-1, gid=-1)
    assert summary["messages"] == 300
    assert summary["bytes"] == sum(len(m.raw) for m in messages)
    assert diff_snapshots(snapshot_corpus(messages), _read_maildir(tmp_path / "Maildir")) == []
    subs = (tmp_path / "Maildir" / "subscriptions").read_text().splitlines()
    assert subs[:2] == ["V\t2", ""]
    assert "&ZeVnLIqe-\t&MOEw,DDr-" in subs  # 日本語/メール
    assert (tmp_path / "Maildir" / ".Stuff &- Things" / "maildirfolder").exists()
    assert (tmp_path / "Maildir" / ".Empty" / "cur").is_dir()


def test_load_maildir_courier_layout_and_keyword_letters(tmp_path: Path) -> None:
    date = datetime(2015, 6, 1, 12, 0, 5, tzinfo=timezone(timedelta(hours=-7)))
    msgs = [
        CorpusMessage(("Archive", "2019"), frozenset({"\\Seen", "Work", "$Forwarded"}), date, b"A: 1\r\n\r\nx\r\n"),
        CorpusMessage(("Archive", "2019"), frozenset({"Later", "\\Draft"}), date, b"A: 2\r\n\r\ny\r\n"),
    ]
    load_maildir(msgs, tmp_path, layout="courier", uid=-1, gid=-1, folders=[INBOX])
    box = tmp_path / ".Archive.2019"
    keywords = dict(line.split(" ", 1)[::-1] for line in (box / "dovecot-keywords").read_text().splitlines())
    names = sorted(p.name.split(":2,")[1] for p in (box / "cur").iterdir())
    letter = {k: chr(ord("a") + int(v)) for k, v in keywords.items()}
    assert names == sorted(["".join(sorted("S" + letter["Work"] + letter["$Forwarded"])), "D" + letter["Later"]])
    assert all(int(p.stat().st_mtime) == int(date.timestamp()) for p in (box / "cur").iterdir())
    assert "INBOX.Archive.2019" in (tmp_path / "courierimapsubscribed").read_text().splitlines()


def test_load_maildir_rejects_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout"):
        load_maildir([], tmp_path, layout="fs", uid=-1, gid=-1)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_maildir_dir_name_rejects_dots() -> None:
    assert maildir_dir_name(("Reçus",)) == ".Re&AOc-us"
    with pytest.raises(ValueError, match="cannot be stored"):
        maildir_dir_name(("a.b",))


# ----------------------------------------------------------------------------- diff


def _base() -> Snapshot:
    return snapshot_corpus(generate(40, seed=11))


def _first(snap: Snapshot) -> tuple[tuple[str, ...], int]:
    folder = next(f for f, msgs in snap.items() if msgs)
    return folder, 0


def _replace(snap: Snapshot, **changes: object) -> Snapshot:
    folder, idx = _first(snap)
    out = {f: list(m) for f, m in snap.items()}
    out[folder][idx] = dataclasses.replace(out[folder][idx], **changes)
    return out


def _changed_byte(s: Snapshot) -> Snapshot:
    folder, idx = _first(s)
    m = s[folder][idx]
    raw_sha = facts_of(b"other bytes", m.flags | m.keywords, m.internal_date).sha256
    return _replace(s, sha256=raw_sha)


def _lost_flag(s: Snapshot) -> Snapshot:
    folder, idx = _first(s)
    return _replace(s, flags=s[folder][idx].flags ^ {"\\Flagged"})


def _lost_keyword(s: Snapshot) -> Snapshot:
    folder, idx = _first(s)
    return _replace(s, keywords=s[folder][idx].keywords ^ {"Work"})


def _shifted_date(s: Snapshot) -> Snapshot:
    folder, idx = _first(s)
    return _replace(s, internal_date=s[folder][idx].internal_date + timedelta(hours=1))


def _missing_duplicate(s: Snapshot) -> Snapshot:
    # the source holds the message twice (see _with_duplicate); the destination once
    return s


def _with_duplicate(s: Snapshot) -> Snapshot:
    folder, idx = _first(s)
    out = {f: list(m) for f, m in s.items()}
    out[folder].append(out[folder][idx])
    return out


def _extra_message(s: Snapshot) -> Snapshot:
    out = {f: list(m) for f, m in s.items()}
    out[INBOX].append(facts_of(b"Subject: new\r\n\r\nx\r\n", [], datetime(2020, 1, 1, tzinfo=UTC)))
    return out


def _missing_folder(s: Snapshot) -> Snapshot:
    return {f: m for f, m in s.items() if f != ("Archive", "2019")}


def _missing_empty_folder(s: Snapshot) -> Snapshot:
    return {f: m for f, m in s.items() if f != ("Empty",)}


def _extra_folder(s: Snapshot) -> Snapshot:
    return {**s, ("Neu",): []}


Mutation = Callable[[Snapshot], Snapshot]


@pytest.mark.parametrize(
    ("mutate_src", "mutate_dst", "expected"),
    [
        (None, _changed_byte, ["missing at destination", "extra at destination"]),
        (None, _lost_flag, ["changed: flags"]),
        (None, _lost_keyword, ["changed: keywords"]),
        (None, _shifted_date, ["changed: date"]),
        (_with_duplicate, _missing_duplicate, ["missing at destination"]),
        (None, _extra_message, ["INBOX: message", "extra at destination"]),
        (None, _missing_folder, ["Archive/2019: folder missing at destination"]),
        (None, _missing_empty_folder, ["Empty: folder missing at destination (0 messages)"]),
        (None, _extra_folder, ["Neu: folder extra at destination"]),
    ],
    ids=[
        "changed-byte",
        "lost-flag",
        "lost-keyword",
        "shifted-date",
        "missing-duplicate",
        "extra-message",
        "missing-folder",
        "missing-empty-folder",
        "extra-folder",
    ],
)
def test_diff_detects(mutate_src: Mutation | None, mutate_dst: Mutation, expected: list[str]) -> None:
    src = _base()
    if mutate_src is not None:
        src = mutate_src(src)
    dst = mutate_dst(_base())
    lines = diff_snapshots(src, dst)
    assert lines, "difference not detected"
    text = "\n".join(lines)
    for fragment in expected:
        assert fragment in text
    assert diff_snapshots(src, src) == []


def test_diff_counts_line_for_changed_folder() -> None:
    src = _with_duplicate(_base())
    folder, _ = _first(src)
    lines = diff_snapshots(src, _base())
    n = len(src[folder])
    assert f"{'/'.join(folder)}: {n} messages at source, {n - 1} at destination" in lines


def test_diff_ignores_order_recent_and_zone() -> None:
    src = _base()
    dst = {f: list(reversed(m)) for f, m in src.items()}
    assert diff_snapshots(src, dst) == []
    when = datetime(2019, 3, 1, 10, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    a = facts_of(b"x", ["\\Seen", "\\Recent", "Work"], when)
    b = facts_of(b"x", ["\\SEEN", "Work"], when.astimezone(timezone(timedelta(hours=-5))))
    assert a == b
    assert a.flags == {"\\Seen"} and a.keywords == {"Work"}
    assert a.internal_date.tzinfo == UTC


def test_diff_truncates_to_max_lines() -> None:
    src = _base()
    dst: Snapshot = {f: [] for f in src}
    lines = diff_snapshots(src, dst, max_lines=5)
    assert len(lines) == 5
    assert re.fullmatch(r"\.\.\. and \d+ more difference lines", lines[-1])
