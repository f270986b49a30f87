"""The IMAP connector against a real Dovecot, in the slash ("" + "/") and Courier
("INBOX." + ".") namespace layouts."""

from __future__ import annotations

import io
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from integration.dovecot import DovecotServer, free_ports
from migrator.connectors.base import Destination, open_store
from migrator.connectors.imap import ImapStore, expand_uid_set, open_imap, parse_appenduid, uid_set
from migrator.connectors.imap_wire import AppendEntry, Wire, format_internaldate, parse_internaldate
from migrator.errors import (
    AuthError,
    ConnectError,
    FolderError,
    MessageError,
    QuotaError,
    TLSError,
    TransientError,
)
from migrator.model import FolderInfo, FolderPath, MessageMeta

LAYOUTS = ["dovecot", "dovecot_courier"]
OpenStore = Callable[..., ImapStore]

HOSTILE_FOLDERS: list[FolderPath] = [
    ("Stuff & Things",),
    ("Entwürfe",),
    ("日本語", "台北"),
    ("Archive", "2019"),
    ('Quote "and" back\\slash',),
    ("a%b*c",),
]


@pytest.fixture(params=LAYOUTS)
def server(request: pytest.FixtureRequest) -> DovecotServer:
    return request.getfixturevalue(request.param)


@pytest.fixture
def open_user(new_user: Callable[..., str]) -> Iterator[OpenStore]:
    """``open_user(server) -> ImapStore`` for a fresh user; closed after the test."""
    stores: list[ImapStore] = []

    def make(srv: DovecotServer, **kwargs: object) -> ImapStore:
        store = open_imap(srv.account(new_user(srv), **kwargs), "destination")  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def message(n: int, extra_headers: bytes = b"") -> bytes:
    return (
        b"Message-ID: <msg-%d@example.test>\r\nFrom: a@example.test\r\nTo: b@example.test\r\n"
        b"Subject: test %d\r\n%s\r\nBody line %d\r\n" % (n, n, extra_headers, n)
    )


def meta(flags: set[str] | None = None, date: datetime | None = None) -> MessageMeta:
    return MessageMeta(id="src", size=0, flags=frozenset(flags or ()), internal_date=date)


# ------------------------------------------------------------------ pure helpers
@pytest.mark.parametrize(
    ("uids", "text"),
    [([1], "1"), ([1, 2, 3, 7, 9, 10], "1:3,7,9:10"), ([5, 3, 4, 4], "3:5"), ([10, 1], "1,10")],
)
def test_uid_set(uids: list[int], text: str) -> None:
    assert uid_set(uids) == text
    assert expand_uid_set(text) == sorted(set(uids))


@pytest.mark.parametrize(
    ("response", "count", "expected"),
    [
        (b"[APPENDUID 38505 3955] APPEND completed", 1, ["3955"]),
        (b"[APPENDUID 38505 5:9,12] done", 6, ["5", "6", "7", "8", "9", "12"]),
        (b"[APPENDUID 1 5:6] done", 3, [None, None, None]),
        (b"APPEND completed", 2, [None, None]),
    ],
)
def test_parse_appenduid(response: bytes, count: int, expected: list[str | None]) -> None:
    assert parse_appenduid(response, count) == expected


# ------------------------------------------------------------------ folders
@pytest.mark.parametrize("path", HOSTILE_FOLDERS, ids=lambda p: "/".join(p))
def test_ensure_folder_hostile_names_round_trip(server: DovecotServer, open_user: OpenStore, path: FolderPath) -> None:
    store = open_user(server)
    first = store.ensure_folder(path)
    second = store.ensure_folder(path)
    assert first == second
    assert first.path == path
    assert first.selectable
    assert first.validity is None  # a destination lists no STATUS: nothing reads it
    listed = {f.path: f for f in store.list_folders()}
    assert listed[path] == first
    assert store.find_folder(path) == first
    # a second connection, as a source, decodes the same names and has their UIDVALIDITY
    again = open_imap(store.account, "source")
    try:
        as_source = {f.path: f for f in again.list_folders()}
        assert set(as_source) == set(listed)
        assert isinstance(as_source[path].validity, int)
        assert again.find_folder(path) == as_source[path]
    finally:
        again.close()


def test_dot_inside_a_name(dovecot: DovecotServer, dovecot_courier: DovecotServer, open_user: OpenStore) -> None:
    slash = open_user(dovecot)
    assert "." not in slash.capabilities.forbidden_name_chars
    assert slash.capabilities.forbidden_name_chars == "/"
    created = slash.ensure_folder(("v1.2 notes",))
    assert ("v1.2 notes",) in {f.path for f in slash.list_folders()}
    assert created.path == ("v1.2 notes",)

    courier = open_user(dovecot_courier)
    assert courier.capabilities.forbidden_name_chars == "./"
    with pytest.raises(FolderError):
        courier.ensure_folder(("v1.2 notes",))


