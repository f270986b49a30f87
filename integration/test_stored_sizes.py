"""The stored-size check after every APPEND batch, against a real Dovecot.

``ImapStore.stored_sizes`` answers with the RFC822.SIZE the server holds for the UIDs an
append returned (one UID FETCH per batch, whichever APPEND path was taken), and
``FolderCopy`` compares them with what it sent: a message the destination stored
differently (Dovecot stores CR CR LF as CR LF, 2 bytes shorter here) stays at the
destination, is checkpointed as copied with the reason, and is handed to ``on_altered``.
Where sizes are not exact (Exchange Online rebuilds MIME) nothing is asked and nothing
is reported.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient

from integration.dovecot import DovecotServer
from integration.test_exchange_online import Exo, exo  # noqa: F401  (the module-scoped fixture)
from migrator.connectors.base import open_store
from migrator.connectors.imap import ImapStore, open_imap
from migrator.connectors.local import open_maildir
from migrator.model import Account, FolderInfo, MessageMeta, crlf_size
from migrator.state import FolderRef, State
from migrator.stats import AlteredMessage, altered_reason
from migrator.transfer import FolderCopy, altered_messages

INBOX = FolderInfo(("INBOX",))
PLAIN = b"Message-ID: <plain@sizes.test>\r\nSubject: plain\r\n\r\nbody\r\n"
BARE_LF = b"Message-ID: <lf@sizes.test>\nSubject: bare LF\n\nbody\nmore\n"
CR_CR_LF = b"Message-ID: <crcrlf@sizes.test>\r\nSubject: CR CR LF\r\n\r\nbroken\r\r\nmailer\r\r\n"
NO_EOL = b"Message-ID: <noeol@sizes.test>\r\nSubject: no final line end\r\n\r\nbody"
MIXED = b"Message-ID: <mixed@sizes.test>\r\nSubject: mixed\r\n\r\ncrlf\r\nlf\nend\r\n"
MESSAGES = (PLAIN, BARE_LF, CR_CR_LF, NO_EOL, MIXED)
STORED_CR_CR_LF = len(CR_CR_LF) - 2  # Dovecot keeps one CR LF of each CR CR LF


def meta(n: int, raw: bytes) -> MessageMeta:
    return MessageMeta(str(n), crlf_size(raw), frozenset({"\\Seen"}), datetime(2020, 1, n + 1, tzinfo=UTC))


@pytest.fixture
def dst(dovecot: DovecotServer, new_user, request: pytest.FixtureRequest) -> Iterator[ImapStore]:
    """A destination ImapStore for a fresh user; ``imap_disable`` from the test's parameter."""
    disable = getattr(request, "param", "")
    store = open_imap(dovecot.account(new_user(), options={"imap_disable": disable}), "destination")
    yield store
    store.close()


# --------------------------------------------------------------------------- the connector
@pytest.mark.parametrize(
    "dst",
    ["", "MULTIAPPEND", "MULTIAPPEND LITERAL+"],
    ids=["multiappend", "pipelined", "pipelined-sync-literals"],
    indirect=True,
)
def test_stored_sizes_name_what_dovecot_holds_after_each_append_path(dst: ImapStore) -> None:
    assert dst.capabilities.reports_stored_sizes and dst.capabilities.exact_sizes
    items = [(meta(i, raw), raw) for i, raw in enumerate(MESSAGES)]
    ids = dst.append(INBOX, items)
    assert None not in ids
    before = dst.command_counts["UID FETCH"]
    sizes = dst.stored_sizes(INBOX, [*ids, "999999"])  # a UID that does not exist is left out
    assert dst.command_counts["UID FETCH"] - before == 1  # one request for the batch
    want = [len(PLAIN), crlf_size(BARE_LF), STORED_CR_CR_LF, len(NO_EOL), crlf_size(MIXED)]
    assert sizes == dict(zip(ids, want, strict=True))
    # what FolderCopy makes of them: only the CR CR LF message is altered
    (entry,) = altered_messages(("INBOX",), items, ids, sizes)
    assert entry == AlteredMessage(("INBOX",), "2", ids[2], len(CR_CR_LF), STORED_CR_CR_LF)
    assert entry.reason == f"altered by the destination: stored {STORED_CR_CR_LF:,} of {len(CR_CR_LF):,} bytes"
    assert dst.stored_sizes(INBOX, []) == {}


