"""``migrator report merge``: one report out of the reports or state DBs of shards.

Inputs are JSON reports (``migrator run ... --shard I/N --report shard-I.json``) and/or
state DBs (``state/<plan>.shard-I.db``). The output has the schema of a single run's
report (reports.report_data), so anything that reads one reads the other:

* mailboxes are concatenated, in the plan's order when the plan is given (else in the
  order of the inputs); a mailbox found in two JSON reports is an error; a mailbox
  found in two state DBs (a rebalance moved it) is taken from the most recently
  updated one;
* ``totals`` are summed; ``problems`` are concatenated and ordered as a single run
  orders them (severity, mailbox, folder, kind); ``seconds`` is the longest shard's
  (shards run side by side); ``generated`` is now; other top-level fields must agree
  (``schema``, ``kind``, ``plan``, ``dry_run``).

A state DB becomes a report of everything that DB knows, cumulated over all its runs
(not the last run alone): per folder, ``listed`` = messages known at the source,
``copied`` / ``bytes`` = messages the checkpoints say were copied, ``already_there`` =
matched at the destination, ``to_copy`` = copied + failed + pending, skipped and failed
messages with their reasons; a mailbox whose latest run failed as a whole has status
"failed" with that error. Building it needs the plan (for the mailboxes' stores).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrator.errors import PlanError
from migrator.model import MailboxJob, Plan
from migrator.stats import RunStats

Data = dict[str, Any]
_SEVERITY = {"error": 0, "warning": 1, "info": 2}
AGREE = ("schema", "kind", "plan", "dry_run")
TIMING = ("seconds",)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_state_db(path: Path) -> bool:
    """A SQLite file (by its header), whatever its name."""
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def load_report(path: Path) -> Data:
    """A JSON report; PlanError if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: cannot read a JSON report: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("mailboxes"), list):
        raise PlanError(f"{path}: not a migrator run report (no 'mailboxes' list)")
    if data.get("kind") == "verify":
        raise PlanError(f"{path}: a verification report; merge run or dry-run reports")
    return data


# ---------------------------------------------------------------- state DB -> report
@dataclass(slots=True)
class _Folder:
    job: str
    source: str
    path: tuple[str, ...]
    validity: int | None
    dest: tuple[str, ...]


