"""One conformance suite for every connector (rclone's fstests.Run).

A connector joins in a few lines: subclass ``ConnectorContract`` in a test module
and provide a ``store`` fixture that returns a fresh, empty store opened as a
destination (and a ``reopen`` fixture that opens the same store again, as a source).
Checks skip by declared capability, never by connector name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from migrator.connectors.base import Destination
from migrator.model import FolderInfo, MessageMeta, crlf_size

HOSTILE_FOLDERS: list[tuple[str, ...]] = [
    ("Stuff & Things",),
    ("Entwürfe",),
    ("日本語", "台北"),
    ("Ünïcödé & Co", "Sub Folder"),
    ("Reçus",),
    ("Travel ✈",),
    ("with [brackets] and %percent",),
    ("a.dot",),
    ("a/slash",),
]

IST = timezone(timedelta(hours=5, minutes=30))


def message(n: int, *, mid: bool = True, extra: bytes = b"") -> bytes:
    """A CRLF message with 8-bit header bytes and a small base64 attachment."""
    head = [
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>",
        b"To: Zo\xc3\xab <z@example.com>",
        f"Subject: test {n} \u00fcber".encode(),
        b"Date: Mon, 02 Mar 2020 10:00:00 +0100",
    ]
    if mid:
        head.append(f"Message-ID: <conf-{n}@example.org>".encode())
    head += [b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="b1"']
    body = [
        b"",
        b"--b1",
        b"Content-Type: text/plain; charset=utf-8",
        b"",
        f"Hello {n} \u00e9\u00e8 \u65e5\u672c".encode(),
        b"From the start of a line",
        b">From quoted",
        b"",
        b"--b1",
        b"Content-Type: application/octet-stream",
        b"Content-Transfer-Encoding: base64",
        b"",
        b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        b"--b1--",
        b"",
    ]
    return b"\r\n".join(head + body) + extra


def meta(n: int, flags: set[str] | None = None, date: datetime | None = None, raw: bytes | None = None) -> MessageMeta:
    raw = raw if raw is not None else message(n)
    return MessageMeta(
        id=f"src-{n}",
        size=crlf_size(raw),
        flags=frozenset(flags or set()),
        internal_date=date or datetime(2019, 5, 17, 8, 30, 15, tzinfo=IST),
        message_id=f"<conf-{n}@example.org>",
    )


class ConnectorContract:
    """Subclass and provide ``store`` (fresh, empty, destination role) and ``reopen``
    (a callable opening the same store again)."""

    @pytest.fixture
    def store(self) -> Destination:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @pytest.fixture
    def reopen(self) -> Callable[[], Destination]:  # pragma: no cover
        raise NotImplementedError

    # -------------------------------------------------------------- folders
    @pytest.mark.parametrize("path", HOSTILE_FOLDERS, ids=lambda p: "/".join(p))
    def test_hostile_folder_names_round_trip(self, store: Destination, reopen, path):
        if any(c in store.capabilities.forbidden_name_chars for part in path for c in part):
            pytest.skip("the store declares a character of this name as forbidden")
        f1 = store.ensure_folder(path)
        assert f1.path == path
        f2 = store.ensure_folder(path)  # idempotent
        assert f2.path == path and f2.validity == f1.validity
        store.append(f1, [(meta(1), message(1))])
        again = reopen()
        try:
            listed = {f.path: f for f in again.list_folders()}
            assert path in listed, sorted(listed)
            assert again.find_folder(path) is not None
            assert len(again.list_messages(listed[path])) == 1
        finally:
            again.close()

    def test_forbidden_characters_are_declared(self, store: Destination):
        assert isinstance(store.capabilities.forbidden_name_chars, str)

    def test_find_folder_does_not_create(self, store: Destination):
        assert store.find_folder(("No", "Such", "Folder")) is None
        assert ("No", "Such", "Folder") not in {f.path for f in store.list_folders()}

    def test_inbox_exists_or_is_created(self, store: Destination):
        inbox = store.ensure_folder(("INBOX",))
        assert inbox.path == ("INBOX",)
        assert store.list_messages(inbox) == []

    # -------------------------------------------------------------- messages
    def test_byte_exact_round_trip_with_flags_keywords_dates(self, store: Destination, reopen):
        folder = store.ensure_folder(("Round", "Trip"))
        caps = store.capabilities
        cases = [
            (meta(1, {"\\Seen"}), message(1)),
            (meta(2, {"\\Flagged", "\\Answered", "$Forwarded", "Work"}), message(2)),
            (meta(3, set(), datetime(2011, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-8)))), message(3)),
            (meta(4, {"\\Draft", "\\Seen"}), message(4)),
        ]
        raw5 = message(5, mid=False)
        cases.append((MessageMeta("src-5", crlf_size(raw5), frozenset({"\\Seen"}), cases[0][0].internal_date), raw5))
        ids = store.append(folder, cases)
        assert len(ids) == len(cases)
        if caps.append_returns_id:
            assert all(ids) and len(set(ids)) == len(ids)
        src = reopen()
        try:
            f = src.find_folder(("Round", "Trip"))
            assert f is not None
            listed = src.list_messages(f)
            assert len(listed) == len(cases)
            if caps.append_returns_id:
                assert {m.id for m in listed} == set(ids)
            fetched = {m.id: (m, raw) for m, raw in src.fetch(f, listed)}
            by_bytes = {raw: m for m, raw in fetched.values()}
            by_listing = {m.id: m for m in listed}
            for want, raw in cases:
                assert raw in by_bytes, f"message {want.id} not byte-identical at the store"
                got = by_listing[by_bytes[raw].id]
                assert got.size == crlf_size(raw)
                assert got.message_id == want.message_id
                if caps.flags:
                    system = {x for x in want.flags if x.startswith("\\")}
                    assert {x for x in got.flags if x.startswith("\\")} == system
                if caps.keywords:
                    assert {x for x in got.flags if not x.startswith("\\")} == {
                        x for x in want.flags if not x.startswith("\\")
                    }
                if caps.internal_date:
                    assert got.internal_date is not None and got.internal_date.tzinfo is not None
                    assert abs((got.internal_date - want.internal_date).total_seconds()) < 1
        finally:
            src.close()

    def test_reading_changes_nothing(self, store: Destination, reopen):
        folder = store.ensure_folder(("Unread",))
        store.append(folder, [(meta(7), message(7))])
        src = reopen()
        try:
            f = src.find_folder(("Unread",))
            assert f is not None
            first = src.list_messages(f)
            list(src.fetch(f, first))
            second = src.list_messages(f)
            assert [(m.id, m.flags) for m in first] == [(m.id, m.flags) for m in second]
            assert "\\Seen" not in second[0].flags
        finally:
            src.close()

    def test_batch_append_keeps_order_and_count(self, store: Destination, reopen):
        folder = store.ensure_folder(("Batch",))
        items = [(meta(100 + i), message(100 + i)) for i in range(30)]
        ids = store.append(folder, items)
        assert len(ids) == 30
        src = reopen()
        try:
            f = src.find_folder(("Batch",))
            assert f is not None
            listed = src.list_messages(f)
            assert sorted(m.message_id or "" for m in listed) == sorted(m.message_id or "" for m, _ in items)
            if store.capabilities.append_returns_id:
                by_id = {m.id: m for m in listed}
                for (m, _), new_id in zip(items, ids, strict=True):
                    assert by_id[new_id].message_id == m.message_id
        finally:
            src.close()

    def test_true_duplicates_are_both_stored(self, store: Destination, reopen):
        folder = store.ensure_folder(("Dups",))
        raw = message(9)
        store.append(folder, [(meta(9), raw), (meta(9), raw)])
        src = reopen()
        try:
            f = src.find_folder(("Dups",))
            assert f is not None
            listed = src.list_messages(f)
            assert len(listed) == 2
            assert [raw for _, raw in src.fetch(f, listed)] == [raw, raw]
        finally:
            src.close()

    def test_fetch_of_vanished_id_yields_nothing(self, store: Destination):
        folder = store.ensure_folder(("Vanish",))
        ghost = MessageMeta(id="999999", size=10)
        assert list(store.fetch(folder, [ghost])) == []

    def test_folder_info_is_stable(self, store: Destination, reopen):
        folder = store.ensure_folder(("Stable",))
        store.append(folder, [(meta(11), message(11))])
        a = reopen()
        b = reopen()
        try:
            fa = {f.path: f for f in a.list_folders()}[("Stable",)]
            fb = {f.path: f for f in b.list_folders()}[("Stable",)]
            assert isinstance(fa, FolderInfo) and fa.validity == fb.validity
            assert [m.id for m in a.list_messages(fa)] == [m.id for m in b.list_messages(fb)]
        finally:
            a.close()
            b.close()