@pytest.mark.parametrize("dst", ["", "MULTIAPPEND", "MULTIAPPEND LITERAL+"], indirect=True,
                         ids=["multiappend", "pipelined", "pipelined-sync-literals"])  # fmt: skip
def test_a_folder_this_connection_created_has_its_sizes_checked_within_the_appends_round_trip(
    dst: ImapStore, dovecot: DovecotServer
) -> None:
    """After ``list_folders``, a new folder costs one pipelined CREATE + SUBSCRIBE (no
    LIST), and the first batch's sizes come with its APPEND (EXAMINE and UID FETCH
    sent behind the last literal): ``stored_sizes`` then sends nothing. Without
    non-synchronizing literals, or once the folder is selected (a later batch), it
    asks on its own. Either way the sizes are what the server holds."""
    dst.list_folders()
    before = dst.command_counts.copy()
    folder = dst.ensure_folder(("Fresh", "Box"))
    assert dst.command_counts - before == Counter({"CREATE": 2, "SUBSCRIBE": 1})
    rides = "LITERAL+" in dst.server_capabilities
    items = [(meta(i, raw), raw) for i, raw in enumerate(MESSAGES)]
    want = [len(PLAIN), crlf_size(BARE_LF), STORED_CR_CR_LF, len(NO_EOL), crlf_size(MIXED)]
    batches = [items[:1], items[1:]] if "MULTIAPPEND" not in dst.server_capabilities else [items[:3], items[3:]]
    for n, batch in enumerate(batches):
        ids = dst.append(folder, batch)
        sent = dst.command_counts.copy()
        sizes = dst.stored_sizes(folder, ids)
        asked = sum((dst.command_counts - sent).values())
        # first batch: nothing, else EXAMINE + UID FETCH (one round trip); later: the
        # folder is selected, one UID FETCH
        assert asked == ((0 if rides else 2) if n == 0 else 1), (n, dst.command_counts - sent)
        offset = 0 if n == 0 else len(batches[0])
        assert sizes == dict(zip(ids, want[offset : offset + len(batch)], strict=True))
    c = IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=30)
    try:
        c.login(dst.account.user, "pw")
        assert "Fresh/Box" in {name for _f, _s, name in c.list_sub_folders()}
        status = c.folder_status("Fresh/Box", ["UIDVALIDITY", "UIDNEXT"])
    finally:
        c.logout()
    assert dst.written_mark(folder) == (status[b"UIDVALIDITY"], status[b"UIDNEXT"])


def test_a_folder_created_meanwhile_by_someone_else_is_looked_up(dst: ImapStore, dovecot: DovecotServer) -> None:
    """A folder another connection created after this one listed: CREATE answers
    ALREADYEXISTS, the folder is looked up, and it does not count as created here
    (it may hold messages: a first copy must look for them)."""
    dst.list_folders()
    c = IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=30)
    try:
        c.login(dst.account.user, "pw")
        c.create_folder("Elsewhere")
        c.append("Elsewhere", PLAIN)
    finally:
        c.logout()
    before = dst.command_counts.copy()
    folder = dst.ensure_folder(("Elsewhere",))
    assert folder.path == ("Elsewhere",) and folder.selectable
    assert (dst.command_counts - before)["LIST"] == 1
    assert not dst.created_empty(folder)
    assert [m.message_id for m in dst.list_messages(folder)] == ["<plain@sizes.test>"]


# --------------------------------------------------------------------------- the copy
@pytest.fixture
def maildir_source(tmp_path: Path) -> Iterator[tuple[object, list[MessageMeta]]]:
    """A Maildir source holding MESSAGES byte for byte (bare LF files stay bare LF)."""
    root = tmp_path / "src"
    writer = open_maildir(Account(type="maildir", path=str(root)), "destination")
    writer.append(writer.ensure_folder(("INBOX",)), [(meta(i, raw), raw) for i, raw in enumerate(MESSAGES)])
    writer.close()
    src = open_maildir(Account(type="maildir", path=str(root)), "source")
    yield src, src.list_messages(INBOX)
    src.close()


class Events:
    def __init__(self) -> None:
        self.altered: list[AlteredMessage] = []
        self.copied = 0
        self.failed: list[str] = []