def test_parents_are_created(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    store.ensure_folder(("A", "B", "C"))
    listed = {f.path: f for f in store.list_folders()}
    for path in [("A",), ("A", "B"), ("A", "B", "C")]:
        assert listed[path].selectable, path


def test_inbox_and_special_use(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    inbox = store.ensure_folder(("INBOX",))
    assert inbox.path == ("INBOX",) and inbox.is_inbox and inbox.selectable
    expected = {("Sent",): "\\Sent", ("Trash",): "\\Trash", ("Drafts",): "\\Drafts", ("Junk",): "\\Junk"}
    for path, use in expected.items():
        assert store.ensure_folder(path, use).special_use == use
    listed = {f.path: f for f in store.list_folders()}
    for path, use in expected.items():
        assert listed[path].special_use == use
    assert listed[("INBOX",)].special_use is None
    assert store.find_folder(("Nope",)) is None


def test_courier_layout_paths_are_relative(dovecot_courier: DovecotServer, new_user: Callable[..., str]) -> None:
    user = new_user(dovecot_courier)
    store = open_imap(dovecot_courier.account(user), "destination")
    try:
        assert store.namespace.prefix == "INBOX."
        store.ensure_folder(("Sent",))
        store.ensure_folder(("Archive", "2019"))
        paths = {f.path for f in store.list_folders()}
        assert ("Sent",) in paths and ("Archive", "2019") in paths and ("INBOX",) in paths
        assert not any(p[0] == "INBOX" and len(p) > 1 for p in paths)
    finally:
        store.close()
    # the server really holds them under the prefix
    names = dovecot_courier.doveadm("mailbox", "list", "-u", user).split()
    assert "INBOX.Sent" in names and "INBOX.Archive.2019" in names


def test_slash_layout_server_names(dovecot: DovecotServer, new_user: Callable[..., str]) -> None:
    user = new_user(dovecot)
    store = open_imap(dovecot.account(user), "destination")
    try:
        store.ensure_folder(("Archive", "2019"))
        store.ensure_folder(("Entwürfe",))
    finally:
        store.close()
    names = dovecot.doveadm("mailbox", "list", "-u", user).splitlines()
    assert "Archive/2019" in names and "Entwürfe" in names


# ------------------------------------------------------------------ messages
def test_round_trip_bytes_flags_dates(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    folder = store.ensure_folder(("Stuff & Things",))
    attachment = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= \xc3\xa4 raw 8-bit\r\n"
        b"Message-ID: <att@example.test>\r\n\r\n--XYZ\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n" * 200
        + b"--XYZ--\r\n"
    )
    ist = timezone(timedelta(hours=5, minutes=30))
    pst = timezone(timedelta(hours=-8))
    items = [
        (meta({"\\Seen", "\\Flagged"}, datetime(2019, 3, 4, 5, 6, 7, tzinfo=ist)), message(1)),
        (meta({"\\Answered", "$Forwarded", "Work"}, datetime(2001, 12, 31, 23, 59, 59, tzinfo=pst)), attachment),
        (
            meta({"\\Draft", "\\Recent"}, datetime(2024, 2, 29, 0, 0, 0, tzinfo=UTC)),
            message(3, b"X-8bit: \xff\xfe\r\n"),
        ),
        (meta(set(), None), b"Subject: no message-id, no trailing newline\r\n\r\nend"),
    ]
    ids = store.append(folder, items)
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 4

    listed = store.list_messages(folder)
    assert [m.id for m in listed] == ids
    fetched = dict((m.id, (m, raw)) for m, raw in store.fetch(folder, listed))
    assert set(fetched) == set(ids)
    for uid, (sent_meta, raw) in zip(ids, items, strict=True):
        got_meta, got_raw = fetched[uid]
        assert got_raw == raw
        expected_flags = sent_meta.flags - {"\\Recent"}
        assert got_meta.flags == expected_flags
        listed_meta = next(m for m in listed if m.id == uid)
        assert listed_meta.flags == expected_flags
        assert listed_meta.size == len(raw) == got_meta.size
        if sent_meta.internal_date is not None:
            assert got_meta.internal_date == sent_meta.internal_date
            assert listed_meta.internal_date == sent_meta.internal_date
            assert listed_meta.internal_date.utcoffset() is not None
    assert next(m for m in listed if m.id == ids[0]).message_id == "<msg-1@example.test>"
    assert next(m for m in listed if m.id == ids[1]).message_id == "<att@example.test>"
    assert next(m for m in listed if m.id == ids[3]).message_id is None


def test_listing_and_fetch_do_not_set_seen(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    inbox = store.ensure_folder(("INBOX",))
    store.append(inbox, [(meta(), message(i)) for i in range(3)])
    for _ in range(2):
        listed = store.list_messages(inbox)
        assert [list(store.fetch(inbox, listed))] and all(not m.flags for m in listed)
    fresh = open_imap(store.account, "source")
    try:
        assert all(not m.flags for m in fresh.list_messages(inbox))
        assert all(not m.flags for m, _ in fresh.fetch(inbox, fresh.list_messages(inbox)))
    finally:
        fresh.close()


def test_multiappend_batch_of_50(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    folder = store.ensure_folder(("Archive", "2019"))
    date = datetime(2015, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    items = [(meta({"\\Seen"} if i % 2 else set(), date), message(i)) for i in range(50)]
    ids = store.append(folder, items)
    assert len(ids) == 50 and all(ids)
    listed = store.list_messages(folder)
    assert [m.id for m in listed] == ids
    assert [m.message_id for m in listed] == [f"<msg-{i}@example.test>" for i in range(50)]
    # fetch a subset (gaps in the uid set) and a vanished uid
    wanted = [listed[i] for i in (0, 1, 2, 10, 49)] + [MessageMeta(id="99999", size=1)]
    got = {m.id: raw for m, raw in store.fetch(folder, wanted)}
    assert got == {listed[i].id: message(i) for i in (0, 1, 2, 10, 49)}


def test_empty_folder(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    folder = store.ensure_folder(("Empty",))
    assert store.list_messages(folder) == []
    assert list(store.fetch(folder, [])) == []
    assert store.append(folder, []) == []


def test_missing_folder_errors(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    ghost = FolderInfo(path=("Ghost",))
    with pytest.raises(FolderError):
        store.list_messages(ghost)
    with pytest.raises(FolderError):
        store.append(ghost, [(meta(), message(1)), (meta(), message(2))])
    # a NO answer leaves the connection in sync and usable
    inbox = store.ensure_folder(("INBOX",))
    assert store.append(inbox, [(meta(), message(3))]) == ["1"]


# ------------------------------------------------------------------ connecting
def test_registry_opens_imap(dovecot: DovecotServer, new_user: Callable[..., str]) -> None:
    store = open_store(dovecot.account(new_user()), "source")
    try:
        assert isinstance(store, ImapStore)
        assert isinstance(store, Destination)
        assert store.capabilities.append_returns_id
    finally:
        store.close()
        store.close()  # idempotent


def test_wrong_password(dovecot: DovecotServer, new_user: Callable[..., str]) -> None:
    user = new_user(password="right-one")
    with pytest.raises(AuthError) as info:
        open_imap(dovecot.account(user, password="Wr0ngSecret!"), "source")
    text = str(info.value)
    assert "Wr0ngSecret!" not in text and "right-one" not in text
    assert user in text and "login failed" in text


def test_tls_requires_ca(dovecot: DovecotServer, new_user: Callable[..., str]) -> None:
    user = new_user()
    with pytest.raises(TLSError) as info:
        open_imap(dovecot.account(user, security="tls"), "source")
    assert "ca_file" in str(info.value) and "verify_tls: false" in str(info.value)

    store = open_imap(dovecot.account(user, security="tls", ca_file=str(dovecot.cert_path)), "source")
    try:
        assert ("INBOX",) in {f.path for f in store.list_folders()}
    finally:
        store.close()

    unverified = open_imap(dovecot.account(user, security="tls", verify_tls=False), "source")
    unverified.close()


def test_starttls(dovecot: DovecotServer, new_user: Callable[..., str]) -> None:
    user = new_user()
    with pytest.raises(TLSError):
        open_imap(dovecot.account(user, security="starttls"), "source")
    store = open_imap(dovecot.account(user, security="starttls", ca_file=str(dovecot.cert_path)), "source")
    try:
        folder = store.ensure_folder(("INBOX",))
        assert store.append(folder, [(meta(), message(1))]) == ["1"]
        assert [raw for _, raw in store.fetch(folder, store.list_messages(folder))] == [message(1)]
    finally:
        store.close()


def test_refused_append_is_a_message_error(server: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(server)
    inbox = store.ensure_folder(("INBOX",))
    for bad in ("\\Bogus", "two words", "Straße", "paren("):
        with pytest.raises(MessageError) as info:
            store.append(inbox, [(meta(), message(2)), (meta({bad}), message(1))])
        assert repr(bad) in str(info.value)
        assert info.value.msg_id == "src"
    # the connection is still usable, and nothing of the refused batch was stored
    assert store.list_messages(inbox) == []
    assert store.append(inbox, [(meta(), message(3))]) == ["1"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[OVERQUOTA] Quota exceeded (mailbox for user is full)", QuotaError),
        ("Mailbox is over quota", QuotaError),
        ("[TRYCREATE] Mailbox doesn't exist: X", FolderError),
        ("[LIMIT] Message too large", MessageError),
    ],
)
def test_refusal_classification(dovecot: DovecotServer, open_user: OpenStore, text: str, error: type) -> None:
    store = open_user(dovecot)
    with pytest.raises(error) as info:
        store._refused(text)
    assert text in str(info.value)


def test_dropped_connection_is_transient(dovecot: DovecotServer, open_user: OpenStore) -> None:
    store = open_user(dovecot)
    inbox = store.ensure_folder(("INBOX",))
    store.append(inbox, [(meta(), message(1))])
    store._conn._imap.sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(TransientError):
        store.list_messages(inbox)
    with pytest.raises(TransientError):
        store.append(inbox, [(meta(), message(2))])
    store.close()


def test_unreachable_port_is_a_connect_error(dovecot: DovecotServer) -> None:
    port = free_ports(1)[0]
    account = dovecot.account("nobody")
    with pytest.raises(ConnectError) as info:
        open_imap(replace(account, port=port, timeout=5.0), "source")
    assert not isinstance(info.value, AuthError | TLSError)
    assert info.value.retryable


# ------------------------------------------------------------------ the wire layer, on canned bytes
def wire_on(data: bytes) -> tuple[Wire, list[bytes]]:
    stream = io.BytesIO(data)
    sent: list[bytes] = []
    return Wire(stream.read, stream.readline, sent.append, Counter()), sent


def test_wire_parses_fetch_literals_and_odd_items() -> None:
    body = b'Subject: x\r\n\r\n) {5}\r\n"quoted" (paren\r\n'
    data = (
        b'* 1 FETCH (UID 7 RFC822.SIZE %d FLAGS (\\Seen $Odd[1 Work) INTERNALDATE " 4-Mar-2019 05:06:07 +0530" '
        b'BODYSTRUCTURE (("text" "plain" NIL NIL {3}\r\nabc "7bit" 5) "mixed") MODSEQ (12) BODY[] {%d}\r\n'
        % (len(body), len(body))
        + body
        + b")\r\n"
        b"* 2 FETCH (FLAGS (\\Flagged) UID 8)\r\n"
        b'* 3 FETCH (UID 9 BODY[HEADER.FIELDS (MESSAGE-ID)] "" INTERNALDATE "01-Jan-2020 00:00:00 -0800" '
        b"RFC822.SIZE 0 BODY[] NIL)\r\n"
        b"* 4 EXISTS\r\n* VANISHED (EARLIER) 3:5,11\r\n"
        b"W1 OK [HIGHESTMODSEQ 12] done\r\n"
    )
    wire, sent = wire_on(data)
    got = wire.uid_fetch("1:*", b"(UID)", b"(CHANGEDSINCE 3 VANISHED)")
    assert sent == [b"W1 UID FETCH 1:* (UID) (CHANGEDSINCE 3 VANISHED)\r\n"]
    assert wire.counts == {"UID FETCH": 1}
    assert got.completion.ok and got.completion.code == b"HIGHESTMODSEQ 12"
    first, second, third = got.items
    assert (first.uid, first.size, first.body, first.modseq) == (7, len(body), body, 12)
    assert first.flags == [b"\\Seen", b"$Odd[1", b"Work"]
    assert parse_internaldate(first.internal_date or b"") == datetime(
        2019, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )
    assert (second.uid, second.flags, second.body) == (8, [b"\\Flagged"], None)
    assert (third.uid, third.header, third.size, third.body) == (9, b"", 0, None)
    assert got.vanished == [3, 4, 5, 11]
    assert wire.exists == 4


def test_wire_bye_and_desync_are_lost_connections() -> None:
    from migrator.connectors.imap_wire import WireLost

    wire, _ = wire_on(b"* BYE shutting down\r\n")
    with pytest.raises(WireLost, match="shutting down"):
        wire.command("NOOP", b"")
    wire, _ = wire_on(b"X9 OK not ours\r\n")
    with pytest.raises(WireLost):
        wire.command("NOOP", b"")
    wire, _ = wire_on(b"* 1 FETCH (UID 1 BODY[] {10}\r\nabc")
    with pytest.raises(WireLost, match="inside a literal"):
        wire.uid_fetch("1", b"(BODY[])")


def test_wire_multiappend_bytes_on_the_wire() -> None:
    wire, sent = wire_on(b"W1 OK [APPENDUID 5 3:4] done\r\n")
    entries = [AppendEntry(b"(\\Seen)", b'"01-Jan-2020 00:00:00 +0000"', b"one"), AppendEntry(b"()", b"", b"two!")]
    done = wire.append(b'"INBOX"', entries, plus=True, minus=False)
    assert done.ok and parse_appenduid(done.text, 2) == ["3", "4"]
    assert b"".join(sent) == (
        b'W1 APPEND "INBOX" (\\Seen) "01-Jan-2020 00:00:00 +0000" {3+}\r\none () {4+}\r\ntwo!\r\n'
    )
    # synchronizing literals wait for "+" each; a NO instead of "+" ends the command in sync
    wire, sent = wire_on(b"+ go\r\nW1 NO [OVERQUOTA] full\r\n")
    done = wire.append(b"X", entries, plus=False, minus=False)
    assert done.status == "NO" and b"OVERQUOTA" in done.text
    assert b"".join(sent) == b'W1 APPEND X (\\Seen) "01-Jan-2020 00:00:00 +0000" {3}\r\none () {4}\r\n'


@pytest.mark.parametrize(
    "when",
    [
        datetime(2019, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2001, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=8))),
        datetime(1999, 1, 9, 0, 0, 0, tzinfo=UTC),
        datetime(2024, 7, 1, 12, 0, 0, tzinfo=timezone(-timedelta(hours=3, minutes=30))),
    ],
)
def test_internaldate_round_trip(when: datetime) -> None:
    text = format_internaldate(when)
    assert text.startswith(b'"') and text.endswith(b'"') and len(text) == 28
    back = parse_internaldate(text[1:-1])
    assert back == when and back is not None and back.utcoffset() == when.utcoffset()


@pytest.mark.parametrize(
    "block",
    [
        b"Message-ID: <a@b>\r\n\r\n",
        b"message-id:   <a@b>  \r\n\r\n",
        b"Message-ID:\r\n <folded@b>\r\n\r\n",
        b"Message-Id: <a b@c>\r\n\r\n",
        b"Message-ID: <first@b>\r\nMessage-ID: <second@b>\r\n\r\n",
        b"Message-ID: \t<tab@b>\r\n\r\n",
        b"Message-ID: \xc3\xa4@b\r\n\r\n",
        b"\r\n",
        b"Message-ID:\r\n\r\n",
    ],
)
def test_listing_message_id_matches_the_model(block: bytes) -> None:
    from migrator.connectors.imap import _message_id
    from migrator.model import message_id_from_header_block

    assert _message_id(block) == message_id_from_header_block(block)


def test_wire_fast_and_general_fetch_parsers_agree() -> None:
    header = b"Message-ID: <x@y>\r\n\r\n"
    dovecot = b'* 3 FETCH (UID 17 RFC822.SIZE 99 FLAGS (\\Seen $Work) INTERNALDATE " 4-Mar-2019 05:06:07 +0530" '
    reordered = b'* 3 FETCH (FLAGS (\\Seen $Work) UID 17 INTERNALDATE " 4-Mar-2019 05:06:07 +0530" RFC822.SIZE 99 '
    items = []
    for head in (dovecot, reordered):
        wire, _ = wire_on(head + b"BODY[HEADER.FIELDS (MESSAGE-ID)] {%d}\r\n%s)\r\nW1 OK\r\n" % (len(header), header))
        items.append(wire.uid_fetch("17", b"(UID)").items[0])
    assert items[0] == items[1]
    assert (items[0].uid, items[0].size, items[0].header, items[0].body) == (17, 99, header, None)


@pytest.mark.parametrize(
    "data",
    [
        b"* 1 FETCH (UID 1 FLAGS (\\Se",  # cut inside a line
        b"* 1 FETCH (UID 1 BODY[] {3}\r\nabc",  # cut after a literal, before the line's end
        b"* 1 FETCH (UID 1 FLAGS \r\n",  # garbled
    ],
)
def test_wire_cut_or_garbled_answers_are_lost_connections(data: bytes) -> None:
    from migrator.connectors.imap_wire import WireLost

    wire, _ = wire_on(data)
    with pytest.raises(WireLost):
        wire.uid_fetch("1", b"(UID FLAGS)")
