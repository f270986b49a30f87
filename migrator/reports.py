"""Reports of dry runs, runs and verifications: JSON, CSV, HTML files and terminal tables.

One dictionary (``report_data`` for runs and dry runs, ``verify.verify_data`` for
verifications) feeds every format, so the files and the terminal never disagree.
Its layout is the versioned schema documented in docs/report-schema.md: additions
keep ``schema``; a renamed or removed key, or a changed meaning, increments it.

Files are written whole (a temporary file, then renamed) and created 0600: they name
mailboxes, folders and Message-IDs (never passwords or tokens).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from migrator import __version__
from migrator.errors import PlanError
from migrator.folders import join
from migrator.model import MailboxJob
from migrator.predict import SEVERITY_ORDER, Prediction, Problem, duration_text, problem_sort_key, problems
from migrator.stats import COUNTERS, MailboxStats, RunStats

ALTERED_EXAMPLES = 5  # altered messages named in the text of a folder's problem (all are in altered_messages)

SCHEMA_VERSION = 1
FORMATS = (".json", ".csv", ".html", ".htm")

Data = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def problem_dict(p: Problem) -> dict[str, object]:
    return {
        "mailbox": p.mailbox,
        "severity": p.severity,
        "kind": p.kind,
        "folder": p.folder,
        "count": p.count,
        "message": p.message,
    }


def trouble(problem_list: Sequence[dict[str, object]], status: str) -> str:
    """The worst severity of a mailbox: "error" (also for a failed mailbox), "warning",
    "info" or "ok"."""
    if status == "failed":
        return "error"
    worst = min((SEVERITY_ORDER[str(p["severity"])] for p in problem_list), default=None)
    return {0: "error", 1: "warning", 2: "info", None: "ok"}[worst]


def _rate(n: float, secs: float) -> float | None:
    return round(n / secs, 3) if secs > 0 and n else None


def _probe_dict(p: Any) -> dict[str, object] | None:
    if p is None:
        return None
    quota = None
    if p.quota is not None:
        q = p.quota
        quota = {
            "root": q.root,
            "storage_used": q.storage_used,
            "storage_limit": q.storage_limit,
            "messages_used": q.messages_used,
            "messages_limit": q.messages_limit,
        }
    return {
        "store": p.label,
        "server_capabilities": list(p.server_capabilities) if p.server_capabilities is not None else None,
        "max_message_bytes": p.max_message_bytes,
        "quota": quota,
        "error": p.error,
    }


def _mailbox(
    job: MailboxJob, mb: MailboxStats, probs: list[dict[str, object]], pred: Prediction | None, dry_run: bool
) -> Data:
    secs = round(mb.seconds, 3)
    probe = pred.probes.get(job.id) if pred else None
    copied, copied_bytes = mb.total("copied"), mb.total("bytes")
    # a stable order whatever order the folders were worked on: source by source, INBOX first
    stores = {a.describe(): i for i, a in enumerate(job.sources)}
    folders = sorted(
        mb.folders, key=lambda f: (stores.get(f.store, len(stores)), f.store, f.source != ("INBOX",), f.source)
    )
    return {
        "id": job.id,
        "status": mb.status,
        "trouble": trouble(probs, mb.status),
        "error": mb.error,
        "error_kind": mb.error_kind,
        "seconds": secs,
        "sources": [a.describe() for a in job.sources],
        "destination": job.destination.describe(),
        "source_messages": mb.total("listed"),
        "source_bytes": mb.total("listed_bytes"),
        "already_there": mb.total("done") + mb.total("matched"),
        "to_copy": mb.total("to_copy"),
        "bytes_to_copy": mb.total("bytes_to_copy"),
        "copied": copied,
        "bytes_copied": copied_bytes,
        "skipped": mb.total("skipped"),
        "failed": mb.total("failed"),
        "altered": mb.total("altered"),
        "no_message_id": mb.total("no_message_id"),
        "duplicate_message_ids": mb.total("duplicate_message_ids"),
        "msgs_per_second": None if dry_run else _rate(copied, secs),
        "bytes_per_second": None if dry_run else _rate(copied_bytes, secs),
        "estimated_seconds": pred.estimate.per_mailbox.get(job.id) if pred else None,
        "destination_info": _probe_dict(probe.destination) if probe else None,
        "sources_info": [_probe_dict(s) for s in probe.sources] if probe else None,
        "folders": [
            {
                "store": f.store,
                "source": join(f.source),
                "destination": join(f.dest),
                "renamed": f.source != f.dest,
                "notes": list(f.notes),
                "listed": f.listed,
                "source_bytes": f.listed_bytes,
                "to_copy": f.to_copy,
                "bytes_to_copy": f.bytes_to_copy,
                "copied": f.copied,
                "bytes": f.bytes,
                "already_there": f.done + f.matched,
                "skipped": f.skipped,
                "failed": f.failed,
                "altered": f.altered,
                "flags_changed": f.flags_changed,
                "deleted": f.deleted,
                "source_deleted": f.source_deleted,
                "no_message_id": f.no_message_id,
                "duplicate_message_ids": f.duplicate_message_ids,
                "duplicate_examples": [{"message_id": m, "count": n} for m, n in f.duplicate_examples],
            }
            for f in folders
        ],
        "excluded": [{"folder": join(p), "reason": r} for p, r in mb.excluded],
        "skipped_messages": [{"folder": join(p), "id": i, "reason": r} for p, i, r in mb.skipped_messages],
        "failed_messages": [{"folder": join(p), "id": i, "reason": r} for p, i, r in mb.failed_messages],
        "altered_messages": [
            {
                "folder": join(a.folder),
                "id": a.id,
                "destination_id": a.dst_id,
                "sent_bytes": a.sent,
                "stored_bytes": a.stored,
                "reason": a.reason,
            }
            for a in mb.altered_messages
        ],
        "problems": probs,
    }


def altered_problems(mb: MailboxStats) -> list[Problem]:
    """One warning per folder naming the messages the destination stored differently
    from what it was sent (kept there, counted as copied; a re-run changes nothing)."""
    by_folder: dict[str, list[str]] = {}
    for a in mb.altered_messages:
        by_folder.setdefault(join(a.folder), []).append(f"#{a.id} stored {a.stored:,} of {a.sent:,} bytes")
    out = []
    for folder, named in sorted(by_folder.items()):
        more = f" and {len(named) - ALTERED_EXAMPLES:,} more" if len(named) > ALTERED_EXAMPLES else ""
        out.append(
            Problem(
                mb.job,
                "warning",
                "altered-message",
                f"{len(named):,} message(s) altered by the destination when it stored them (the stored copy is kept; "
                f"every one in altered_messages): {', '.join(named[:ALTERED_EXAMPLES])}{more}",
                folder,
                len(named),
            )
        )
    return out


def report_data(
    stats: RunStats,
    jobs: Sequence[MailboxJob],
    *,
    dry_run: bool,
    plan_name: str,
    prediction: Prediction | None = None,
) -> Data:
    """The report of a run or dry run (schema: docs/report-schema.md)."""
    probs = prediction.problems if prediction else problems(stats, jobs, None, dry_run=dry_run)
    altered = [p for j in jobs for p in altered_problems(stats.mailboxes[j.id])]
    if altered:
        probs = sorted([*probs, *altered], key=problem_sort_key)
    by_mb: dict[str, list[dict[str, object]]] = {}
    for p in probs:
        by_mb.setdefault(p.mailbox, []).append(problem_dict(p))
    mailboxes = [_mailbox(j, stats.mailboxes[j.id], by_mb.get(j.id, []), prediction, dry_run) for j in jobs]
    totals: dict[str, object] = {c: sum(mb.total(c) for mb in (stats.mailboxes[j.id] for j in jobs)) for c in COUNTERS}
    totals.update(
        mailboxes=len(mailboxes),
        failed_mailboxes=sum(1 for m in mailboxes if m["status"] == "failed"),
        errors=sum(1 for p in probs if p.severity == "error"),
        warnings=sum(1 for p in probs if p.severity == "warning"),
    )
    est = prediction.estimate if prediction else None
    return {
        "schema": SCHEMA_VERSION,
        "kind": "dry-run" if dry_run else "run",
        "plan": plan_name,
        "dry_run": dry_run,
        "generated": now_iso(),
        "migrator": __version__,
        "seconds": round((stats.finished or time.monotonic()) - stats.started, 3),
        "totals": totals,
        "estimate": None
        if est is None
        else {
            "throughput": None
            if est.throughput is None
            else {
                "origin": est.throughput.origin,
                "msgs_per_second": est.throughput.msgs_per_second,
                "bytes_per_second": est.throughput.bytes_per_second,
            },
            "parallel": est.parallel,
            "total_seconds": est.total_seconds,
        },
        "mailboxes": mailboxes,
        "problems": [problem_dict(p) for p in probs],
    }


# --------------------------------------------------------------------------- CSV
RUN_COLUMNS = (
    "mailbox",
    "mailbox_status",
    "trouble",
    "store",
    "source_folder",
    "destination_folder",
    "renamed",
    "notes",
    "messages",
    "source_bytes",
    "already_there",
    "to_copy",
    "bytes_to_copy",
    "copied",
    "bytes_copied",
    "skipped",
    "failed",
    "altered",
    "no_message_id",
    "duplicate_message_ids",
    "mailbox_estimated_seconds",
    "mailbox_seconds",
    "error",
)
VERIFY_COLUMNS = (
    "mailbox",
    "mailbox_status",
    "trouble",
    "store",
    "source_folder",
    "destination_folder",
    "source_messages",
    "source_bytes",
    "destination_messages",
    "destination_bytes",
    "at_destination",
    "skipped",
    "unaccounted",
    "extra_at_destination",
    "flag_differences",
    "error",
)
PROBLEM_COLUMNS = ("mailbox", "severity", "kind", "folder", "count", "message")


def _folder_row(data: Data, mb: Data, f: Data | None) -> dict[str, object]:
    base: dict[str, object] = {
        "mailbox": mb["id"],
        "mailbox_status": mb["status"],
        "trouble": mb["trouble"],
        "error": mb.get("error") or "",
        "mailbox_seconds": mb.get("seconds"),
        "mailbox_estimated_seconds": None
        if mb.get("estimated_seconds") is None
        else round(float(mb["estimated_seconds"]), 1),
    }
    if f is None:
        return base
    if data["kind"] == "verify":
        base.update({k: f.get(k) for k in VERIFY_COLUMNS if k in f})
        base.update(store=f["store"], source_folder=f["source"], destination_folder=f["destination"])
        return base
    base.update(
        store=f["store"],
        source_folder=f["source"],
        destination_folder=f["destination"],
        renamed="yes" if f["renamed"] else "",
        notes="; ".join(f["notes"]),
        messages=f["listed"],
        source_bytes=f["source_bytes"],
        already_there=f["already_there"],
        to_copy=f["to_copy"],
        bytes_to_copy=f["bytes_to_copy"],
        copied=f["copied"],
        bytes_copied=f["bytes"],
        skipped=f["skipped"],
        failed=f["failed"],
        altered=f.get("altered", 0),
        no_message_id=f["no_message_id"],
        duplicate_message_ids=f["duplicate_message_ids"],
    )
    return base


def render_csv(data: Data) -> str:
    """One row per mailbox and folder (a mailbox without folders, e.g. one that could
    not log in, gets one row with its error). Spreadsheet-friendly: plain numbers."""
    cols = VERIFY_COLUMNS if data["kind"] == "verify" else RUN_COLUMNS
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    for mb in data["mailboxes"]:
        for f in mb["folders"] or [None]:
            w.writerow(_folder_row(data, mb, f))
    return out.getvalue()


def render_problems_csv(data: Data) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=PROBLEM_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    for p in data["problems"]:
        w.writerow(p)
    return out.getvalue()


def problems_csv_path(path: Path) -> Path:
    """Where the problems of ``report.csv`` go: ``report-problems.csv``."""
    return path.with_name(f"{path.stem}-problems{path.suffix}")


# --------------------------------------------------------------------------- files
def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 (also when replacing a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_report_paths(paths: Sequence[Path]) -> None:
    """PlanError for a report path whose format is unknown (checked before a run starts)."""
    for path in paths:
        if path.suffix.lower() not in FORMATS:
            raise PlanError(f"{path}: unknown report format {path.suffix or '(none)'}; use .json, .csv or .html")


def write_report_files(paths: Sequence[Path], data: Data) -> list[Path]:
    """Write ``data`` once per path, the format by extension. A CSV path also gets its
    problems CSV beside it. Returns every file written."""
    check_report_paths(paths)
    written: list[Path] = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".json":
            _write_private(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        elif suffix == ".csv":
            _write_private(path, render_csv(data))
            extra = problems_csv_path(path)
            _write_private(extra, render_problems_csv(data))
            written.append(path)
            path = extra
        else:
            from migrator.report_html import render_html

            _write_private(path, render_html(data))
        written.append(path)
    return written


def write_reports(
    paths: Sequence[Path],
    stats: RunStats,
    jobs: Sequence[MailboxJob],
    *,
    dry_run: bool,
    plan_name: str,
    prediction: Prediction | None = None,
) -> list[Path]:
    """Write one report per path (.json, .csv or .html). Files are created 0600."""
    data = report_data(stats, jobs, dry_run=dry_run, plan_name=plan_name, prediction=prediction)
    return write_report_files(paths, data)


# --------------------------------------------------------------------------- terminal
_SEVERITY_STYLE = {"error": "[red]error[/]", "warning": "[yellow]warning[/]", "info": "info"}
_TROUBLE_RANK = {"error": 0, "warning": 1, "info": 2, "ok": 3}


def _mbytes(n: object) -> str:
    return f"{int(n or 0) / 1e6:,.1f}"  # type: ignore[call-overload]


def plan_table(data: Data) -> Table:
    """The dry run's mailbox table, trouble first (errors, warnings, then the rest)."""
    table = Table(title="Dry run: nothing was written", title_justify="left")
    cols = (
        "Mailbox",
        "Status",
        "Folders",
        "Messages",
        "MB",
        "Already there",
        "To copy",
        "MB to copy",
        "Skipped",
        "Est. time",
        "Errors",
        "Warnings",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("Mailbox", "Status") else "right")
    for mb in sorted(data["mailboxes"], key=lambda m: (_TROUBLE_RANK[m["trouble"]], m["id"])):
        status = {"ok": "[green]ok", "failed": "[red]failed"}.get(mb["status"], mb["status"])
        n_err = sum(1 for p in mb["problems"] if p["severity"] == "error")
        n_warn = sum(1 for p in mb["problems"] if p["severity"] == "warning")
        table.add_row(
            mb["id"],
            status,
            str(len(mb["folders"])),
            f"{mb['source_messages']:,}",
            _mbytes(mb["source_bytes"]),
            f"{mb['already_there']:,}",
            f"{mb['to_copy']:,}",
            _mbytes(mb["bytes_to_copy"]),
            f"{mb['skipped']:,}",
            duration_text(mb["estimated_seconds"]) if mb["status"] != "failed" else "-",
            f"[red]{n_err}[/]" if n_err else "0",
            f"[yellow]{n_warn}[/]" if n_warn else "0",
        )
    return table