def copy(src, dst, state: State, todo: list[MessageMeta], batch_messages: int = 2) -> Events:
    events = Events()

    def on_copied(n: int, _bytes: int) -> None:
        events.copied += n

    ref = FolderRef("box", "src", ("INBOX",), None, ("INBOX",))
    FolderCopy(
        ref=ref,
        src=src,
        dst=dst,
        src_folder=INBOX,
        dst_folder=dst.ensure_folder(("INBOX",)),
        state=state,
        run_id=1,
        batch_bytes=1 << 20,
        batch_messages=batch_messages,
        on_copied=on_copied,
        on_failed=lambda m, reason: events.failed.append(reason),
        on_vanished=lambda m: events.failed.append(f"vanished {m.id}"),
        on_altered=events.altered.append,
    ).run(todo)
    return events


def rows(state_path: Path) -> dict[str, tuple[str, str | None]]:
    """Message-ID -> (status, reason) of every checkpoint row."""
    with sqlite3.connect(state_path) as db:
        return {
            mid: (status, reason)
            for mid, status, reason in db.execute("select message_id, status, reason from messages")
        }


def raw_of(src, msgs: list[MessageMeta]) -> dict[str, bytes]:
    return {m.id: raw for m, raw in src.fetch(INBOX, msgs)}


def test_folder_copy_keeps_names_and_checkpoints_a_message_the_destination_altered(
    maildir_source, dst: ImapStore, tmp_path: Path
) -> None:
    src, todo = maildir_source
    raws = raw_of(src, todo)
    (victim,) = [m for m in todo if raws[m.id] == CR_CR_LF]
    state = State.open(tmp_path / "s.db")
    try:
        events = copy(src, dst, state, todo, batch_messages=2)
    finally:
        state.close()
    assert (events.copied, events.failed) == (len(MESSAGES), [])
    assert dst.command_counts["UID FETCH"] == 3  # one per batch of 2 (5 messages)
    (entry,) = events.altered
    assert (entry.id, entry.sent, entry.stored, entry.folder) == (victim.id, len(CR_CR_LF), STORED_CR_CR_LF, ("INBOX",))
    # the stored copy stays at the destination: every message is there once
    held = {m.message_id: m.size for m in dst.list_messages(INBOX)}
    assert held[victim.message_id] == STORED_CR_CR_LF and len(held) == len(MESSAGES)
    assert entry.dst_id in {m.id for m in dst.list_messages(INBOX) if m.message_id == victim.message_id}
    # checkpointed as copied, with the reason on that row only
    reason = altered_reason(len(CR_CR_LF), STORED_CR_CR_LF)
    assert rows(tmp_path / "s.db") == {m.message_id: ("copied", reason if m.id == victim.id else None) for m in todo}


def test_no_size_check_where_the_destination_sizes_are_not_exact(maildir_source, dst: ImapStore, tmp_path: Path):
    """A destination whose listed sizes are not the sizes it was given (capabilities.
    exact_sizes False) would name every message: it is not asked."""
    src, todo = maildir_source
    dst.capabilities = replace(dst.capabilities, exact_sizes=False)
    state = State.open(tmp_path / "s.db")
    try:
        events = copy(src, dst, state, todo)
    finally:
        state.close()
    assert (events.copied, events.altered, events.failed) == (len(MESSAGES), [], [])
    assert dst.command_counts["UID FETCH"] == 0
    assert {reason for _status, reason in rows(tmp_path / "s.db").values()} == {None}


def test_exchange_online_is_not_size_checked(exo: Exo, maildir_source, tmp_path: Path) -> None:  # noqa: F811
    """Exchange Online rewrites messages: the exchange-online destination declares no
    stored sizes, and a copy to it sends no UID FETCH and names nothing altered (the
    Dovecot behind the proxy still stores the CR CR LF message 2 bytes shorter)."""
    src, todo = maildir_source
    proxy = exo.proxy()
    store = open_store(exo.account(proxy, exo.new_user()), "destination")
    try:
        assert (store.capabilities.exact_sizes, store.capabilities.reports_stored_sizes) == (False, False)
        state = State.open(tmp_path / "s.db")
        try:
            events = copy(src, store, state, todo)
        finally:
            state.close()
        inner = store._inner  # the IMAP session under the Exchange Online rules
        assert inner is not None and inner.command_counts["UID FETCH"] == 0
        assert (events.copied, events.altered, events.failed) == (len(MESSAGES), [], [])
        sizes = sorted(m.size for m in store.list_messages(INBOX))
    finally:
        store.close()
    assert STORED_CR_CR_LF in sizes and len(sizes) == len(MESSAGES)
