"""Run and dry-run reports in files: JSON (versioned schema), CSV, HTML."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from migrator.errors import PlanError
from migrator.folders import join
from migrator.model import MailboxJob
from migrator.stats import RunStats

SCHEMA_VERSION = 1


def report_data(stats: RunStats, jobs: Sequence[MailboxJob], *, dry_run: bool, plan_name: str) -> dict[str, object]:
    mailboxes = []
    for job in jobs:
        mb = stats.mailboxes[job.id]
        mailboxes.append(
            {
                "id": job.id,
                "status": mb.status,
                "error": mb.error,
                "error_kind": mb.error_kind,
                "seconds": round(mb.seconds, 3),
                "folders": [
                    {
                        "source": join(f.source),
                        "destination": join(f.dest),
                        "notes": list(f.notes),
                        "listed": f.listed,
                        "to_copy": f.to_copy,
                        "copied": f.copied,
                        "already_there": f.done + f.matched,
                        "skipped": f.skipped,
                        "failed": f.failed,
                        "bytes": f.bytes,
                        "bytes_to_copy": f.bytes_to_copy,
                    }
                    for f in mb.folders
                ],
                "skipped": [{"folder": join(p), "id": i, "reason": r} for p, i, r in mb.skipped_messages],
                "failed": [{"folder": join(p), "id": i, "reason": r} for p, i, r in mb.failed_messages],
            }
        )
    return {"schema": SCHEMA_VERSION, "plan": plan_name, "dry_run": dry_run, "totals": stats.totals(),
            "mailboxes": mailboxes}  # fmt: skip


def write_reports(
    paths: Sequence[Path], stats: RunStats, jobs: Sequence[MailboxJob], *, dry_run: bool, plan_name: str
) -> list[Path]:
    """Write one report per path (format by extension). Files are created 0600."""
    data = report_data(stats, jobs, dry_run=dry_run, plan_name=plan_name)
    written = []
    for path in paths:
        if path.suffix.lower() != ".json":
            raise PlanError(f"{path}: report format {path.suffix or '(none)'} is not supported yet; use .json")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
        written.append(path)
    return written
