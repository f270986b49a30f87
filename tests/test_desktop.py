"""Desktop stores as sources: Thunderbird profiles (generated here the way Thunderbird
writes them, see tests/data/thunderbird_profile.py) and Outlook PST files."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from migrator.connectors.base import open_store
from migrator.connectors.desktop import ThunderbirdStore, decode_thunderbird_entry
from migrator.errors import ConnectError, FolderError
from migrator.model import Account, FolderInfo, MessageMeta, crlf_size
from tests.data.thunderbird_profile import TbAccount, TbMessage, entry, message, pop_profile, write_profile

INBOX = ("INBOX",)


def tb(path: Path) -> ThunderbirdStore:
    store = open_store(Account(type="thunderbird", path=str(path)), "source")
    assert isinstance(store, ThunderbirdStore)
    return store


def read_all(store: ThunderbirdStore, path: tuple[str, ...]) -> list[tuple[MessageMeta, bytes]]:
    folder = FolderInfo(path)
    listed = store.list_messages(folder)
    fetched = list(store.fetch(folder, listed))
    assert [m.id for m, _ in fetched] == [m.id for m in listed]
    return fetched


def full_profile(root: Path, style="old") -> Path:
    """Local Folders (Inbox, Sent, Trash, Drafts, Archives/2023) and a POP3 account
    (default) with Inbox, Trash and Work; an RSS account and an IMAP cache beside."""
    lf = {
        "Inbox": [TbMessage(message(1), status=0x1)],
        "Sent": [TbMessage(message(2), status=0x1)],
        "Trash": [TbMessage(message(3))],
        "Drafts": [TbMessage(message(4))],
        "Archives/2023": [TbMessage(message(5), status=0x1, keys="$label1")],
        "Archives/2023/Q1": [TbMessage(message(6))],
    }
    pop = {
        "Inbox": [
            TbMessage(message(10), status=0x1, uidl="UID10"),
            TbMessage(message(11), status=0x1 | 0x2, uidl="UID11"),
            TbMessage(message(12), status=0x4 | 0x1000, keys="$label1 todo", uidl="UID12"),
            TbMessage(message(13), status=0x1 | 0x8, uidl="UID13"),  # deleted, not yet compacted
            TbMessage(message(14), status2=0x00800000 | (3 << 25), uidl="UID14"),
            TbMessage(message(15), status=0x0400, uidl="UID15"),  # headers only (partial)
        ],
        "Trash": [TbMessage(message(16))],
        "Work": [TbMessage(message(17), status=0x1)],
    }
    write_profile(
        root,
        [
            TbAccount("account1", "server1", "none", "Mail/Local Folders", "Local Folders", lf),
            TbAccount("account2", "server2", "pop3", "Mail/pop.example.com", "alice@example.com", pop),
            TbAccount("account3", "server3", "rss", "Mail/Feeds", "Blogs", {"News": [TbMessage(message(20))]}),
        ],
        default="account2",
        style=style,
    )
    imap = root / "ImapMail" / "imap.example.com"
    imap.mkdir(parents=True)
    (imap / "INBOX").write_bytes(entry(TbMessage(message(30))))
    (root / "Mail" / "smart mailboxes").mkdir()
    (root / "Mail" / "smart mailboxes" / "Inbox.msf").write_bytes(b"")
    return root


def test_folder_tree_of_a_profile(tmp_path: Path) -> None:
    store = tb(full_profile(tmp_path / "profile"))
    got = {f.path: (f.selectable, f.special_use) for f in store.list_folders()}
    assert got == {
        INBOX: (True, None),  # the default (POP3) account's Inbox is the INBOX
        ("Trash",): (True, "\\Trash"),
        ("Work",): (True, None),
        ("Local Folders",): (False, None),  # prefix only where a name is taken already
        ("Local Folders", "Inbox"): (True, None),
        ("Local Folders", "Trash"): (True, None),
        ("Sent",): (True, "\\Sent"),
        ("Drafts",): (True, "\\Drafts"),
        ("Archives",): (True, "\\Archive"),
        ("Archives", "2023"): (True, None),
        ("Archives", "2023", "Q1"): (True, None),
    }  # no Feeds (RSS), no ImapMail cache, no smart mailboxes, no .msf/.dat/.json/.html
    assert store.find_folder(("Archives", "2023")) is not None
    assert store.find_folder(("Feeds",)) is None and store.find_folder(("News",)) is None


def test_global_inbox_comes_first_and_one_account_needs_no_prefix(tmp_path: Path) -> None:
    # the POP3 account delivers into Local Folders ("global inbox"): Local Folders is read first
    write_profile(
        tmp_path / "g",
        [
            TbAccount("account1", "server1", "none", "Mail/Local Folders", "Local Folders", {"Inbox": [], "Trash": []}),
            TbAccount(
                "account2", "server2", "pop3", "Mail/pop.example.com", "alice", {"Inbox": []}, deferred_to="account1"
            ),
        ],
        default="account2",
    )
    assert {f.path for f in tb(tmp_path / "g").list_folders()} == {INBOX, ("Trash",), ("alice",), ("alice", "Inbox")}
    one = pop_profile(tmp_path / "one", [TbMessage(message(1))])
    assert {f.path for f in tb(one).list_folders()} == {INBOX, ("Trash",)}


def test_other_starting_points(tmp_path: Path) -> None:
    root = full_profile(tmp_path / "profile")
    lf = {f.path for f in tb(root / "Mail" / "Local Folders").list_folders()}
    assert lf == {
        INBOX,
        ("Sent",),
        ("Trash",),
        ("Drafts",),
        ("Archives",),
        ("Archives", "2023"),
        ("Archives", "2023", "Q1"),
    }
    mail = {f.path for f in tb(root / "Mail").list_folders()}  # no prefs.js: by name, Local Folders last
    assert INBOX in mail and ("pop.example.com", "Inbox") not in mail and ("Local Folders", "Inbox") in mail
    cache = tb(root / "ImapMail")  # asked for explicitly: the IMAP cache is read
    assert [f.path for f in cache.list_folders()] == [INBOX]
    assert len(cache.list_messages(FolderInfo(INBOX))) == 1


def test_flags_keywords_expunged_and_partial(tmp_path: Path) -> None:
    store = tb(full_profile(tmp_path / "p"))
    by_mid = {m.message_id: m for m, _ in read_all(store, INBOX)}
    assert set(by_mid) == {"<tb-10@example.net>", "<tb-11@example.net>", "<tb-12@example.net>", "<tb-14@example.net>"}
    assert by_mid["<tb-10@example.net>"].flags == {"\\Seen"}
    assert by_mid["<tb-11@example.net>"].flags == {"\\Seen", "\\Answered"}
    assert by_mid["<tb-12@example.net>"].flags == {"\\Flagged", "$Forwarded", "$label1", "todo"}
    assert by_mid["<tb-14@example.net>"].flags == {"$MDNSent", "$label3"}
    assert store.skipped(FolderInfo(INBOX)) == {"expunged": 1, "partial": 1}
    [(archived, _)] = read_all(store, ("Archives", "2023"))
    assert archived.flags == {"\\Seen", "$label1"}


@pytest.mark.parametrize("style", ["old", "new", "windows"])
def test_stripped_headers_give_the_original_bytes(tmp_path: Path, style: str) -> None:
    tricky = message(
        40,
        body=b"From the start of a line\r\n>From quoted once\r\n\r\nFrom after a blank line\r\nend\r\n",
        extra_headers=b"X-UIDL: from-the-sender\r\nX-Mozilla-Status: 0001\r\n",  # the message's own: kept
    )
    originals = [message(41), message(42, mid=False), tricky]
    msgs = [
        TbMessage(raw, status=0x1, uidl=f"U{i}", received=datetime(2024, 1, i + 1, tzinfo=UTC))
        for i, raw in enumerate(originals)
    ]
    root = pop_profile(tmp_path / "p", msgs, style=style)  # type: ignore[arg-type]
    got = read_all(tb(root), INBOX)
    if style != "new":  # before 128 (mboxo) one cannot tell an original ">From " from an escaped "From "
        originals[2] = originals[2].replace(b">From quoted once", b"From quoted once")
    assert [raw for _, raw in got] == originals
    for (meta, raw), original, i in zip(got, originals, range(3), strict=True):
        assert meta.size == len(original) == crlf_size(raw)
        assert meta.extra == {"uidl": f"U{i}"}
        assert meta.internal_date == datetime(2024, 1, i + 1, tzinfo=UTC)
    assert got[0][0].message_id == "<tb-41@example.net>" and got[1][0].message_id is None


def test_decode_keeps_headers_thunderbird_did_not_put_at_the_top() -> None:
    raw = b"Subject: s\nX-Mozilla-Status: 0005\nX-Mozilla-Keys: work\n\nbody\n"
    got = decode_thunderbird_entry(raw)
    assert got.raw == raw.replace(b"\n", b"\r\n")  # not Thunderbird's prefix: bytes kept
    assert got.flags == {"\\Seen", "\\Flagged", "work"} and got.skip is None
    prefixed = b"X-UIDL: u1\nX-Mozilla-Status: 0009\nX-UIDL: own\n\nb\n"  # expunged; the second X-UIDL is the message's
    got = decode_thunderbird_entry(prefixed)
    assert got.raw == b"X-UIDL: own\r\n\r\nb\r\n" and got.uidl == "u1" and got.skip == "expunged"
    no_status = b"X-UIDL: u1\nSubject: s\n\nb\n"  # X-UIDL without the status line after it: not ours
    assert decode_thunderbird_entry(no_status).raw == no_status.replace(b"\n", b"\r\n")


def test_from_line_dates_old_and_new_thunderbird(tmp_path: Path) -> None:
    folder = tmp_path / "Local Folders"
    folder.mkdir()
    body = b"X-Mozilla-Status: 0001\nX-Mozilla-Status2: 00000000\nSubject: d\n\nb\n\n"
    (folder / "Inbox").write_bytes(
        b"From - Mon Jan  1 00:00:00 2024\n"
        + body  # Thunderbird <= 115: ctime()
        + b"From - Tue Jan 02 03:04:05 2024\r\n"
        + body  # 128+: zero-padded day, CRLF
        + b"From - \n"
        + body.replace(b"Subject: d", b"Subject: d\nDate: Wed, 3 Jan 2024 10:00:00 +0100")
    )
    dates = [m.internal_date for m in tb(folder).list_messages(FolderInfo(INBOX))]
    assert dates == [
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2024, 1, 3, 9, 0, tzinfo=UTC),  # no date in the From_ line: the Date header
    ]


def test_ids_stable_across_opens_flag_changes_and_compaction(tmp_path: Path) -> None:
    root = full_profile(tmp_path / "p")
    first = [m.id for m in tb(root).list_messages(FolderInfo(INBOX))]
    assert first == [m.id for m in tb(root).list_messages(FolderInfo(INBOX))]
    inbox = root / "Mail" / "pop.example.com" / "Inbox"
    data = inbox.read_bytes()
    # Thunderbird marks a message read in place (same length), then compacts (drops expunged)
    data = data.replace(b"X-Mozilla-Status: 0000", b"X-Mozilla-Status: 0001", 1)
    entries = data.split(b"\nFrom - ")
    compacted = b"\nFrom - ".join(e for e in entries if b"X-Mozilla-Status: 0009" not in e)
    inbox.write_bytes(compacted)
    after = tb(root).list_messages(FolderInfo(INBOX))
    assert [m.id for m in after] == first
    assert all("\\Seen" in m.flags for m in after if m.message_id == "<tb-14@example.net>")


def test_fetch_after_the_file_changed(tmp_path: Path) -> None:
    root = pop_profile(tmp_path / "p", [TbMessage(message(i), uidl=f"U{i}") for i in range(5)])
    store = tb(root)
    listed = store.list_messages(FolderInfo(INBOX))
    inbox = root / "Mail" / "pop.example.com" / "Inbox"
    data = inbox.read_bytes()
    inbox.write_bytes(entry(TbMessage(message(99), uidl="U99")) + data)  # offsets all shift
    got = list(store.fetch(FolderInfo(INBOX), listed[1:3]))
    assert [raw for _, raw in got] == [message(1), message(2)]
    inbox.write_bytes(b"")  # everything gone: nothing yielded, no error
    assert list(store.fetch(FolderInfo(INBOX), listed)) == []


def test_a_large_folder_is_fetched_by_offset(tmp_path: Path) -> None:
    msgs = [TbMessage(message(i, body=b"x" * 2000 + b"\r\n"), status=i % 2, uidl=f"U{i}") for i in range(400)]
    store = tb(pop_profile(tmp_path / "p", msgs))
    listed = store.list_messages(FolderInfo(INBOX))
    assert len(listed) == 400
    batches = [listed[i : i + 50] for i in range(0, 400, 50)]
    got = [raw for batch in batches for _, raw in store.fetch(FolderInfo(INBOX), batch)]
    assert got == [m.raw for m in msgs]


@pytest.mark.parametrize(
    ("setup", "message_part"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"From x\n"), "is a file"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "no Thunderbird mail folders"),
    ],
)
def test_open_errors(tmp_path: Path, setup, message_part: str) -> None:
    path = tmp_path / "thing"
    setup(path)
    with pytest.raises(ConnectError, match=message_part) as info:
        open_store(Account(type="thunderbird", path=str(path)), "source")
    assert info.value.retryable is False


def test_destination_role_is_refused(tmp_path: Path) -> None:
    root = pop_profile(tmp_path / "p", [])
    with pytest.raises(ConnectError, match="can only be a source") as info:
        open_store(Account(type="thunderbird", path=str(root)), "destination")
    assert info.value.retryable is False


def test_gone_folder_is_folder_error_and_reads_create_nothing(tmp_path: Path) -> None:
    root = full_profile(tmp_path / "p")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))
    store = tb(root)
    for f in store.list_folders():
        if f.selectable:
            list(store.fetch(f, store.list_messages(f)))
    assert sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*")) == before
    os.unlink(root / "Mail" / "pop.example.com" / "Work")
    with pytest.raises(FolderError):
        store.list_messages(FolderInfo(("Work",)))


# -------------------------------------------------------------------------- PST

ENRON_SHA256 = "6152489de3472be6f1f840935d34b6dbf5f62b025dd015929ea9cf66eb5a5b46"
MLOKAY = ("lokay-m", "MLOKAY (Non-Privileged)")


@pytest.fixture(scope="module")
def enron_pst() -> Path:
    """The real PST (tests/data/README.md); fetched by tests/data/fetch_enron_pst.sh."""
    path = Path(os.environ.get("MIGRATOR_TEST_PST") or Path(__file__).parent / "data" / ".cache" / "enron.pst")
    if not path.is_file():
        if os.environ.get("MIGRATOR_REQUIRE_PST"):
            pytest.fail(f"{path} is missing: run tests/data/fetch_enron_pst.sh")
        pytest.skip(f"no real PST at {path}: run tests/data/fetch_enron_pst.sh to test against one")
    pytest.importorskip("pypff", reason="libpff-python is not installed")
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == ENRON_SHA256
    return path


def pst(path: Path):
    return open_store(Account(type="pst", path=str(path)), "source")


def test_real_pst_folders_counts_flags_and_bytes(enron_pst: Path) -> None:
    import email
    import email.policy

    store = pst(enron_pst)
    try:
        folders = {f.path: f.special_use for f in store.list_folders()}
        assert folders == {
            ("Deleted Items",): "\\Trash",
            ("lokay-m",): None,
            MLOKAY: None,
            (*MLOKAY, "Personal"): None,
            (*MLOKAY, "Sent Items"): None,  # not top level: no special use
            (*MLOKAY, "Systems"): None,
            (*MLOKAY, "TW-Commercial Group"): None,
        }
        counts = {}
        for path in folders:
            listed = store.list_messages(FolderInfo(path))
            counts[path[-1]] = len(listed)
            assert all(m.flags == {"\\Seen"} for m in listed)  # every message of this mailbox was read
            assert all(m.internal_date is not None and m.internal_date.tzinfo is not None for m in listed)
            fetched = list(store.fetch(FolderInfo(path), listed))
            assert sorted(m.id for m, _ in fetched) == sorted(m.id for m in listed)
            for meta, raw in fetched:
                assert meta.size == crlf_size(raw)
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                assert not msg.defects and msg["Message-ID"] and msg["From"]
        assert counts == {
            "Deleted Items": 0,
            "lokay-m": 0,
            "MLOKAY (Non-Privileged)": 1,
            "Personal": 47,
            "Sent Items": 2,
            "Systems": 7,
            "TW-Commercial Group": 14,
        }
        sent = {m.message_id: m for m in store.list_messages(FolderInfo((*MLOKAY, "Sent Items")))}
        (meta, raw), *_ = [
            x
            for x in store.fetch(FolderInfo((*MLOKAY, "Sent Items")), list(sent.values()))
            if x[0].message_id == "<CTBITLRPOWHBS4AJABL1YK4IP2J3324IA@zlsvr22>"
        ]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Subject"] == "Cirque du Soleil - Dralion" and msg["From"] == "Lokay"
        assert "Transwestern Commercial group is confirmed" in msg.get_body(("plain",)).get_content()
        assert meta.internal_date == datetime(2001, 10, 30, 3, 52, 40, tzinfo=UTC)
        tw = FolderInfo((*MLOKAY, "TW-Commercial Group"))
        big = max(store.list_messages(tw), key=lambda m: m.size)
        [(_, raw)] = list(store.fetch(tw, [big]))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        names = sorted(a.get_filename() for a in msg.iter_attachments())
        assert len(names) == 11 and all(n.endswith(".doc") for n in names)
    finally:
        store.close()
        store.close()  # idempotent


def test_real_pst_is_read_the_same_every_time(enron_pst: Path) -> None:
    import hashlib

    def snapshot() -> dict:
        store = pst(enron_pst)
        try:
            out = {}
            for f in store.list_folders():
                for m, raw in store.fetch(f, store.list_messages(f)):
                    out[(f.path, m.id)] = (m.size, m.flags, m.internal_date, hashlib.sha256(raw).hexdigest())
            return out
        finally:
            store.close()

    first = snapshot()
    assert len(first) == 71 and first == snapshot()  # same ids, sizes and bytes: a re-run copies nothing


def test_real_pst_matches_readpst(enron_pst: Path, tmp_path: Path) -> None:
    """An independent reader (pst-utils' readpst) finds the same folders, the same
    messages (by Message-ID) and the same read state."""
    import shutil
    import subprocess

    if shutil.which("readpst") is None:
        if os.environ.get("MIGRATOR_REQUIRE_PST"):
            pytest.fail("readpst (Debian pst-utils) is missing")
        pytest.skip("readpst (Debian pst-utils) is not installed")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["readpst", "-q", "-e", "-D", "-t", "e", "-j", "0", "-o", str(out), str(enron_pst)], check=True, timeout=120
    )
    theirs: dict[tuple[str, ...], set[tuple[str, bool]]] = {}
    for eml in out.rglob("*.eml"):
        head = eml.read_bytes().split(b"\n\n", 1)[0]
        mid = next(
            line.split(b":", 1)[1].strip() for line in head.split(b"\n") if line.lower().startswith(b"message-id:")
        )
        folder = eml.parent.relative_to(out).parts[1:]  # below the store's own name
        theirs.setdefault(folder, set()).add((mid.decode(), b"\nStatus: RO" in b"\n" + head))
    store = pst(enron_pst)
    try:
        ours = {}
        for f in store.list_folders():
            got = {(m.message_id or "", "\\Seen" in m.flags) for m in store.list_messages(f)}
            if got:
                ours[f.path] = got
    finally:
        store.close()
    assert ours == theirs


def test_pst_open_errors(tmp_path: Path) -> None:
    with pytest.raises(ConnectError, match="can only be a source"):
        open_store(Account(type="pst", path=str(tmp_path / "x.pst")), "destination")
    with pytest.raises(ConnectError, match="does not exist") as info:
        open_store(Account(type="pst", path=str(tmp_path / "missing.pst")), "source")
    assert info.value.retryable is False
    pytest.importorskip("pypff")
    bogus = tmp_path / "bogus.pst"
    bogus.write_bytes(b"!BDN" + os.urandom(4096))
    with pytest.raises(ConnectError, match="cannot be opened as a PST"):
        open_store(Account(type="pst", path=str(bogus)), "source")


# Rebuilding MIME from PST properties (pure: no PST needed) --------------------------


def test_mime_from_transport_headers_drops_the_original_structure() -> None:
    import email
    import email.policy

    from migrator.connectors.desktop import PstMessage, PstPart, build_pst_mime

    headers = (
        b"Microsoft Mail Internet Headers Version 2.0\r\n"
        b"Received: from mx.example.net\r\n\tby exchange.example.com; Tue, 2 May 2023 10:00:00 +0200\r\n"
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.net>\r\nTo: a@example.com\r\nSubject: report\r\n"
        b"Date: Tue, 2 May 2023 10:00:00 +0200\r\nMessage-ID: <r1@example.net>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed;\r\n\tboundary="----=_old"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
    )
    msg = PstMessage(
        headers=headers,
        text="Grüße\r\nline two\r\n".encode(),
        html=b"<p>Gr\xfc\xdfe</p>",
        html_charset="cp1252",
        attachments=(
            PstPart("application/pdf", b"%PDF-1.4 \x00\x01", "Bericht März.pdf"),
            PstPart("image/png", b"\x89PNG", "logo.png", "logo@x"),
        ),
    )
    raw = build_pst_mime(msg)
    assert raw == build_pst_mime(msg)  # deterministic
    assert b"----=_old" not in raw and b"Microsoft Mail Internet Headers" not in raw
    assert raw.count(b"\r\n") == raw.count(b"\n")  # CRLF throughout
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert not parsed.defects
    assert parsed["From"] == "Jürgen <j@example.net>" and parsed["Message-ID"] == "<r1@example.net>"
    assert parsed["Received"].startswith("from mx.example.net")
    assert parsed.get_content_type() == "multipart/mixed"
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Grüße\nline two\n"
    assert parsed.get_body(("html",)).get_content().rstrip() == "<p>Grüße</p>"
    atts = list(parsed.iter_attachments())
    assert [a.get_filename() for a in atts] == ["Bericht März.pdf", "logo.png"]
    assert atts[0].get_content() == b"%PDF-1.4 \x00\x01" and atts[1]["Content-ID"] == "<logo@x>"


def test_mime_for_mail_composed_in_outlook() -> None:
    import email
    import email.policy

    from migrator.connectors.desktop import PstMessage, PstPart, build_pst_mime

    msg = PstMessage(
        headers=b"",
        subject="Entwurf für Ümit",
        sender="Alice <alice@example.com>",
        to=("Bob <bob@example.com>",),
        cc=("carol@example.com",),
        date=datetime(2022, 2, 3, 4, 5, 6, tzinfo=UTC),
        message_id="<d1@example.com>",
        text=None,
        html=None,
        attachments=(PstPart("application/rtf", b"{\\rtf1 hi}", "body.rtf"),),
    )
    parsed = email.message_from_bytes(build_pst_mime(msg), policy=email.policy.default)
    assert not parsed.defects
    assert parsed["Subject"] == "Entwurf für Ümit" and parsed["To"] == "Bob <bob@example.com>"
    assert parsed["Cc"] == "carol@example.com" and parsed["Date"] == "Thu, 03 Feb 2022 04:05:06 +0000"
    assert parsed["Message-ID"] == "<d1@example.com>"
    assert parsed.get_body(("plain",)).get_content() == ""
    assert [a.get_filename() for a in parsed.iter_attachments()] == ["body.rtf"]


# Through the engine ----------------------------------------------------------------


def test_profile_and_pst_to_maildir_through_a_plan(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from migrator.cli import app
    from migrator.connectors.local import open_maildir

    msgs = [TbMessage(message(i), status=0x1 if i % 3 else 0x4, uidl=f"U{i}") for i in range(30)]
    msgs.append(TbMessage(message(500), status=0x9, uidl="GONE"))  # expunged: never copied
    pop_profile(tmp_path / "profile", msgs)
    pst_path = Path(os.environ.get("MIGRATOR_TEST_PST") or Path(__file__).parent / "data" / ".cache" / "enron.pst")
    with_pst = pst_path.is_file() and _have_pypff()
    plan = [
        "version: 1",
        "name: desk",
        "endpoints:",
        "  tb: {type: thunderbird}",
        "  pst: {type: pst}",
        "  out: {type: maildir}",
        "destination: out",
        "mailboxes:",
        f"  - {{id: alice, source: {{endpoint: tb, path: '{tmp_path / 'profile'}'}},",
        f"     destination: {{path: '{tmp_path / 'a'}'}}}}",
    ]
    if with_pst:
        plan.append(
            f"  - {{id: bob, source: {{endpoint: pst, path: '{pst_path}'}}, destination: {{path: '{tmp_path / 'b'}'}}}}"
        )
    (tmp_path / "plan.yaml").write_text("\n".join(plan) + "\n")
    runner = CliRunner()
    args = ["run", str(tmp_path / "plan.yaml"), "--state", str(tmp_path / "state.db")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    dst = open_maildir(Account(type="maildir", path=str(tmp_path / "a")), "source")
    got = {raw: m.flags for m, raw in dst.fetch(FolderInfo(INBOX), dst.list_messages(FolderInfo(INBOX)))}
    assert got == {m.raw: ({"\\Seen"} if m.status == 0x1 else {"\\Flagged"}) for m in msgs[:30]}
    if with_pst:
        bob = open_maildir(Account(type="maildir", path=str(tmp_path / "b")), "source")
        assert sum(len(bob.list_messages(f)) for f in bob.list_folders() if f.selectable) == 71
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "copied 0 message(s)" in again.output, again.output


def _have_pypff() -> bool:
    try:
        import pypff  # noqa: F401
    except ImportError:
        return False
    return True
