"""Maildir and mbox connectors: hostile names, byte-exact round trips, flags, dates, ids,
Dovecot and Thunderbird layouts, and dry-run safety (nothing is created by reads)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient import imap_utf7

from migrator.connectors import local
from migrator.connectors.base import Destination, Role, open_store
from migrator.errors import ConnectError, FolderError, QuotaError
from migrator.model import Account, FolderInfo, MessageMeta, crlf_size

KINDS = ["maildir", "mbox"]
INBOX = ("INBOX",)


def store(kind: str, path: Path, role: Role = "destination") -> Destination:
    return open_store(Account(type=kind, path=str(path)), role)


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (to prove that reads create nothing)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


MESSAGES: list[tuple[str, bytes]] = [
    ("crlf", b"Subject: crlf\r\nMessage-ID: <a@x>\r\n\r\nline 1\r\nline 2\r\n"),
    ("bare-lf", b"Subject: lf\nMessage-ID: <b@x>\n\nline\n"),
    ("mixed", b"Subject: mixed\r\n\nbody\r\nmore\n\r\n"),
    ("from-lines", b"Subject: f\n\nFrom here\n>From there\n>>From everywhere\nFrom\n"),
    ("from-first-line", b"From someone\nSubject: q\n\n\nFrom x\n\n"),
    ("8bit-header", b"Subject: Gr\xfc\xdfe \xe6\x97\xa5\xff\nFrom: J\xf6rg <j@x>\n\nk\xe4se\n"),
    ("no-trailing-newline", b"Subject: nt\n\nno newline at the end"),
    ("headers-only-no-newline", b"Subject: only"),
    ("empty-body", b"Subject: empty\n\n"),
    ("empty", b""),
    ("lone-cr", b"Subject: cr\r\n\r\nend\r"),
    ("cr-only", b"\r"),
    ("own-status-headers", b"Status: RO\nX-Status: A\nX-Keywords: old\nSubject: s\n\nb\n"),
    ("own-marker", b"X-Migrator-Meta: v=1 trim=3\r\n\r\n"),
    ("trailing-blank-lines", b"Subject: t\n\nbody\n\n\n"),
]
FLAG_SETS = [
    frozenset(),
    frozenset({"\\Seen"}),
    frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "$Forwarded", "Work"}),
]
DATE = datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.mark.parametrize("kind", KINDS)
def test_byte_exact_round_trip_with_flags_and_dates(kind: str, tmp_path: Path) -> None:
    dst = store(kind, tmp_path / "out")
    folder = dst.ensure_folder(INBOX)
    items = [
        (MessageMeta(id="", size=0, flags=FLAG_SETS[i % 3], internal_date=DATE.replace(year=2000 + i)), raw)
        for i, (_, raw) in enumerate(MESSAGES)
    ]
    ids = dst.append(folder, items)
    assert len(set(ids)) == len(MESSAGES) and all(ids)

    src = store(kind, tmp_path / "out", "source")
    listed = {m.id: m for m in src.list_messages(folder)}
    fetched = {m.id: (m, raw) for m, raw in src.fetch(folder, list(listed.values()))}
    for new_id, (meta, raw), (name, _) in zip(ids, items, MESSAGES, strict=True):
        got_meta, got_raw = fetched[new_id]
        assert got_raw == raw, name
        assert got_meta.flags == meta.flags, name
        assert got_meta.internal_date == meta.internal_date, name
        assert got_meta.size == crlf_size(raw), name
        assert listed[new_id] == got_meta, name


@pytest.mark.parametrize("kind", KINDS)
def test_message_id_and_size_listed(kind: str, tmp_path: Path) -> None:
    dst = store(kind, tmp_path / "out")
    folder = dst.ensure_folder(("Sent",))
    raw = b"Subject: x\nMessage-ID:\n <folded@example.org>\n\nbody\n"
    dst.append(folder, [(MessageMeta(id="", size=0), raw)])
    (meta,) = dst.list_messages(folder)
    assert meta.message_id == "<folded@example.org>"
    assert meta.size == len(raw) + raw.count(b"\n")
    assert dst.find_folder(("Sent",)) == FolderInfo(("Sent",), special_use="\\Sent")


HOSTILE_FOLDERS: list[tuple[tuple[str, ...], str, str]] = [
    # path, Maildir directory name, mbox file (relative)
    (("Stuff & Things",), ".Stuff &- Things", "Stuff & Things"),
    (("Entwürfe",), ".Entw&APw-rfe", "Entwürfe"),
    (
        ("日本語", "台北"),
        ".{}.{}".format(imap_utf7.encode("日本語").decode(), imap_utf7.encode("台北").decode()),
        "日本語.sbd/台北",
    ),
    (("Archive", "2023"), ".Archive.2023", "Archive.sbd/2023"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("path", "maildir_name", "mbox_name"), HOSTILE_FOLDERS)
def test_hostile_folder_names(
    kind: str, path: tuple[str, ...], maildir_name: str, mbox_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "out"
    dst = store(kind, root)
    assert dst.find_folder(path) is None
    folder = dst.ensure_folder(path)
    assert folder.path == path
    assert (root / (maildir_name if kind == "maildir" else mbox_name)).exists()
    dst.append(folder, [(MessageMeta(id="", size=0), b"Subject: hi\n\nx\n")])
    again = store(kind, root, "source")
    listed = {f.path: f for f in again.list_folders()}
    assert listed[path].selectable
    for i in range(1, len(path)):
        assert path[:i] in listed  # parents are created too
    assert [raw for _, raw in again.fetch(folder, again.list_messages(folder))] == [b"Subject: hi\n\nx\n"]


@pytest.mark.parametrize(
    ("kind", "path"),
    [("maildir", ("a.b",)), ("maildir", ("a/b",)), ("mbox", ("a/b",)), ("mbox", (".hidden",)), ("mbox", ("x.msf",))],
)
def test_unstorable_name_parts_raise_folder_error(kind: str, path: tuple[str, ...], tmp_path: Path) -> None:
    dst = store(kind, tmp_path / "out")
    with pytest.raises(FolderError, match="cannot be stored"):
        dst.ensure_folder(path)


def test_forbidden_chars_are_declared() -> None:
    assert set(local.MaildirStore.capabilities.forbidden_name_chars) == {".", "/"}
    assert local.MboxStore.capabilities.forbidden_name_chars == "/"
    assert local.MaildirStore.capabilities.append_returns_id
    # A "." is fine in an mbox name part.
    assert local.MboxStore.capabilities.folders


def test_mbox_keeps_dot_in_name(tmp_path: Path) -> None:
    dst = store("mbox", tmp_path / "out")
    dst.ensure_folder(("v1.2",))
    assert (tmp_path / "out" / "v1.2").is_file()
    assert [f.path for f in store("mbox", tmp_path / "out", "source").list_folders()] == [("v1.2",)]


@pytest.mark.parametrize("kind", KINDS)
def test_ensure_folder_is_idempotent(kind: str, tmp_path: Path) -> None:
    dst = store(kind, tmp_path / "out")
    first = dst.ensure_folder(("A", "B"))
    dst.append(first, [(MessageMeta(id="", size=0), b"Subject: keep\n\n")])
    second = dst.ensure_folder(("A", "B"))
    assert first == second
    assert [f.path for f in dst.list_folders()].count(("A", "B")) == 1
    assert len(dst.list_messages(second)) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_reads_on_missing_destination_create_nothing(kind: str, tmp_path: Path) -> None:
    root = tmp_path / "not-yet"
    dst = store(kind, root)
    assert dst.find_folder(INBOX) is None
    assert dst.find_folder(("Sent",)) is None
    assert dst.list_folders() == []
    with pytest.raises(FolderError):
        dst.list_messages(FolderInfo(INBOX))
    with pytest.raises(FolderError):
        list(dst.fetch(FolderInfo(("X",)), [MessageMeta(id="1", size=1)]))
    dst.close()
    dst.close()
    assert not root.exists()
    assert tree(tmp_path) == []


@pytest.mark.parametrize("kind", KINDS)
def test_missing_source_root_is_connect_error(kind: str, tmp_path: Path) -> None:
    with pytest.raises(ConnectError, match=str(tmp_path / "nope")):
        store(kind, tmp_path / "nope", "source")


def test_maildir_refuses_non_maildir_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConnectError, match="not a Maildir"):
        store("maildir", tmp_path, "destination")
    with pytest.raises(ConnectError, match="not a Maildir"):
        store("maildir", tmp_path, "source")


@pytest.mark.parametrize("kind", KINDS)
def test_ids_stable_across_opens(kind: str, tmp_path: Path) -> None:
    dst = store(kind, tmp_path / "out")
    folder = dst.ensure_folder(INBOX)
    dst.append(folder, [(MessageMeta(id="", size=0), b"Subject: %d\n\n" % i) for i in range(5)])
    first = [m.id for m in store(kind, tmp_path / "out", "source").list_messages(folder)]
    second = [m.id for m in store(kind, tmp_path / "out", "source").list_messages(folder)]
    assert sorted(first) == sorted(second) and len(set(first)) == 5


def test_mbox_ids_independent_of_positions_and_duplicates_counted(tmp_path: Path) -> None:
    dst = store("mbox", tmp_path / "out")
    folder = dst.ensure_folder(INBOX)
    dup = b"Subject: same\n\nsame\n"
    ids = dst.append(folder, [(MessageMeta(id="", size=0), raw) for raw in (b"Subject: a\n\n", dup, dup)])
    assert ids[1].endswith("-1") and ids[2].endswith("-2") and ids[1][:-2] == ids[2][:-2]
    # Removing the first message (rewriting the file) leaves the others' ids unchanged.
    path = tmp_path / "out" / "Inbox"
    data = path.read_bytes()
    path.write_bytes(data[data.index(b"From ", 1) :])
    assert [m.id for m in store("mbox", tmp_path / "out", "source").list_messages(folder)] == ids[1:]
    # Ids returned by a later append agree with a fresh listing.
    more = dst.append(folder, [(MessageMeta(id="", size=0), dup)])
    assert more == [ids[1][:-2] + "-3"]
    assert [m.id for m in dst.list_messages(folder)] == [*ids[1:], *more]


def test_mbox_flag_change_keeps_id(tmp_path: Path) -> None:
    raw = b"Subject: a\n\nbody\n"
    for flags in (frozenset(), frozenset({"\\Seen", "Work"})):
        dst = store("mbox", tmp_path / str(len(flags)))
        dst.append(dst.ensure_folder(INBOX), [(MessageMeta(id="", size=0, flags=flags), raw)])
    a = store("mbox", tmp_path / "0", "source").list_messages(FolderInfo(INBOX))
    b = store("mbox", tmp_path / "2", "source").list_messages(FolderInfo(INBOX))
    assert a[0].id == b[0].id and a[0].size == b[0].size and a[0].flags != b[0].flags


def test_mbox_fetch_by_offset_and_after_the_file_changed(tmp_path: Path) -> None:
    originals = [f"Subject: m{i}\nMessage-ID: <o{i}@x>\n\nFrom body {i}\n".encode() for i in range(60)]
    originals[7] = originals[3]  # a true duplicate keeps its own id
    dst = store("mbox", tmp_path / "m")
    dst.append(dst.ensure_folder(INBOX), [(MessageMeta(id="", size=0), raw) for raw in originals])
    src = store("mbox", tmp_path / "m", "source")
    listed = src.list_messages(FolderInfo(INBOX))
    assert len({m.id for m in listed}) == 60
    got = [raw for i in range(0, 60, 7) for _, raw in src.fetch(FolderInfo(INBOX), listed[i : i + 7])]
    assert got == originals
    path = tmp_path / "m" / "Inbox"
    path.write_bytes(b"From x Mon Jan  1 00:00:00 2024\nSubject: new\n\nnew\n\n" + path.read_bytes())
    moved = src.fetch(FolderInfo(INBOX), [listed[7], listed[10]])  # offsets shifted: read through again
    assert [(m.id, raw) for m, raw in moved] == [(listed[7].id, originals[7]), (listed[10].id, originals[10])]
    path.write_bytes(b"")
    assert list(src.fetch(FolderInfo(INBOX), listed)) == []


# -------------------------------------------------------------- foreign stores


def test_reads_dovecot_maildir(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
        (root / ".Entw&APw-rfe" / sub).mkdir(parents=True)
    (root / ".Entw&APw-rfe" / "maildirfolder").touch()
    (root / "dovecot-uidlist").write_text("3 V1 N2\n")
    (root / "dovecot.index.log").write_bytes(b"\0\1")
    (root / "dovecot-keywords").write_text("0 $Forwarded\n1 Work\n2 $Junk\n")
    raw = b"Message-ID: <d@x>\nSubject: dovecot\n\nhello\n"
    name = f"1700000000.M12P34.host,S={len(raw)},W={crlf_size(raw)}:2,RSac"
    (root / "cur" / name).write_bytes(raw)
    os.utime(root / "cur" / name, (1600000000, 1600000000))
    # ",W=" is trusted for the size (Dovecot's rule): this one lies on purpose.
    (root / "new" / "1700000001.M1P2.host,S=3,W=999").write_bytes(b"a\nb")
    (root / "cur" / "plain-name:2,").write_bytes(b"x\n")

    src = store("maildir", root, "source")
    assert [(f.path, f.selectable) for f in src.list_folders()] == [(INBOX, True), (("Entwürfe",), True)]
    listed = {m.id: m for m in src.list_messages(FolderInfo(INBOX))}
    assert set(listed) == {name.split(":")[0], "1700000001.M1P2.host,S=3,W=999", "plain-name"}
    meta = listed[name.split(":")[0]]
    assert meta.flags == {"\\Answered", "\\Seen", "$Forwarded", "$Junk"}
    assert meta.internal_date == datetime.fromtimestamp(1600000000, UTC)
    assert meta.message_id == "<d@x>" and meta.size == crlf_size(raw)
    assert listed["1700000001.M1P2.host,S=3,W=999"].size == 999
    assert listed["plain-name"].size == 3 and listed["plain-name"].flags == frozenset()
    [(fresh, body)] = src.fetch(FolderInfo(INBOX), [meta])
    assert body == raw and fresh.flags == meta.flags


def test_maildir_append_extends_dovecot_keywords(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    dst = store("maildir", root)
    folder = dst.ensure_folder(("Work",))
    (root / ".Work" / "dovecot-keywords").write_text("0 $Forwarded\n")
    (key,) = dst.append(folder, [(MessageMeta(id="", size=0, flags=frozenset({"$Forwarded", "New", "\\Seen"})), b"x")])
    assert (root / ".Work" / "dovecot-keywords").read_text() == "0 $Forwarded\n1 New\n"
    (path,) = (root / ".Work" / "cur").iterdir()
    assert path.name == f"{key}:2,Sab"
    assert (root / ".Work" / "maildirfolder").exists()
    assert os.listdir(root / ".Work" / "tmp") == []


def test_reads_thunderbird_layout(tmp_path: Path) -> None:
    root = tmp_path / "Local Folders"
    (root / "Archive.sbd" / "2023.sbd").mkdir(parents=True)
    entry = b"From - Mon Jan  2 10:00:00 2023\nSubject: s\nX-Mozilla-Status: 0005\n\nhi\n\n"
    for name in ("Inbox", "Sent", "Archive.sbd/2023", "Archive.sbd/2023.sbd/Q1"):
        (root / name).write_bytes(entry)
    (root / "Trash").write_bytes(b"")
    for name in ("Inbox.msf", "Archive.msf", "Archive.sbd/2023.msf", ".DS_Store"):
        (root / name).write_bytes(b'// <!-- <mdb:mork:z v="1.4"/> -->')
    (root / "msgFilterRules.dat").write_text('version="9"\n')
    (root / "Orphan.sbd").mkdir()
    (root / "Orphan.sbd" / "Child").write_bytes(entry)

    src = store("mbox", root, "source")
    got = {f.path: (f.selectable, f.special_use) for f in src.list_folders()}
    assert got == {
        INBOX: (True, None),
        ("Sent",): (True, "\\Sent"),
        ("Trash",): (True, "\\Trash"),
        ("Archive",): (False, "\\Archive"),
        ("Archive", "2023"): (True, None),
        ("Archive", "2023", "Q1"): (True, None),
        ("Orphan",): (False, None),
        ("Orphan", "Child"): (True, None),
    }
    [(meta, raw)] = src.fetch(FolderInfo(("Archive", "2023")), src.list_messages(FolderInfo(("Archive", "2023"))))
    assert raw == b"Subject: s\nX-Mozilla-Status: 0005\n\nhi\n"
    assert meta.flags == {"\\Seen", "\\Flagged"}
    assert meta.internal_date == datetime(2023, 1, 2, 10, 0, tzinfo=UTC)


def test_reads_foreign_mbox_flags_quoting_and_dates(tmp_path: Path) -> None:
    path = tmp_path / "mail.mbox"
    path.write_bytes(
        b"From alice@example.org Tue Feb 14 08:09:10 2017\n"
        b"Subject: one\nStatus: RO\nX-Keywords: Work, $Label1\nX-Status: AF\nTo: b@x\n\n"
        b">From the body\n>>From quoted\nFrom not a separator (no blank line before)\n\n"
        b"From bob Wed Mar  1 23:00:00 2017 +0100\r\n"
        b"Subject: two\r\nStatus: O\r\n\r\nbody\r\n"
    )
    src = store("mbox", path, "source")
    assert [f.path for f in src.list_folders()] == [INBOX]
    (one, raw1), (two, raw2) = src.fetch(FolderInfo(INBOX), src.list_messages(FolderInfo(INBOX)))
    assert raw1 == (
        b"Subject: one\nTo: b@x\n\nFrom the body\n>From quoted\nFrom not a separator (no blank line before)\n"
    )
    assert one.flags == {"\\Seen", "\\Answered", "\\Flagged", "Work", "$Label1"}
    assert one.internal_date == datetime(2017, 2, 14, 8, 9, 10, tzinfo=UTC)
    assert raw2 == b"Subject: two\r\n\r\nbody\r\n"  # the last message ends without a blank line
    assert two.flags == frozenset()
    assert two.internal_date == datetime(2017, 3, 1, 22, 0, tzinfo=UTC)


def test_single_file_mbox_destination(tmp_path: Path) -> None:
    path = tmp_path / "mail.mbox"
    path.write_bytes(b"From x Mon Jan  2 10:00:00 2023\nSubject: a\n\nno blank line at the end\n")
    dst = store("mbox", path)
    with pytest.raises(FolderError, match="only INBOX"):
        dst.ensure_folder(("Other",))
    dst.append(FolderInfo(INBOX), [(MessageMeta(id="", size=0, internal_date=DATE), b"Subject: b\n\nnew\n")])
    raws = [raw for _, raw in dst.fetch(FolderInfo(INBOX), dst.list_messages(FolderInfo(INBOX)))]
    assert raws == [b"Subject: a\n\nno blank line at the end\n", b"Subject: b\n\nnew\n"]
    assert path.read_bytes().endswith(b"\n\nFrom MAILER-DAEMON Mon Mar  4 05:06:07 2019\nSubject: b\n\nnew\n\n")


# ------------------------------------------------------------------ write errors


@pytest.mark.parametrize("kind", KINDS)
def test_disk_full_is_quota_error_and_mbox_stays_valid(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dst = store(kind, tmp_path / "out")
    folder = dst.ensure_folder(INBOX)
    dst.append(folder, [(MessageMeta(id="", size=0), b"Subject: first\n\n")])
    before = tree(tmp_path / "out")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    fsync: Callable[[int], None] = full
    monkeypatch.setattr(local.os, "fsync", fsync)
    with pytest.raises(QuotaError, match="No space left"):
        dst.append(folder, [(MessageMeta(id="", size=0), b"Subject: second\n\n")])
    monkeypatch.undo()
    raws = [raw for _, raw in dst.fetch(folder, dst.list_messages(folder))]
    assert raws == [b"Subject: first\n\n"]
    assert tree(tmp_path / "out") == before  # no partial entry, no file left in tmp/


# ------------------------------------------------------------------- demo sample

DEMO = Path(__file__).resolve().parent.parent / "plans" / "demo"


def _demo_generator():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_generate", DEMO / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_demo_sample_is_current_and_reads_back_exactly(tmp_path: Path) -> None:
    gen = _demo_generator()
    import random

    gen.write_mbox(tmp_path / "mbox", random.Random(gen.SEED))
    gen.write_maildir(tmp_path / "Maildir", random.Random(gen.SEED + 1))
    for name in ("mbox", "Maildir"):
        fresh = {
            p: (tmp_path / name / p).read_bytes() for p in tree(tmp_path / name) if (tmp_path / name / p).is_file()
        }
        committed = {p: (DEMO / name / p).read_bytes() for p in tree(DEMO / name) if (DEMO / name / p).is_file()}
        assert fresh == committed, f"plans/demo/{name} is stale: run plans/demo/generate.py"

    mails = gen.make_mails(random.Random(gen.SEED), "mbox", 26)
    src = store("mbox", tmp_path / "mbox", "source")
    read = [(m, raw) for f in src.list_folders() for m, raw in src.fetch(f, src.list_messages(f))]
    assert sorted(raw for _, raw in read) == sorted(m.raw for m in mails)
    by_raw = {m.raw: m for m in mails}
    for meta, raw in read:
        assert meta.flags == by_raw[raw].flags - {"\\Draft", "\\Deleted"}
        assert meta.internal_date == by_raw[raw].date.replace(microsecond=0)

    src = store("maildir", tmp_path / "Maildir", "source")
    read = [(m, raw) for f in src.list_folders() for m, raw in src.fetch(f, src.list_messages(f))]
    mails = gen.make_mails(random.Random(gen.SEED + 1), "maildir", 26)
    assert sorted(raw for _, raw in read) == sorted(m.raw for m in mails)
    by_raw = {m.raw: m for m in mails}
    for meta, raw in read:
        assert meta.flags == by_raw[raw].flags
        assert meta.internal_date == by_raw[raw].date.replace(microsecond=0)


# ------------------------------------------------- Dovecot reads what we write

DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
NOBODY = 65534


@pytest.fixture
def dovecot_home() -> Iterator[Path]:
    """A throwaway home owned by nobody, with a doveadm config for its Maildir."""
    if not os.path.exists(DOVEADM) or os.geteuid() != 0:
        pytest.skip("needs doveadm and root (to run it as nobody)")
    home = Path(tempfile.mkdtemp(prefix="migrator-dovecot-", dir="/tmp"))
    for sub in ("run", "state"):
        (home / sub).mkdir()
    (home / "dovecot.conf").write_text(
        f"mail_location = maildir:{home}/Maildir\nlog_path = {home}/dovecot.log\nbase_dir = {home}/run\n"
        f"state_dir = {home}/state\nmail_uid = {NOBODY}\nmail_gid = {NOBODY}\nfirst_valid_uid = 1\n"
        "first_valid_gid = 1\n"
    )
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def doveadm(home: Path, *args: str, stdin: bytes | None = None) -> str:
    for path in home.rglob("*"):
        os.chown(path, NOBODY, NOBODY)
    os.chown(home, NOBODY, NOBODY)
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "USER": "nobody", "HOME": str(home)}
    done = subprocess.run(
        [DOVEADM, "-c", str(home / "dovecot.conf"), *args], input=stdin, capture_output=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_dovecot_reads_our_maildir_and_we_read_dovecots(dovecot_home: Path) -> None:
    root = dovecot_home / "Maildir"
    dst = store("maildir", root)
    raw = b"Subject: hi\nMessage-ID: <x@y>\n\nbody\n"
    flags = frozenset({"\\Seen", "\\Answered", "Work", "$Forwarded"})
    dst.append(
        dst.ensure_folder(("Entwürfe", "日本語")), [(MessageMeta(id="", size=0, flags=flags, internal_date=DATE), raw)]
    )
    out = doveadm(
        dovecot_home, "fetch", "mailbox date.received flags size.virtual text", "mailbox", "Entwürfe.日本語", "all"
    )
    assert "date.received: 2019-03-04 05:06:07" in out or "date.received: 2019-03-04" in out
    assert set(out.split("flags: ")[1].split("\n")[0].split()) - {"\\Recent"} == flags
    assert f"size.virtual: {crlf_size(raw)}" in out
    assert "Subject: hi\nMessage-ID: <x@y>\n\nbody\n" in out

    doveadm(dovecot_home, "mailbox", "create", "Stuff & Things")
    theirs = b"Subject: from dovecot\nMessage-ID: <d@y>\n\nhello\n"
    doveadm(dovecot_home, "save", "-m", "Stuff & Things", stdin=theirs)
    doveadm(dovecot_home, "flags", "add", "\\Flagged Extra", "mailbox", "Stuff & Things", "all")
    src = store("maildir", root, "source")
    assert {("Stuff & Things",), ("Entwürfe", "日本語")} <= {f.path for f in src.list_folders()}
    folder = FolderInfo(("Stuff & Things",))
    [(meta, got)] = src.fetch(folder, src.list_messages(folder))
    assert got == theirs and meta.flags == {"\\Flagged", "Extra"} and meta.size == crlf_size(theirs)
