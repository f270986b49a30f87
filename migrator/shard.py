"""Sharding a plan across processes: ``migrator run PLAN --shard I/N``.

Shard I of N (1-based) runs only the mailboxes the *assignment* gives it, against
its own state DB ``<state dir>/<plan>.shard-I.db`` (beside the plan's state file,
or beside ``--state FILE``). The assignment is persisted beside the state as
``<plan>.shards.json``::

    {"version": 1, "plan": "acme", "shards": 4, "epoch": "...", "weights_from": "report",
     "created": "...", "updated": "...",
     "mailboxes": {"alice": {"shard": 1, "bytes": 123456}, ...}}

Rules (all applied under an exclusive lock on ``<plan>.shards.json.lock``, so N
shards starting at the same moment agree: the first one writes the file, the
others read it):

* **First sharding** (no file): mailboxes are weighted by bytes and spread
  largest-first onto the lightest shard (ties: the lower shard number; equal
  weights: by mailbox id). Weights come from ``--weights REPORT.json`` (a dry-run
  or run report: each folder's source bytes, or ``bytes_to_copy`` + ``bytes`` +
  already-there bytes where the report has them), else from the state DBs that
  exist (the sum of the message sizes each knows), else every mailbox weighs the
  same. A mailbox with no known weight gets the mean of the known ones. A mailbox
  that already has rows in shard k's DB (the file was lost) stays in shard k.
* **Stable**: a mailbox in the file never moves. A mailbox added to the plan goes
  to the lightest shard (by the current weights of the plan's mailboxes) and is
  added to the file; nothing else changes. Mailboxes removed from the plan keep
  their entry (if they come back, they come back to their shard and its state).
* **--rebalance**: the assignment is computed again from scratch with the
  current weights. Several shards started with ``--rebalance`` at the same time
  must share ``MIGRATOR_SHARD_EPOCH`` (the Kubernetes Job sets it to the Job's
  uid): the first one rebalances and records the epoch, the others reuse that
  assignment. Without an epoch every ``--rebalance`` recomputes, so rebalance
  with one process before starting the others. A different N needs --rebalance.
* **Moving state**: when a shard is given a mailbox that has no rows in its DB
  but has rows in another state DB of the plan (another shard's after a
  rebalance, or the unsharded ``<plan>.db`` of earlier runs), the rows of the most
  recently updated copy are imported first, so its checkpoints follow it. (Even
  without them nothing would be copied twice: a first visit matches against the
  destination.)
* ``--dry-run`` writes nothing: neither the file nor any DB.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from migrator.errors import PlanError
from migrator.model import MailboxJob, Plan

ASSIGNMENT_VERSION = 1
EPOCH_ENV = "MIGRATOR_SHARD_EPOCH"
LOCK_TIMEOUT = 120.0  # seconds to wait for another shard holding the assignment lock
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class ShardSpec:
    index: int  # 1-based
    count: int


def parse_spec(spec: str) -> ShardSpec:
    """``"I/N"`` with 1 <= I <= N; PlanError otherwise."""
    m = _SPEC.match(spec or "")
    if not m:
        raise PlanError(f"--shard {spec}: expected I/N, e.g. --shard 2/4 (shard 2 of 4, counted from 1)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= index <= count:
        raise PlanError(f"--shard {spec}: I must be between 1 and N (N >= 1)")
    return ShardSpec(index, count)


# ---------------------------------------------------------------- where things live
def shard_db_path(state_path: Path, index: int) -> Path:
    """``state/<plan>.db`` -> ``state/<plan>.shard-I.db``."""
    return state_path.with_name(f"{state_path.stem}.shard-{index}{state_path.suffix or '.db'}")


def assignment_path(state_path: Path) -> Path:
    """``state/<plan>.db`` -> ``state/<plan>.shards.json``."""
    return state_path.with_name(f"{state_path.stem}.shards.json")


def shard_db_paths(state_path: Path) -> dict[int, Path]:
    """Every existing shard DB of this state path, by shard number (any N)."""
    pattern = re.compile(re.escape(state_path.stem) + r"\.shard-(\d+)" + re.escape(state_path.suffix or ".db") + "$")
    found: dict[int, Path] = {}
    if state_path.parent.is_dir():
        for p in state_path.parent.iterdir():
            m = pattern.match(p.name)
            if m:
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


# ---------------------------------------------------------------- weights
def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def _query(path: Path, table: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on the state DB at ``path`` if it has ``table``; [] when unreadable."""
    try:
        conn = _connect_ro(path)
    except sqlite3.Error:
        return []
    try:
        if conn.execute("select 1 from sqlite_master where type = 'table' and name = ?", [table]).fetchone() is None:
            return []
        return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def db_presence(path: Path) -> dict[str, str]:
    """job -> last update, for every mailbox with a folder row in the state DB at ``path``
    (the folders table is small: one row per folder, touched on every visit)."""
    rows = _query(path, "folders", "select job, coalesce(max(updated), '') from folders group by job")
    return {str(job): str(updated) for job, updated in rows}


