"""The checkpoint store: transactions, validity changes, claims, permissions, no secrets."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from migrator.errors import LockedError
from migrator.model import MessageMeta
from migrator.state import FolderRef, RunLock, State


def R(path=("INBOX",), validity=7, source="src", dst=None) -> FolderRef:
    return FolderRef("j", source, tuple(path), validity, tuple(dst or path))


def M(id_: str, mid: str | None = "<a@x>", size: int = 100) -> MessageMeta:
    return MessageMeta(id=id_, size=size, message_id=mid)


def test_created_0600_with_schema(tmp_path):
    path = tmp_path / "s" / "plan.db"
    st = State.open(path)
    st.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    st = State.open(path)
    assert st.db.execute("select value from meta where key='schema_version'").fetchone()[0] == "2"
    assert {"runs", "folders", "messages", "errors", "meta"} <= set(st.db.table_names())


def test_pending_then_copied_and_claims(tmp_path):
    st = State.open(tmp_path / "p.db")
    st.set_folder(R())
    st.mark_pending(R(), [(M("1"), None), (M("2", mid=None), "h2")], 1)
    fs = st.folder_state(R())
    assert fs.pending == {"1", "2"} and fs.done == frozenset()
    st.mark_copied(R(), [(M("1"), "101", None)], 1)
    fs = st.folder_state(R())
    assert fs.done == {"1"} and fs.pending == {"2"}
    st.mark_copied(R(), [(M("2", mid=None), None, None)], 1, status="matched")
    claims = st.claimed("j", "src", ("INBOX",))
    assert claims == {("mid", "<a@x>", 100): 1, ("sha", "h2", 100): 1}  # the hash survived the update
    # claims are per source: another source merged into the same mailbox claims nothing yet
    assert st.claimed("j", "other", ("INBOX",)) == {}
    assert st.done_rows(R())["1"].dst_id == "101"


def test_validity_change_drops_old_rows(tmp_path):
    st = State.open(tmp_path / "p.db")
    st.set_folder(R(("A",), 1))
    st.mark_copied(R(("A",), 1), [(M("1"), None, None)], 1)
    st.set_reconciled(R(("A",), 1))
    st.set_cursor(R(("A",), 1), "c1")
    assert st.folder_state(R(("A",), 1)).reconciled
    assert st.folder_state(R(("A",), 1)).cursor == "c1"
    st.set_folder(R(("A",), 2))
    fs = st.folder_state(R(("A",), 2))
    assert fs.validity == 2 and fs.done == frozenset() and not fs.reconciled and fs.cursor is None
    assert st.claimed("j", "src", ("A",)) == {}


def test_readonly_missing_file_creates_nothing(tmp_path):
    path = tmp_path / "none.db"
    st = State.open(path, readonly=True)
    st.set_folder(R(("A",), 1))
    st.mark_copied(R(("A",), 1), [(M("1"), None, None)], 1)
    assert st.start_run("run", True) == 0
    st.close()
    assert not path.exists()


def test_readonly_existing_file_is_not_written(tmp_path):
    path = tmp_path / "p.db"
    State.open(path).close()
    before = path.read_bytes()
    st = State.open(path, readonly=True)
    st.mark_copied(R(("A",), 1), [(M("1"), None, None)], 1)
    st.close()
    assert path.read_bytes() == before


def test_lock_refuses_second_holder_and_dies_with_process(tmp_path):
    db = tmp_path / "p.db"
    with RunLock(db), pytest.raises(LockedError, match="another run"), RunLock(db):
        pass
    # a holder killed with SIGKILL leaves no stale lock
    code = (
        f"from migrator.state import RunLock; import os; l = RunLock({str(db)!r}).__enter__(); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    with RunLock(db):
        pass


def test_flags_source_deletion_and_forgetting(tmp_path):
    st = State.open(tmp_path / "p.db")
    ref = R(("A",), 3)
    st.set_folder(ref)
    st.mark_copied(ref, [(MessageMeta("1", 10, frozenset({"\\Seen"}), message_id="<1@x>"), "d1", None)], 1)
    assert st.done_rows(ref)["1"].flags == {"\\Seen"}
    st.set_flags(ref, [("1", frozenset({"\\Seen", "Work"}))])
    st.mark_source_deleted(ref, ["1"])
    row = st.done_rows(ref)["1"]
    assert row.flags == {"\\Seen", "Work"} and row.src_deleted
    assert [(r.path, r.dst, r.validity) for r in st.known_folders("j", "src")] == [(("A",), ("A",), 3)]
    st.forget_messages(ref, ["1"])
    assert st.done_rows(ref) == {}
    st.forget_folder(ref)
    assert st.known_folders("j", "src") == []


def test_stores_without_validity_upsert_one_row_per_message(tmp_path):
    """POP3, Maildir and mbox have no UIDVALIDITY: pending then copied must stay ONE row
    (a NULL in the primary key would make SQLite insert a second one)."""
    st = State.open(tmp_path / "p.db")
    ref = R(("INBOX",), None)
    st.set_folder(ref)
    st.mark_pending(ref, [(M("1"), None)], 1)
    st.mark_copied(ref, [(M("1"), "d1", None)], 1)
    rows = st.db.execute("select status from messages").fetchall()
    assert rows == [("copied",)]
    fs = st.folder_state(ref)
    assert fs.validity is None and fs.done == {"1"} and fs.pending == frozenset()
    st.set_folder(ref)  # same (absent) validity: nothing dropped
    assert st.folder_state(ref).done == {"1"}


def test_journal_mode_follows_the_environment(tmp_path, monkeypatch):
    from migrator.errors import PlanError

    monkeypatch.setenv("MIGRATOR_STATE_JOURNAL", "delete")
    st = State.open(tmp_path / "d.db")
    assert st.db.execute("pragma journal_mode").fetchone()[0] == "delete"
    st.close()
    monkeypatch.setenv("MIGRATOR_STATE_JOURNAL", "sideways")
    with pytest.raises(PlanError, match="MIGRATOR_STATE_JOURNAL"):
        State.open(tmp_path / "e.db")
    monkeypatch.delenv("MIGRATOR_STATE_JOURNAL")
    st = State.open(tmp_path / "w.db")
    assert st.db.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_readonly_open_after_a_sigkill_recovers_the_wal(tmp_path):
    """`migrator status` / dry runs right after a kill -9: the hot WAL is recovered, not an error."""
    db = tmp_path / "k.db"
    code = (
        "from migrator.state import State, FolderRef; from migrator.model import MessageMeta; import os\n"
        f"st = State.open({str(db)!r}); ref = FolderRef('j', 's', ('A',), 1, ('A',)); st.set_folder(ref)\n"
        "st.mark_copied(ref, [(MessageMeta('1', 5, message_id='<m@x>'), 'd', None)], 1)\n"
        "os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    st = State.open(db, readonly=True)
    assert st.done_rows(FolderRef("j", "s", ("A",), 1, ("A",)))["1"].dst_id == "d"


def test_a_transaction_commits_its_writes_together_or_none_of_them(tmp_path):
    path = tmp_path / "t.db"
    st = State.open(path)
    st.set_folder(R())
    with st.transaction():
        st.set_dst_mark("j", ("INBOX",), (7, 11))
        st.set_cursor(R(), "c1")
        st.set_reconciled(R())
        other = State.open(path, readonly=True)  # another reader sees nothing of it yet
        assert other.dst_mark("j", ("INBOX",)) is None
        other.close()
    assert st.dst_mark("j", ("INBOX",)) == (7, 11) and st.cursors("j", "src") == {'["INBOX"]': "c1"}
    with pytest.raises(RuntimeError), st.transaction():
        st.set_dst_mark("j", ("INBOX",), (7, 99))
        st.set_cursor(R(), "c2")
        raise RuntimeError("a failure half way")
    assert st.dst_mark("j", ("INBOX",)) == (7, 11) and st.cursors("j", "src") == {'["INBOX"]': "c1"}
    fs = st.folder_state(R())
    assert fs.reconciled and fs.cursor == "c1"
    st.close()


@pytest.mark.parametrize("validity", [7, None])
def test_confirm_sent_updates_pending_rows_and_writes_unknown_ones_whole(tmp_path, validity):
    st = State.open(tmp_path / "p.db")
    ref = R(("INBOX",), validity)
    st.set_folder(ref)
    st.mark_pending(ref, [(M("1"), None), (M("2", mid=None), "h2")], 1)
    # "2" keeps its pending hash; "3" was never checkpointed pending: written whole
    st.confirm_sent(ref, [(M("1"), "d1", None), (M("2", mid=None), "d2", None), (M("3"), "d3", None)], 2,
                    reasons={"1": "altered by the destination: stored 99 of 100 bytes"})  # fmt: skip
    rows = st.db.execute("select src_id, dst_id, status, content_hash, reason, run_id from messages order by src_id")
    assert rows.fetchall() == [
        ("1", "d1", "copied", None, "altered by the destination: stored 99 of 100 bytes", 2),
        ("2", "d2", "copied", "h2", None, 2),
        ("3", "d3", "copied", None, None, 2),
    ]
    fs = st.folder_state(ref)
    assert fs.done == {"1", "2", "3"} and fs.pending == frozenset()


def test_an_old_state_db_gets_the_destination_index_without_status(tmp_path):
    path = tmp_path / "old.db"
    State.open(path).close()
    with sqlite3.connect(path) as db:  # as the first releases made it
        db.execute("drop index messages_dst_folder")
        db.execute("create index messages_dst on messages (job, dst_folder, status)")
    st = State.open(path)
    names = {r[0] for r in st.db.execute("select name from sqlite_master where type = 'index'")}
    assert "messages_dst_folder" in names and "messages_dst" not in names
    plan = " ".join(str(r) for r in st.db.execute(
        "explain query plan select message_id from messages where job = 'j' and dst_folder = 'INBOX'"))  # fmt: skip
    assert "messages_dst_folder" in plan


def _rows(st: State) -> list[tuple]:
    return st.conn.execute(
        "select src_id, dst_id, size, message_id, content_hash, flags, status, run_id from messages order by src_id"
    ).fetchall()


def test_a_journaled_batch_is_confirmed_into_copied_rows_in_one_step(tmp_path):
    st = State.open(tmp_path / "p.db")
    ref = R()
    st.set_folder(ref)
    batch = [(MessageMeta("1", 10, frozenset({"\\Seen", "$Work"}), None, "<a@x>"), None), (M("2", mid=None), "h2")]
    ticket = st.journal_pending(ref, batch, 3)
    assert ticket > 0 and _rows(st) == []  # one journal row, no message row yet
    st.confirm_sent(ref, [(batch[0][0], "d1", None), (batch[1][0], "d2", "h2")], 3, ticket=ticket)
    assert st.conn.execute("select count(*) from inflight").fetchone() == (0,)
    assert _rows(st) == [
        ("1", "d1", 10, "<a@x>", None, '["$Work", "\\\\Seen"]', "copied", 3),
        ("2", "d2", 100, None, "h2", "[]", "copied", 3),
    ]


def test_a_journaled_batch_left_by_a_killed_run_is_pending_at_the_next_open(tmp_path):
    path = tmp_path / "p.db"
    st = State.open(path)
    ref = R()
    st.set_folder(ref)
    st.mark_copied(ref, [(M("2", mid=None), "old-d2", None)], 1, status="failed")  # an earlier run's failure
    st.journal_pending(ref, [(MessageMeta("1", 10, frozenset({"\\Seen"}), None, "<a@x>"), None),
                             (M("2", mid=None), "h2")], 2)  # fmt: skip
    # what a killed run leaves: the journal row, committed; nothing else
    # a read-only open (status, dry run, verify) reads it as pending rows and writes nothing
    ro = State.open(path, readonly=True)
    assert ro.folder_state(ref).pending == {"1", "2"}
    assert ro.folder_state(ref, ids=False).pending == {"1", "2"}
    assert {r["job"]: r.get("pending") for r in ro.job_summary()} == {"j": 2}
    ro.close()
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from inflight").fetchone() == (1,)
        assert db.execute("select status from messages").fetchall() == [("failed",)]
    st.conn.close()  # the killed run
    st = State.open(path)  # the next run
    assert st.conn.execute("select count(*) from inflight").fetchone() == (0,)
    assert _rows(st) == [
        ("1", None, 10, "<a@x>", None, '["\\\\Seen"]', "pending", 2),
        ("2", "old-d2", 100, None, "h2", "[]", "pending", 2),  # what mark_pending made of it
    ]
    fs = st.folder_state(ref)
    assert fs.pending == {"1", "2"} and fs.failed == frozenset()


def test_expanding_only_the_given_batches(tmp_path):
    st = State.open(tmp_path / "p.db")
    ref = R()
    t1 = st.journal_pending(ref, [(M("1"), None)], 1)
    t2 = st.journal_pending(ref, [(M("2"), None)], 1)
    assert st.expand_pending([t2]) == 1 and st.expand_pending([]) == 0
    assert [r[0] for r in _rows(st)] == ["2"]
    assert st.conn.execute("select id from inflight").fetchall() == [(t1,)]
    assert State.open(tmp_path / "r.db", readonly=True).journal_pending(ref, [(M("3"), None)], 1) == 0


def test_a_version_1_state_is_upgraded_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "v1.db"
    State.open(path).close()
    with sqlite3.connect(path) as db:  # as version 1 made it: no journal table
        db.execute("drop table inflight")
        db.execute("update meta set value = '1' where key = 'schema_version'")
    st = State.open(path)
    assert st.conn.execute("select value from meta where key = 'schema_version'").fetchone() == ("2",)
    assert st.journal_pending(R(), [(M("1"), None)], 1) > 0
    st.close()
    with sqlite3.connect(path) as db:  # what this version's DB is to an older migrator
        db.execute("update meta set value = '3' where key = 'schema_version'")
    with pytest.raises(RuntimeError, match="state schema 3 is newer than this migrator"):
        State.open(path)