def _rows(conn: sqlite3.Connection, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(sql, list(args)).fetchall()


def state_jobs(path: Path) -> dict[str, str]:
    """job -> last update, for every mailbox the state DB at ``path`` knows (folder rows
    or errors)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in _rows(conn, "select name from sqlite_master where type = 'table'")}
        out: dict[str, str] = {}
        if "folders" in tables:
            for job, upd in _rows(conn, "select job, coalesce(max(updated), '') from folders group by job"):
                out[job] = str(upd)
        if "errors" in tables:
            for job, at in _rows(conn, "select job, coalesce(max(at), '') from errors group by job"):
                out[job] = max(out.get(job, ""), str(at))
        return out
    finally:
        conn.close()


def _fill(stats: RunStats, conn: sqlite3.Connection, job: str) -> None:
    folders = [
        _Folder(job, src, tuple(json.loads(sf)), val, tuple(json.loads(df)))
        for src, sf, val, df in _rows(
            conn,
            "select source, src_folder, src_validity, dst_folder from folders where job = ? order by rowid",
            [job],
        )
    ]
    for f in folders:
        fs = stats.folder(job, f.source, f.path, f.dest)
        counts: dict[str, int] = dict.fromkeys(
            ("listed", "listed_bytes", "copied", "bytes", "matched", "skipped", "failed", "to_copy", "bytes_to_copy"),
            0,
        )
        counts["source_deleted"] = 0
        rows = _rows(
            conn,
            "select src_id, status, coalesce(size, 0), reason, src_deleted from messages"
            " where job = ? and source = ? and src_folder = ? and src_validity is ? order by src_id",
            [job, f.source, json.dumps(list(f.path), ensure_ascii=False), f.validity],
        )
        for src_id, status, size, reason, deleted in rows:
            if deleted:
                counts["source_deleted"] += 1
            else:
                counts["listed"] += 1
                counts["listed_bytes"] += size
            if status == "copied":
                counts["copied"] += 1
                counts["bytes"] += size
            elif status == "matched":
                counts["matched"] += 1
            elif status == "skipped":
                counts["skipped"] += 1
                stats.skipped_message(job, f.path, str(src_id), reason or "")
            elif status == "failed":
                counts["failed"] += 1
                stats.failed_message(job, f.path, str(src_id), reason or "")
            if status in ("copied", "failed", "pending"):
                counts["to_copy"] += 1
                counts["bytes_to_copy"] += size
        stats.set(job, fs, **{k: v for k, v in counts.items() if hasattr(fs, k)})
    # The latest run that touched the mailbox: did it fail as a whole?
    last = _rows(
        conn,
        "select max(r) from (select max(run_id) as r from messages where job = ?"
        " union all select max(run_id) from errors where job = ?)",
        [job, job],
    )
    run_id = last[0][0] if last else None
    failure = (
        _rows(
            conn,
            "select kind, message from errors where job = ? and run_id = ? and folder is null and src_id is null"
            " order by id desc limit 1",
            [job, run_id],
        )
        if run_id is not None
        else []
    )
    if failure:
        stats.finish(job, "failed", str(failure[0][1]), str(failure[0][0]))
    else:
        stats.finish(job, "ok")


def report_from_state(path: Path, plan: Plan, only: Iterable[str] | None = None) -> Data:
    """The report (reports.report_data schema) of what the state DB at ``path`` knows
    about the plan's mailboxes (or ``only`` those)."""
    from migrator.reports import report_data

    if not is_state_db(path):
        raise PlanError(f"{path}: not a state DB (SQLite)")
    known = state_jobs(path)
    wanted = set(only) if only is not None else set(known)
    jobs: list[MailboxJob] = [j for j in plan.jobs if j.id in known and j.id in wanted]
    stats = RunStats([j.id for j in jobs])
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        for job in jobs:
            _fill(stats, conn, job.id)
    finally:
        conn.close()
    stats.finished = stats.started
    return report_data(stats, jobs, dry_run=False, plan_name=plan.name)


# ---------------------------------------------------------------- merging
def _problem_key(p: Mapping[str, Any]) -> tuple[int, str, str, str]:
    return (_SEVERITY.get(str(p.get("severity")), 9), str(p.get("mailbox", "")), str(p.get("folder") or ""),
            str(p.get("kind", "")))  # fmt: skip


def _sum_numbers(dicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                out.setdefault(k, v)
            else:
                out[k] = out.get(k, 0) + v
    return out


def _merge_estimates(estimates: Sequence[Any]) -> Any:
    present = [e for e in estimates if isinstance(e, dict)]
    if not present:
        return None
    throughputs = {json.dumps(e.get("throughput"), sort_keys=True) for e in present}
    totals = [e.get("total_seconds") for e in present if isinstance(e.get("total_seconds"), int | float)]
    return {
        **present[0],
        "throughput": present[0].get("throughput") if len(throughputs) == 1 else None,
        "parallel": sum(int(e.get("parallel") or 0) for e in present),
        "total_seconds": max(totals) if totals else None,  # shards run side by side
    }


def merge_reports(reports: Sequence[tuple[str, Data]], order: Sequence[str] | None = None) -> Data:
    """One report out of ``(label, report)`` pairs (labels name inputs in errors).

    ``order``: mailbox ids in the wanted order (the plan's); others follow in input
    order. PlanError when the inputs disagree on schema/kind/plan/dry_run or a
    mailbox appears twice."""
    if not reports:
        raise PlanError("report merge: no inputs")
    first_label, first = reports[0]
    for label, data in reports[1:]:
        for key in AGREE:
            if data.get(key) != first.get(key):
                raise PlanError(
                    f"report merge: {label} has {key} {data.get(key)!r} but {first_label} has {first.get(key)!r}"
                )
    seen: dict[str, str] = {}
    mailboxes: list[Data] = []
    for label, data in reports:
        for mb in data["mailboxes"]:
            if mb["id"] in seen:
                raise PlanError(f"report merge: mailbox {mb['id']} is in both {seen[mb['id']]} and {label}")
            seen[mb["id"]] = label
            mailboxes.append(mb)
    if order is not None:
        rank = {job: i for i, job in enumerate(order)}
        mailboxes.sort(key=lambda mb: rank.get(mb["id"], len(rank)))  # stable: the rest keep input order
    merged: Data = {}
    for key, value in first.items():
        values = [d.get(key) for _l, d in reports]
        if key == "mailboxes":
            merged[key] = mailboxes
        elif key == "totals" and all(isinstance(v, dict) for v in values):
            merged[key] = _sum_numbers(values)  # type: ignore[arg-type]
        elif key == "problems" and all(isinstance(v, list) for v in values):
            merged[key] = sorted((p for v in values for p in v), key=_problem_key)  # type: ignore[union-attr]
        elif key == "generated":
            merged[key] = _now()
        elif key in TIMING and all(isinstance(v, int | float) for v in values):
            merged[key] = max(values)  # type: ignore[type-var]
        elif key == "estimate":
            merged[key] = _merge_estimates(values)
        else:
            merged[key] = value
    return merged


def merge_inputs(paths: Sequence[Path], plan: Plan | None) -> tuple[Data, list[str]]:
    """Merge JSON reports and state DBs; returns (report, plan mailboxes missing from
    every input). State DBs need the plan."""
    reports: list[tuple[str, Data]] = []
    dbs: list[Path] = []
    for path in paths:
        if not Path(path).exists():
            raise PlanError(f"{path}: no such file")
        if is_state_db(path):
            dbs.append(Path(path))
        else:
            reports.append((str(path), load_report(path)))
    if dbs:
        if plan is None:
            raise PlanError("report merge: state DB inputs need --plan PLAN (for the mailboxes' stores)")
        owner: dict[str, tuple[str, int]] = {}  # job -> (last update, index of the DB)
        for i, db in enumerate(dbs):
            for job, updated in state_jobs(db).items():
                if job not in owner or updated > owner[job][0]:
                    owner[job] = (updated, i)
        for i, db in enumerate(dbs):
            mine = [job for job, (_u, k) in owner.items() if k == i]
            reports.append((str(db), report_from_state(db, plan, mine)))
    merged = merge_reports(reports, [j.id for j in plan.jobs] if plan else None)
    missing = []
    if plan is not None:
        present = {mb["id"] for mb in merged["mailboxes"]}
        missing = [j.id for j in plan.jobs if j.id not in present]
    return merged, missing


def write_merged(path: Path, data: Data) -> None:
    """Write the merged report: JSON here (0600, atomically); .csv/.html through
    reports.write_report_files."""
    if path.suffix.lower() != ".json":
        from migrator import reports

        writer = getattr(reports, "write_report_files", None)
        if writer is None:
            raise PlanError(f"{path}: merged reports are written as .json")
        writer([path], data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