def db_bytes(path: Path) -> dict[str, int]:
    """job -> sum of the sizes of its message rows (any status) in the state DB at ``path``."""
    rows = _query(path, "messages", "select job, coalesce(sum(size), 0) from messages group by job")
    return {str(job): int(size) for job, size in rows}  # type: ignore[call-overload]


def weights_from_states(paths: Iterable[Path]) -> dict[str, int]:
    """Bytes per mailbox known to these state DBs (the largest figure where several know it)."""
    weights: dict[str, int] = {}
    for path in paths:
        for job, size in db_bytes(path).items():
            if size > 0:
                weights[job] = max(weights.get(job, 0), size)
    return weights


_SOURCE_BYTES_KEYS = ("source_bytes", "bytes_source", "bytes_in_source", "size", "bytes_total")


def _folder_bytes(folder: Mapping[str, object]) -> int:
    for key in _SOURCE_BYTES_KEYS:
        value = folder.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    total = 0
    for key in ("bytes_to_copy", "bytes", "already_there_bytes", "bytes_already_there"):
        value = folder.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total += value
    return total


def weights_from_report(path: Path) -> dict[str, int]:
    """Bytes per mailbox from a JSON report (``migrator run --dry-run --report FILE.json``).

    Per folder, the source's bytes where the report states them, else bytes to copy +
    bytes copied (+ bytes already there where stated). PlanError if unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"--weights {path}: cannot read a JSON report: {exc}") from None
    mailboxes = data.get("mailboxes") if isinstance(data, dict) else None
    if not isinstance(mailboxes, list):
        raise PlanError(f"--weights {path}: not a migrator JSON report (no 'mailboxes' list)")
    weights: dict[str, int] = {}
    for mb in mailboxes:
        if not isinstance(mb, dict) or not isinstance(mb.get("id"), str):
            continue
        folders = mb.get("folders") or []
        weights[mb["id"]] = sum(_folder_bytes(f) for f in folders if isinstance(f, dict))
    return weights


def complete_weights(job_ids: Sequence[str], known: Mapping[str, int]) -> dict[str, int]:
    """A weight for every job: the known one, else the mean of the known ones (1 if none)."""
    values = [known[j] for j in job_ids if known.get(j, 0) > 0]
    default = max(1, round(sum(values) / len(values))) if values else 1
    return {j: known[j] if known.get(j, 0) > 0 else default for j in job_ids}


# ---------------------------------------------------------------- the assignment
def greedy(weights: Mapping[str, int], count: int, fixed: Mapping[str, int] | None = None) -> dict[str, int]:
    """Largest-first greedy onto the lightest shard (1-based), keeping ``fixed`` as is.

    Loads start from the fixed mailboxes that are in ``weights``. Ties: heavier first,
    then by id; the lightest shard, then the lowest number. Pure and deterministic."""
    fixed = dict(fixed or {})
    loads = [0] * (count + 1)
    for job, shard in fixed.items():
        if job in weights and 1 <= shard <= count:
            loads[shard] += weights[job]
    out = dict(fixed)
    for job in sorted((j for j in weights if j not in fixed), key=lambda j: (-weights[j], j)):
        target = min(range(1, count + 1), key=lambda k: (loads[k], k))
        out[job] = target
        loads[target] += weights[job]
    return out


def shard_loads(assignment: Mapping[str, int], weights: Mapping[str, int], count: int) -> list[int]:
    """Bytes per shard (index 0 = shard 1) of the mailboxes in ``weights``."""
    loads = [0] * count
    for job, w in weights.items():
        loads[assignment[job] - 1] += w
    return loads


@dataclass(frozen=True, slots=True)
class Assignment:
    plan: str
    count: int
    shards: dict[str, int]  # mailbox id -> shard (1-based)
    weights: dict[str, int]  # bytes per mailbox as known when placed
    epoch: str = ""
    weights_from: str = "equal"
    created: str = ""
    updated: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "version": ASSIGNMENT_VERSION,
            "plan": self.plan,
            "shards": self.count,
            "epoch": self.epoch,
            "weights_from": self.weights_from,
            "created": self.created,
            "updated": self.updated,
            "mailboxes": {
                job: {"shard": shard, "bytes": self.weights.get(job, 0)} for job, shard in sorted(self.shards.items())
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: Path) -> Assignment:
        try:
            if int(data.get("version", 0)) > ASSIGNMENT_VERSION:  # type: ignore[call-overload]
                raise PlanError(f"{where}: written by a newer migrator (version {data.get('version')})")
            boxes = data["mailboxes"]
            assert isinstance(boxes, dict)
            count = int(data["shards"])  # type: ignore[call-overload]
            shards = {str(k): int(v["shard"]) for k, v in boxes.items()}
            weights = {str(k): int(v.get("bytes", 0)) for k, v in boxes.items()}
        except (KeyError, TypeError, ValueError, AssertionError, AttributeError):
            raise PlanError(f"{where}: not a shard assignment file (remove it or run with --rebalance)") from None
        if any(not 1 <= s <= count for s in shards.values()):
            raise PlanError(f"{where}: a mailbox is assigned outside 1..{count} (remove it or run with --rebalance)")
        return cls(
            plan=str(data.get("plan", "")),
            count=count,
            shards=shards,
            weights=weights,
            epoch=str(data.get("epoch", "")),
            weights_from=str(data.get("weights_from", "")),
            created=str(data.get("created", "")),
            updated=str(data.get("updated", "")),
        )


def read_assignment(path: Path) -> Assignment | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: unreadable shard assignment ({exc}); remove it or run with --rebalance") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: not a shard assignment file (remove it or run with --rebalance)")
    return Assignment.from_json(data, path)


def write_assignment(path: Path, assignment: Assignment) -> None:
    """Atomically (temporary file + rename), created 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(assignment.to_json(), fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def assignment_lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """An exclusive POSIX lock on ``path`` (fcntl.lockf: also works on NFS), waited for
    at most ``timeout`` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise PlanError(
                        f"{path}: another shard holds the assignment lock for over {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sticky_from_dbs(state_path: Path, count: int, job_ids: Iterable[str]) -> dict[str, int]:
    """Mailboxes already present in shard k's DB (k <= count) stay in k; where several
    shard DBs know a mailbox, the most recently updated wins (then the lower k)."""
    wanted = set(job_ids)
    best: dict[str, tuple[str, int]] = {}
    for k, path in shard_db_paths(state_path).items():
        if k > count:
            continue
        for job, updated in db_presence(path).items():
            if job in wanted and (job not in best or updated > best[job][0]):
                best[job] = (updated, k)
    return {job: k for job, (_u, k) in best.items()}


@dataclass(frozen=True, slots=True)
class Inputs:
    """What an assignment is computed from."""

    plan: Plan
    state_path: Path
    count: int
    rebalance: bool = False
    weights_report: Path | None = None
    epoch: str = ""


def _weights(inputs: Inputs, job_ids: Sequence[str]) -> tuple[dict[str, int], str]:
    if inputs.weights_report is not None:
        known, source = weights_from_report(inputs.weights_report), "report"
    else:
        dbs = [*shard_db_paths(inputs.state_path).values()]
        if inputs.state_path.exists():
            dbs.append(inputs.state_path)
        known, source = weights_from_states(dbs), "state"
    if not any(known.get(j, 0) > 0 for j in job_ids):
        source = "equal"
    return complete_weights(job_ids, known), source


def compute_assignment(inputs: Inputs, current: Assignment | None) -> tuple[Assignment, bool]:
    """The assignment to use and whether it differs from ``current`` (must be written).

    Pure apart from reading the weights sources (report, state DBs)."""
    job_ids = [j.id for j in inputs.plan.jobs]
    n = inputs.count
    if current is not None and current.count != n and not inputs.rebalance:
        raise PlanError(
            f"{assignment_path(inputs.state_path)}: the mailboxes are assigned to {current.count} shard(s), "
            f"not {n}; run with --rebalance to spread them over {n}"
        )
    reuse_epoch = (
        inputs.rebalance
        and current is not None
        and current.count == n
        and bool(inputs.epoch)
        and current.epoch == inputs.epoch
    )
    if inputs.rebalance and not reuse_epoch:
        weights, source = _weights(inputs, job_ids)
        shards = greedy(weights, n)
        stamp = _now()
        return (
            Assignment(inputs.plan.name, n, shards, weights, inputs.epoch or stamp, source, stamp, stamp),
            True,
        )
    assert current is not None or not inputs.rebalance
    if current is None:
        weights, source = _weights(inputs, job_ids)
        sticky = _sticky_from_dbs(inputs.state_path, n, job_ids)
        shards = greedy(weights, n, sticky)
        stamp = _now()
        return Assignment(inputs.plan.name, n, shards, weights, inputs.epoch, source, stamp, stamp), True
    new = [j for j in job_ids if j not in current.shards]
    if not new:
        return current, False
    weights, _source = _weights(inputs, job_ids)
    fixed = {j: s for j, s in current.shards.items()}
    shards = greedy({j: weights[j] for j in job_ids}, n, fixed)
    kept_weights = {**current.weights, **{j: weights[j] for j in new}}
    return (
        Assignment(
            current.plan or inputs.plan.name,
            n,
            shards,
            kept_weights,
            current.epoch,
            current.weights_from,
            current.created,
            _now(),
        ),
        True,
    )


def assign(inputs: Inputs, *, write: bool = True) -> Assignment:
    """Read, complete and (``write``) persist the plan's assignment, under the lock."""
    path = assignment_path(inputs.state_path)
    if not write:
        assignment, _changed = compute_assignment(inputs, read_assignment(path))
        return assignment
    with assignment_lock(path.with_name(path.name + ".lock")):
        assignment, changed = compute_assignment(inputs, read_assignment(path))
        if changed:
            write_assignment(path, assignment)
    return assignment


# ---------------------------------------------------------------- moving state rows
_COPIED_TABLES = ("folders", "messages")


def import_rows(dest_db: Path, source_db: Path, jobs: Sequence[str]) -> int:
    """Copy the ``folders`` and ``messages`` rows of ``jobs`` from ``source_db`` into
    ``dest_db`` (opened through State, so it gets its schema); existing rows win.
    Returns the number of message rows imported."""
    from migrator.state import State

    if not jobs:
        return 0
    src = _connect_ro(source_db)
    state = State.open(dest_db)
    imported = 0
    try:
        dest_conn = state.conn
        marks = ", ".join("?" for _ in jobs)
        dest_conn.execute("begin immediate")
        try:
            for table in _COPIED_TABLES:
                dest_cols = [r[1] for r in dest_conn.execute(f"pragma table_info({table})")]
                src_cols = {r[1] for r in src.execute(f"pragma table_info({table})")}
                cols = [c for c in dest_cols if c in src_cols]
                if not cols:
                    continue
                col_list = ", ".join(cols)
                rows = src.execute(f"select {col_list} from {table} where job in ({marks})", list(jobs)).fetchall()
                cur = dest_conn.executemany(
                    f"insert or ignore into {table} ({col_list}) values ({', '.join('?' for _ in cols)})", rows
                )
                if table == "messages":
                    imported = max(cur.rowcount, 0)
            dest_conn.execute("commit")
        except BaseException:
            dest_conn.execute("rollback")
            raise
    finally:
        state.close()
        src.close()
    return imported


def adopt_state(my_db: Path, state_path: Path, jobs: Sequence[str]) -> dict[str, Path]:
    """For each of ``jobs`` with no rows in ``my_db``: import its rows from the most
    recently updated other state DB of the plan that has them. Returns job -> origin."""
    mine = db_presence(my_db) if my_db.exists() else {}
    missing = [j for j in jobs if j not in mine]
    if not missing:
        return {}
    others = [p for p in shard_db_paths(state_path).values() if p != my_db]
    if state_path.exists():
        others.append(state_path)
    best: dict[str, tuple[str, Path]] = {}
    for path in others:
        for job, updated in db_presence(path).items():
            if job in missing and (job not in best or updated > best[job][0]):
                best[job] = (updated, path)
    by_origin: dict[Path, list[str]] = {}
    for job, (_u, path) in best.items():
        by_origin.setdefault(path, []).append(job)
    for path, group in by_origin.items():
        import_rows(my_db, path, sorted(group))
    return {job: path for job, (_u, path) in best.items()}


# ---------------------------------------------------------------- the entry point
def select_shard(
    plan: Plan,
    jobs: list[MailboxJob],
    spec: str,
    *,
    rebalance: bool = False,
    state_override: Path | None = None,
    weights_report: Path | None = None,
    dry_run: bool = False,
) -> tuple[list[MailboxJob], Path]:
    """The jobs of shard I of N (among ``jobs``, in their order) and that shard's state DB.

    The assignment covers the whole plan (``jobs`` may be a ``--mailbox`` subset).
    PlanError for a bad spec, an assignment for another N without ``rebalance``, or
    an unreadable weights report / assignment file. ``dry_run``: nothing is written."""
    shard = parse_spec(spec)
    state_path = Path(state_override) if state_override is not None else Path(plan.state_path)
    inputs = Inputs(
        plan=plan,
        state_path=state_path,
        count=shard.count,
        rebalance=rebalance,
        weights_report=weights_report,
        epoch=os.environ.get(EPOCH_ENV, "").strip(),
    )
    assignment = assign(inputs, write=not dry_run)
    my_db = shard_db_path(state_path, shard.index)
    selected = [j for j in jobs if assignment.shards.get(j.id) == shard.index]
    if not dry_run and selected:
        adopt_state(my_db, state_path, [j.id for j in selected])
    return selected, my_db
