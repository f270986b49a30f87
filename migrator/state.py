"""The checkpoint store: ``state/<plan>.db``, SQLite.

The run reads and writes with plain SQL on one sqlite3 connection; ``State.db`` offers
the same connection through sqlite-utils for inspection and tools (imported on first
use, since importing it costs about 40 ms of every run's start).

One connection, one writer (a lock serialises the worker threads), batched
transactions, WAL journal on local files. A message row reaches ``copied`` only
after the destination confirmed it; before an APPEND the batch is recorded as
``pending`` so that a crash between the destination's acceptance and the
checkpoint is recognised on resume (the destination is looked at before
anything pending is sent again). The copy core records a batch's pending state as one
journal row (``inflight``), which reads as the pending rows: one write per message
instead of two.

Nothing secret is ever stored: job ids, folder names, Message-IDs, sizes, ids.

Schema (version 2: version 1 had no ``inflight``; a DB is upgraded when opened)::

    meta(key PK, value)                     schema_version, created
    runs(id PK, started, finished, status, command, dry_run, copied, matched,
         skipped, failed, bytes)
    folders(job, source, src_folder, src_validity, dst_folder, reconciled, cursor, updated)
             PK (job, source, src_folder)
    messages(job, source, src_folder, src_validity, src_id, dst_folder, dst_id, size,
             message_id, content_hash, flags, status, reason, src_deleted, run_id, updated)
             PK (job, source, src_folder, src_validity, src_id)
             status: pending | copied | matched | skipped | failed
             reason: why skipped / failed; on a copied or matched row, how the destination
             altered the message ("altered by the destination: stored N of M bytes")

``job`` is the mailbox id, ``source`` the source store's label (``Account.describe()``,
no secrets): one job may merge several sources into one destination. ``flags`` (JSON
list) are the flags last given to the destination copy (mirror mode compares them).
    inflight(id PK, job, source, src_folder, src_validity, dst_folder, run_id, updated, rows)
             a batch checkpointed before its APPEND, in one row (``rows``: JSON list of
             [src_id, size, message_id, content_hash, flags]); replaced by its messages'
             rows when the destination confirms it, read as their pending rows until then
    errors(id PK, run_id, job, folder, src_id, kind, message, at)
    marks(job, dst_folder, validity, uidnext, updated)  PK (job, dst_folder)
             the destination folder's (UIDVALIDITY, UIDNEXT) after this job last
             wrote to it: a later run that finds other numbers knows someone else
             wrote there (another job or plan, a state restored from a backup)

Folder paths are stored as JSON arrays of their decoded parts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from migrator.errors import PlanError
from migrator.fsinfo import journal_mode
from migrator.model import FolderPath, MatchKey, MessageMeta, match_key

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_VERSION = 2  # 2: the inflight journal (an older migrator would not read it as pending)
DONE = ("copied", "matched")


def folder_key(path: FolderPath) -> str:
    return json.dumps(list(path), ensure_ascii=False)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _import_sqlite_utils():  # type: ignore[no-untyped-def]
    """sqlite-utils, imported on first use of ``State.db``: a run never needs it (the
    checkpoint path is plain SQL on the sqlite3 connection) and importing it costs
    about 40 ms of every run's start, an eighth of a no-change re-run.

    It imports pandas and numpy when they are installed, only to convert their types
    on insert, which we never do; hide them while it is imported (and only then)."""
    import sys

    hidden = [name for name in ("numpy", "pandas") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import sqlite_utils
    finally:
        for name in hidden:
            del sys.modules[name]
    return sqlite_utils


def flags_text(flags: Iterable[str]) -> str:
    return json.dumps(sorted(flags), ensure_ascii=False)


NO_VALIDITY = 0  # stored for stores without UIDVALIDITY (IMAP's is never 0, RFC 3501)


MESSAGES_TABLE = """create table if not exists {schema}messages (
    job text, source text, src_folder text, src_validity integer, src_id text,
    dst_folder text, dst_id text, size integer, message_id text,
    content_hash text, flags text, status text, reason text,
    src_deleted integer default 0, run_id integer, updated text,
    primary key (job, source, src_folder, src_validity, src_id))"""

# one message's row, written whole (every status change but a confirmation of a pending
# row, State.confirm_sent); a destination id or hash already known is kept when none is given
_UPSERT = (
    "insert into messages (job, source, src_folder, src_validity, src_id, dst_folder, dst_id, size,"
    " message_id, content_hash, flags, status, reason, run_id, updated)"
    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " on conflict (job, source, src_folder, src_validity, src_id) do update set"
    " dst_folder = excluded.dst_folder, dst_id = coalesce(excluded.dst_id, dst_id),"
    " size = excluded.size, message_id = excluded.message_id,"
    " content_hash = coalesce(excluded.content_hash, content_hash),"
    " flags = excluded.flags, status = excluded.status, reason = excluded.reason,"
    " run_id = excluded.run_id, updated = excluded.updated"
)


@dataclass(frozen=True, slots=True)
class FolderRef:
    """Which folder of which source of which job, and where it goes.

    ``validity`` None (POP3, Maildir, mbox) is stored as 0: NULL would make every row
    distinct in the primary key (SQLite), so an upsert would never find its row."""

    job: str
    source: str
    path: FolderPath
    validity: int | None
    dst: FolderPath

    def __post_init__(self) -> None:
        if self.validity is None:
            object.__setattr__(self, "validity", NO_VALIDITY)


@dataclass(frozen=True, slots=True)
class FolderState:
    validity: int | None
    reconciled: bool
    done: frozenset[str]  # source ids copied or matched
    pending: frozenset[str]  # source ids sent but not confirmed (a crash happened)
    known: bool  # the folder has a row
    cursor: str | None = None  # incremental listing position
    failed: frozenset[str] = frozenset()  # source ids whose copy failed (tried again next run)
    n_done: int = 0  # how many source ids are copied or matched (also when ``done`` was not read)


@dataclass(frozen=True, slots=True)
class DoneRow:
    src_id: str
    dst_id: str | None
    flags: frozenset[str]
    src_deleted: bool


class State:
    """Checkpoint store. Thread-safe; every write is one transaction."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None, readonly: bool = False):
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()

    @property
    def db(self) -> sqlite_utils.Database:
        """The same connection as a ``sqlite_utils.Database`` (tables, rows, queries) for
        inspection and tools; the run's own reads and writes use ``conn``."""
        return _import_sqlite_utils().Database(self.conn)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: Path | str, *, readonly: bool = False) -> State:
        """Open (creating, 0600, with the schema) the DB at ``path``.

        ``readonly``: a dry run must leave no trace; if the file does not exist an
        empty in-memory store is used, otherwise the file is opened read-only."""
        path = Path(path)
        if readonly:
            if not path.exists():
                conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                state = cls(conn, None, readonly=True)
                state._create_schema()
                return state
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            try:
                conn.execute("select count(*) from sqlite_master").fetchone()
            except sqlite3.OperationalError:
                # a run killed with SIGKILL leaves a WAL that SQLite must recover before
                # anyone can read it, and recovery needs write access to the file; our
                # code still writes nothing (readonly=True gates every write)
                conn.close()
                conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
            state = cls(conn, path, readonly=True)
            state._check_version()
            state._shadow_inflight()
            return state
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        try:
            mode = journal_mode(path)  # WAL, or DELETE on network filesystems
        except ValueError as exc:
            conn.close()
            raise PlanError(str(exc)) from None
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute("PRAGMA synchronous=NORMAL")
        state = cls(conn, path)
        state._create_schema()
        state.expand_pending()  # batches a killed run had in flight
        return state

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _check_version(self) -> None:
        if not self.conn.execute("select 1 from sqlite_master where type = 'table' and name = 'meta'").fetchone():
            return
        row = self.conn.execute("select value from meta where key = 'schema_version'").fetchone()
        if row and int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: state schema {row[0]} is newer than this migrator ({SCHEMA_VERSION})")

    def _create_schema(self) -> None:
        self._check_version()
        with self._tx():
            self.conn.execute("create table if not exists meta (key text primary key, value text)")
            self.conn.execute(
                "insert or ignore into meta (key, value) values ('schema_version', ?), ('created', ?)",
                [str(SCHEMA_VERSION), now()],
            )
            self.conn.execute(  # upgrade: the new tables are created below
                "update meta set value = ? where key = 'schema_version' and cast(value as integer) < ?",
                [str(SCHEMA_VERSION), SCHEMA_VERSION],
            )
            self.conn.execute(
                """create table if not exists runs (
                    id integer primary key, started text, finished text, status text,
                    command text, dry_run integer, copied integer default 0,
                    matched integer default 0, skipped integer default 0,
                    failed integer default 0, bytes integer default 0)"""
            )
            self.conn.execute(
                """create table if not exists folders (
                    job text, source text, src_folder text, src_validity integer, dst_folder text,
                    reconciled integer default 0, cursor text, updated text,
                    primary key (job, source, src_folder))"""
            )
            self.conn.execute(MESSAGES_TABLE.format(schema=""))
            self.conn.execute(
                """create table if not exists inflight (
                    id integer primary key, job text, source text, src_folder text,
                    src_validity integer, dst_folder text, run_id integer, updated text, rows text)"""
            )
            # by destination folder (claimed); not by status, so that a checkpoint from
            # pending to copied leaves the index alone (the index of schema 1's first
            # releases had status in it: replaced)
            self.conn.execute("drop index if exists messages_dst")
            self.conn.execute("create index if not exists messages_dst_folder on messages (job, dst_folder)")
            self.conn.execute(
                """create table if not exists errors (
                    id integer primary key, run_id integer, job text, folder text,
                    src_id text, kind text, message text, at text)"""
            )
            self.conn.execute(
                """create table if not exists marks (
                    job text, dst_folder text, validity integer, uidnext integer, updated text,
                    primary key (job, dst_folder))"""
            )

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            conn = self.conn
            if conn.in_transaction:
                yield
                return
            conn.execute("begin immediate")
            try:
                yield
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes inside commit together (one commit instead of one each); nothing is
        written when the block raises. A read-only state writes nothing anyway."""
        if not self._write():
            yield
            return
        with self._tx():
            yield

    def _write(self) -> bool:
        return not self.readonly

    # ------------------------------------------------------------------ runs
    def start_run(self, command: str, dry_run: bool) -> int:
        if not self._write():
            return 0
        with self._tx():
            cur = self.conn.execute(
                "insert into runs (started, status, command, dry_run) values (?, 'running', ?, ?)",
                [now(), command, int(dry_run)],
            )
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, counts: dict[str, int]) -> None:
        if not self._write() or not run_id:
            return
        cols = ("copied", "matched", "skipped", "failed", "bytes")
        with self._tx():
            self.conn.execute(
                f"update runs set finished = ?, status = ?, {', '.join(f'{c} = ?' for c in cols)} where id = ?",
                [now(), status, *(int(counts.get(c, 0)) for c in cols), run_id],
            )

    # ------------------------------------------------------------------ folders
    def folder_state(self, ref: FolderRef, ids: bool = True) -> FolderState:
        """The folder's row and the source ids it accounts for by status. ``ids=False``:
        the row and the counts only, with empty id sets (what an unchanged folder needs;
        reading the ids of 10,000 messages costs more than the rest of its no-change
        visit), unless some are pending or failed: then the whole state, as those ids
        matter at once."""
        with self._lock:
            fk = folder_key(ref.path)
            row = self.conn.execute(
                "select src_validity, reconciled, cursor from folders where job = ? and source = ? and src_folder = ?",
                [ref.job, ref.source, fk],
            ).fetchone()
            if row is None:
                return FolderState(None, False, frozenset(), frozenset(), False)
            validity, reconciled, cursor = row  # validity as stored (0: none) for the query below
            shown = None if validity == NO_VALIDITY else validity
            if not ids:
                counts = dict(
                    self.conn.execute(
                        "select status, count(*) from messages where job = ? and source = ? and src_folder = ?"
                        " and src_validity is ? and status in ('copied', 'matched', 'pending', 'failed')"
                        " group by status",
                        [ref.job, ref.source, fk, validity],
                    )
                )
                if not counts.get("pending") and not counts.get("failed"):
                    n_done = counts.get("copied", 0) + counts.get("matched", 0)
                    return FolderState(shown, bool(reconciled), frozenset(), frozenset(), True, cursor, n_done=n_done)
            done: set[str] = set()
            pending: set[str] = set()
            failed: set[str] = set()
            for src_id, status in self.conn.execute(
                "select src_id, status from messages where job = ? and source = ? and src_folder = ?"
                " and src_validity is ? and status in ('copied', 'matched', 'pending', 'failed')",
                [ref.job, ref.source, fk, validity],
            ):
                {"pending": pending, "failed": failed}.get(status, done).add(src_id)
            return FolderState(
                shown, bool(reconciled), frozenset(done), frozenset(pending), True, cursor, frozenset(failed), len(done)
            )

    def done_among(self, ref: FolderRef, ids: Sequence[str]) -> frozenset[str]:
        """Which of ``ids`` are copied or matched (an incremental page: a few ids of a
        folder that may hold 100,000)."""
        out: set[str] = set()
        where = [ref.job, ref.source, folder_key(ref.path), ref.validity]
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                out.update(
                    row[0]
                    for row in self.conn.execute(
                        "select src_id from messages where job = ? and source = ? and src_folder = ?"
                        f" and src_validity is ? and status in ('copied', 'matched') and src_id in ({marks})",
                        [*where, *chunk],
                    )
                )
        return frozenset(out)

    def dst_mark(self, job: str, dst: FolderPath) -> tuple[int, int] | None:
        """The destination folder's (validity, next id) after ``job`` last wrote to it."""
        with self._lock:
            row = self.conn.execute(
                "select validity, uidnext from marks where job = ? and dst_folder = ?", [job, folder_key(dst)]
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def set_dst_mark(self, job: str, dst: FolderPath, mark: tuple[int, int] | None) -> None:
        if not self._write():
            return
        with self._tx():
            if mark is None:
                self.conn.execute("delete from marks where job = ? and dst_folder = ?", [job, folder_key(dst)])
                return
            self.conn.execute(
                "insert into marks (job, dst_folder, validity, uidnext, updated) values (?, ?, ?, ?, ?)"
                " on conflict (job, dst_folder) do update set validity = excluded.validity,"
                " uidnext = excluded.uidnext, updated = excluded.updated",
                [job, folder_key(dst), mark[0], mark[1], now()],
            )

    def cursors(self, job: str, source: str) -> dict[str, str | None]:
        """The stored listing cursor of every folder of ``source`` in ``job``, by
        ``folder_key`` (one query; for scheduling)."""
        with self._lock:
            return dict(
                self.conn.execute("select src_folder, cursor from folders where job = ? and source = ?", [job, source])
            )

    def set_folder(self, ref: FolderRef) -> None:
        """Record the folder's validity and destination. A changed validity drops the
        old rows and the cursor: the source ids they hold mean nothing now (the
        folder is re-matched against the destination, so nothing is copied twice)."""
        if not self._write():
            return
        fk, where = folder_key(ref.path), [ref.job, ref.source, folder_key(ref.path)]
        with self._tx():
            row = self.conn.execute(
                "select src_validity from folders where job = ? and source = ? and src_folder = ?", where
            ).fetchone()
            if row is not None and row[0] != ref.validity:
                self.conn.execute(
                    "delete from messages where job = ? and source = ? and src_folder = ? and src_validity is not ?",
                    [*where, ref.validity],
                )
                self.conn.execute(
                    "update folders set src_validity = ?, dst_folder = ?, reconciled = 0, cursor = null,"
                    " updated = ? where job = ? and source = ? and src_folder = ?",
                    [ref.validity, folder_key(ref.dst), now(), *where],
                )
            elif row is None:
                self.conn.execute(
                    "insert into folders (job, source, src_folder, src_validity, dst_folder, reconciled, updated)"
                    " values (?, ?, ?, ?, ?, 0, ?)",
                    [ref.job, ref.source, fk, ref.validity, folder_key(ref.dst), now()],
                )
            else:
                self.conn.execute(
                    "update folders set dst_folder = ?, updated = ? where job = ? and source = ? and src_folder = ?",
                    [folder_key(ref.dst), now(), *where],
                )

    def set_reconciled(self, ref: FolderRef) -> None:
        if not self._write():
            return
        with self._tx():
            self.conn.execute(
                "update folders set reconciled = 1, updated = ? where job = ? and source = ? and src_folder = ?",
                [now(), ref.job, ref.source, folder_key(ref.path)],
            )

    def set_cursor(self, ref: FolderRef, cursor: str | None) -> None:
        """Where an incremental listing resumes (saved after each processed page)."""
        if not self._write():
            return
        with self._tx():
            self.conn.execute(
                "update folders set cursor = ?, updated = ? where job = ? and source = ? and src_folder = ?",
                [cursor, now(), ref.job, ref.source, folder_key(ref.path)],
            )

    def forget_folder(self, ref: FolderRef) -> None:
        """The source folder is gone: drop its rows (mirror mode, after acting on it)."""
        if not self._write():
            return
        where = [ref.job, ref.source, folder_key(ref.path)]
        with self._tx():
            self.conn.execute("delete from messages where job = ? and source = ? and src_folder = ?", where)
            self.conn.execute("delete from folders where job = ? and source = ? and src_folder = ?", where)

    def known_folders(self, job: str, source: str) -> list[FolderRef]:
        """Every folder this source had, as it was recorded (validity included)."""
        with self._lock:
            return [
                FolderRef(job, source, tuple(json.loads(src)), validity, tuple(json.loads(dst)))
                for src, dst, validity in self.conn.execute(
                    "select src_folder, dst_folder, src_validity from folders where job = ? and source = ?",
                    [job, source],
                )
            ]

    def claimed(self, job: str, source: str, dst: FolderPath) -> Counter[MatchKey]:
        """How many destination messages of each identity this source's rows already
        account for (copied or matched into ``dst`` from any folder of this source).

        Per source on purpose: within one source, matching is a multiset (true
        duplicates stay two messages); across the sources merged into one mailbox a
        message the destination already has from another source is not copied again."""
        counts: Counter[MatchKey] = Counter()
        with self._lock:
            for mid, size, sha in self.conn.execute(
                "select message_id, size, content_hash from messages"
                " where job = ? and source = ? and dst_folder = ? and status in ('copied', 'matched')",
                [job, source, folder_key(dst)],
            ):
                key = match_key(mid, size, sha)
                if key:
                    counts[key] += 1
        return counts

    # ------------------------------------------------------------------ messages
    def _upsert(
        self,
        ref: FolderRef,
        rows: Iterable[tuple[MessageMeta, str | None, str | None, str, str | None]],
        run_id: int,
    ) -> None:
        if not self._write():
            return
        fk, dk, ts = folder_key(ref.path), folder_key(ref.dst), now()
        texts: dict[frozenset[str], str] = {}  # a batch holds few distinct flag sets
        with self._tx():
            self.conn.executemany(
                _UPSERT,
                [
                    (ref.job, ref.source, fk, ref.validity, m.id, dk, dst_id, m.size, m.message_id, sha,
                     texts.get(m.flags) or texts.setdefault(m.flags, flags_text(m.flags)), status, reason,
                     run_id, ts)
                    for m, dst_id, sha, status, reason in rows
                ],
            )  # fmt: skip

    def journal_pending(self, ref: FolderRef, msgs: Sequence[tuple[MessageMeta, str | None]], run_id: int) -> int:
        """What ``mark_pending`` records, as one journal row for the whole batch (one
        write instead of one per message; ``confirm_sent(..., ticket=)`` turns it into
        the messages' rows). Until then it counts as the batch's pending rows: it is
        expanded into them by ``expand_pending`` (a failed or interrupted copy, the next
        open after a crash) and read as them by a read-only state. Returns the ticket
        (0: nothing written, a read-only state)."""
        if not self._write() or not msgs:
            return 0
        texts: dict[frozenset[str], str] = {}  # a batch holds few distinct flag sets
        rows = [
            (m.id, m.size, m.message_id, sha, texts.get(m.flags) or texts.setdefault(m.flags, flags_text(m.flags)))
            for m, sha in msgs
        ]
        with self._tx():
            cur = self.conn.execute(
                "insert into inflight (job, source, src_folder, src_validity, dst_folder, run_id, updated, rows)"
                " values (?, ?, ?, ?, ?, ?, ?, ?)",
                [ref.job, ref.source, folder_key(ref.path), ref.validity, folder_key(ref.dst), run_id, now(),
                 json.dumps(rows, separators=(",", ":"))],
            )  # fmt: skip
            return int(cur.lastrowid or 0)

    def expand_pending(self, tickets: Iterable[int] | None = None) -> int:
        """Turn journaled batches (``tickets``, or all) into pending message rows; how many rows."""
        if not self._write():
            return 0
        with self._tx():
            wanted = None if tickets is None else sorted(set(tickets))
            if wanted == []:
                return 0
            sql = "select id, job, source, src_folder, src_validity, dst_folder, run_id, updated, rows from inflight"
            if wanted is not None:
                sql += f" where id in ({','.join('?' * len(wanted))})"
            found = self.conn.execute(sql, wanted or []).fetchall()
            if not found:
                return 0
            n = self._expand_into(found)
            self.conn.executemany("delete from inflight where id = ?", [(row[0],) for row in found])
            return n

    def _expand_into(self, found: Sequence[tuple]) -> int:  # type: ignore[type-arg]
        """The journaled batches ``found`` as the pending rows ``mark_pending`` writes."""
        params = [
            (job, source, folder, validity, src_id, dst, None, size, mid, sha, flags, "pending", None, run_id, updated)
            for _id, job, source, folder, validity, dst, run_id, updated, rows in found
            for src_id, size, mid, sha, flags in json.loads(rows)
        ]
        self.conn.executemany(_UPSERT, params)
        return len(params)

    def _shadow_inflight(self) -> None:
        """Read-only, with batches in flight (a run going on, or killed): every read of
        ``messages`` goes to a private copy (a TEMP table shadows the file's) in which
        they are pending rows, as a writable open would make them. Nothing is written
        to the file."""
        has = self.conn.execute("select 1 from sqlite_master where type = 'table' and name = 'inflight'").fetchone()
        if not has:
            return
        found = self.conn.execute(
            "select id, job, source, src_folder, src_validity, dst_folder, run_id, updated, rows from inflight"
        ).fetchall()
        if not found:
            return
        self.conn.execute(MESSAGES_TABLE.format(schema="temp."))
        self.conn.execute("insert into temp.messages select * from main.messages")
        self._expand_into(found)

    def mark_pending(self, ref: FolderRef, msgs: Sequence[tuple[MessageMeta, str | None]], run_id: int) -> None:
        """Before sending: these messages may reach the destination. ``msgs`` pairs each
        message with its content hash (given for messages without Message-ID)."""
        self._upsert(ref, ((m, None, sha, "pending", None) for m, sha in msgs), run_id)

    def mark_copied(
        self,
        ref: FolderRef,
        msgs: Sequence[tuple[MessageMeta, str | None, str | None]],
        run_id: int,
        status: str = "copied",
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        """After the destination confirmed: ``msgs`` = (meta, destination id, content hash).
        ``status`` "matched": found already at the destination, not sent. ``reasons``:
        source id -> a note kept in ``reason`` of a confirmed row (a message the
        destination altered when it stored it: "altered by the destination: ...")."""
        notes = reasons or {}
        self._upsert(ref, ((m, d, sha, status, notes.get(m.id)) for m, d, sha in msgs), run_id)

    def confirm_sent(
        self,
        ref: FolderRef,
        msgs: Sequence[tuple[MessageMeta, str | None, str | None]],
        run_id: int,
        reasons: Mapping[str, str] | None = None,
        ticket: int = 0,
    ) -> None:
        """``mark_copied`` for messages checkpointed pending before they were sent.
        ``ticket``: the batch's journal entry (``journal_pending``), replaced by the
        messages' rows in one transaction. Without one, only what the confirmation
        changes is written to pending rows (destination id, status, reason, run, time);
        a message with no pending row is written whole."""
        if not self._write() or not msgs:
            return
        if ticket:
            with self._tx():
                self.mark_copied(ref, msgs, run_id, reasons=reasons)
                self.conn.execute("delete from inflight where id = ?", [ticket])
            return
        notes = reasons or {}
        fk, ts = folder_key(ref.path), now()
        with self._tx():
            before = self.conn.total_changes
            self.conn.executemany(
                "update messages set dst_id = coalesce(?, dst_id), content_hash = coalesce(?, content_hash),"
                " status = 'copied', reason = ?, run_id = ?, updated = ?"
                " where job = ? and source = ? and src_folder = ? and src_validity = ? and src_id = ?",
                [
                    (dst_id, sha, notes.get(m.id), run_id, ts, ref.job, ref.source, fk, ref.validity, m.id)
                    for m, dst_id, sha in msgs
                ],
            )
            if self.conn.total_changes - before < len(msgs):  # some were not pending: write them whole
                self.mark_copied(ref, msgs, run_id, reasons=reasons)

    def mark_skipped(
        self, ref: FolderRef, msgs: Sequence[tuple[MessageMeta, str]], run_id: int, status: str = "skipped"
    ) -> None:
        """Skipped (``reason`` says why) or, with status="failed", failed messages."""
        self._upsert(ref, ((m, None, None, status, r) for m, r in msgs), run_id)

    def mark_source_deleted(self, ref: FolderRef, ids: Sequence[str]) -> None:
        """These copied messages were deleted at the source (move / after_copy: delete)."""
        if not self._write() or not ids:
            return
        with self._tx():
            self.conn.executemany(
                "update messages set src_deleted = 1, updated = ? where job = ? and source = ? and src_folder = ?"
                " and src_validity is ? and src_id = ?",
                [(now(), ref.job, ref.source, folder_key(ref.path), ref.validity, i) for i in ids],
            )

    def done_rows(self, ref: FolderRef) -> dict[str, DoneRow]:
        """Copied or matched rows of the folder, by source id (mirror and move use them)."""
        with self._lock:
            return {
                src_id: DoneRow(src_id, dst_id, frozenset(json.loads(flags or "[]")), bool(deleted))
                for src_id, dst_id, flags, deleted in self.conn.execute(
                    "select src_id, dst_id, flags, src_deleted from messages where job = ? and source = ?"
                    " and src_folder = ? and src_validity is ? and status in ('copied', 'matched')",
                    [ref.job, ref.source, folder_key(ref.path), ref.validity],
                )
            }

    def set_flags(self, ref: FolderRef, changes: Sequence[tuple[str, frozenset[str]]]) -> None:
        """Record the flags now at the destination for these source ids (mirror)."""
        if not self._write() or not changes:
            return
        with self._tx():
            self.conn.executemany(
                "update messages set flags = ?, updated = ? where job = ? and source = ? and src_folder = ?"
                " and src_validity is ? and src_id = ?",
                [
                    (flags_text(f), now(), ref.job, ref.source, folder_key(ref.path), ref.validity, i)
                    for i, f in changes
                ],
            )

    def forget_messages(self, ref: FolderRef, ids: Sequence[str]) -> None:
        """Rows of messages gone from the source (and, in mirror mode, from the destination)."""
        if not self._write() or not ids:
            return
        with self._tx():
            self.conn.executemany(
                "delete from messages where job = ? and source = ? and src_folder = ? and src_validity is ?"
                " and src_id = ?",
                [(ref.job, ref.source, folder_key(ref.path), ref.validity, i) for i in ids],
            )

    def add_error(
        self, run_id: int, job: str, folder: FolderPath | None, src_id: str | None, kind: str, message: str
    ) -> None:
        if not self._write():
            return
        with self._tx():
            self.conn.execute(
                "insert into errors (run_id, job, folder, src_id, kind, message, at) values (?, ?, ?, ?, ?, ?, ?)",
                [run_id, job, folder_key(folder) if folder else None, src_id, kind, message, now()],
            )

    # ------------------------------------------------------------------ reading
    def job_summary(self) -> list[dict[str, object]]:
        """Per job: message counts by status, bytes copied, last update."""
        out: dict[str, dict[str, object]] = {}
        with self._lock:
            for job, status, n, size, updated in self.conn.execute(
                "select job, status, count(*), coalesce(sum(size), 0), max(updated)"
                " from messages group by job, status order by job"
            ):
                row = out.setdefault(job, {"job": job, "bytes": 0, "updated": ""})
                row[status] = n
                if status in DONE:
                    row["bytes"] = int(row["bytes"]) + size  # type: ignore[call-overload]
                row["updated"] = max(str(row["updated"]), updated or "")
            for job, n in self.conn.execute("select job, count(*) from folders group by job"):
                out.setdefault(job, {"job": job, "bytes": 0, "updated": ""})["folders"] = n
        return list(out.values())

    def last_runs(self, limit: int = 5) -> list[dict[str, object]]:
        with self._lock:
            cur = self.conn.execute(f"select * from runs order by id desc limit {int(limit)}")
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def failures(self, job: str | None = None) -> list[dict[str, object]]:
        with self._lock:
            sql = "select job, src_folder, src_id, message_id, reason from messages where status = 'failed'"
            args: list[object] = []
            if job:
                sql += " and job = ?"
                args.append(job)
            cur = self.conn.execute(sql, args)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


class RunLock:
    """An exclusive lock beside the state DB (``<db>.lock``), held for a whole run.

    fcntl locks die with their process, so a lock left by a killed run is never
    stale: the next run simply gets it. The file records the holder's pid for the
    error message."""

    def __init__(self, db_path: Path | str):
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        from migrator.errors import LockedError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise LockedError(
                f"{self.path}: another run of this plan is in progress (pid {holder}); wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