def problems_table(data: Data, *, with_info: bool = False) -> Table | None:
    """Errors and warnings (and info notes when asked), most serious first; None when
    there is nothing to show."""
    shown = [p for p in data["problems"] if with_info or p["severity"] != "info"]
    if not shown:
        return None
    table = Table(title="Problems", title_justify="left")
    for col in ("Severity", "Mailbox", "Folder", "Kind", "Count", "Problem"):
        table.add_column(col, justify="right" if col == "Count" else "left", overflow="fold")
    for p in shown:
        table.add_row(_SEVERITY_STYLE[p["severity"]], p["mailbox"], p["folder"], p["kind"], str(p["count"]),
                      p["message"], )  # fmt: skip
    return table


def estimate_line(data: Data) -> str:
    est = data.get("estimate")
    if not est:
        return ""
    if est["throughput"] is None:
        return "Estimated duration: unknown (no earlier run to measure; give --throughput, e.g. 20msg/s or 5MB/s)"
    tp = est["throughput"]
    rates = []
    if tp["msgs_per_second"]:
        rates.append(f"{tp['msgs_per_second']:,.1f} msg/s")
    if tp["bytes_per_second"]:
        rates.append(f"{tp['bytes_per_second'] / 1e6:,.2f} MB/s")
    return (
        f"Estimated duration: {duration_text(est['total_seconds'])} with {est['parallel']} mailbox(es) at a time, "
        f"at {' and '.join(rates)} per mailbox, {tp['origin']}"
    )


def info_line(data: Data) -> str:
    n = sum(1 for p in data["problems"] if p["severity"] == "info")
    return f"+ {n} note(s) (folder mappings, exclusions, filters): see the report file (--report)" if n else ""


def print_dry_run(console: Any, data: Data, *, max_info: int = 40) -> None:
    """The dry run on the terminal: mailboxes (trouble first), problems, the estimate."""
    console.print(plan_table(data))
    n_info = sum(1 for p in data["problems"] if p["severity"] == "info")
    with_info = n_info <= max_info
    table = problems_table(data, with_info=with_info)
    if table is not None:
        console.print(table)
    if not with_info:
        console.print(info_line(data), markup=False)
    line = estimate_line(data)
    if line:
        console.print(line, markup=False)
