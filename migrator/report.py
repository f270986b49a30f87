"""Rendering: rich progress bars per mailbox, the final table, the exit code.

Exit codes (the one documented place; README repeats them):

====  ==========================================================================
0     every selected message is at the destination (copied now or before)
1     some messages or folders failed, or a mailbox stopped (e.g. quota); re-run
2     plan, CSV or command-line error; nothing was touched
3     connection, TLS or authentication error (at least one mailbox could not run)
4     another run of the same plan holds the lock; nothing was done
130   interrupted (Ctrl-C / SIGTERM); everything confirmed so far is checkpointed,
      run again to resume
====  ==========================================================================
"""

from __future__ import annotations

from enum import IntEnum
from types import TracebackType
from typing import TYPE_CHECKING

from migrator.folders import join
from migrator.stats import MailboxStats, RunStats

if TYPE_CHECKING:  # rich is imported where it is used: a quiet run (cron) never loads it
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    CONFIG = 2
    CONNECTION = 3
    LOCKED = 4
    INTERRUPTED = 130


CONNECTION_KINDS = {"auth", "tls", "connect"}


def exit_code(stats: RunStats) -> ExitCode:
    if stats.interrupted or any(mb.status == "interrupted" for mb in stats.mailboxes.values()):
        return ExitCode.INTERRUPTED
    kinds = {mb.error_kind for mb in stats.mailboxes.values() if mb.status == "failed"}
    if "config" in kinds:
        return ExitCode.CONFIG
    if kinds & CONNECTION_KINDS:
        return ExitCode.CONNECTION
    if kinds or any(mb.total("failed") for mb in stats.mailboxes.values()):
        return ExitCode.FAILED
    return ExitCode.OK


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


class ProgressView:
    """Live progress bars, one per mailbox. Use as a context manager; pass
    ``update`` to RunStats as its listener. Disabled, it does nothing (and needs no
    console)."""

    def __init__(self, console: Console | None, jobs: list[str], enabled: bool = True):
        self.console = console
        self.enabled = enabled = enabled and console is not None
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[mb]} MB"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks = {
            j: self.progress.add_task(j, total=None, mb="0.0", status="waiting", start=False) for j in jobs
        }

    def __enter__(self) -> ProgressView:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.__exit__(et, ev, tb)

    def update(self, mb: MailboxStats) -> None:
        if self.progress is None:
            return
        task = self.tasks[mb.job]
        if mb.status == "running":
            self.progress.start_task(task)
        status = mb.status if mb.status != "failed" else f"[red]failed: {mb.error_kind}"
        self.progress.update(
            task,
            total=max(mb.total("to_copy"), 1) if mb.folders else None,
            completed=mb.total("copied") + mb.total("failed"),
            mb=_mb(mb.total("bytes")),
            status=status,
        )
        if mb.status in ("ok", "failed", "interrupted"):
            self.progress.stop_task(task)


def summary_table(stats: RunStats, dry_run: bool = False) -> Table:
    from rich.table import Table

    title = "Dry run: nothing was written" if dry_run else "Summary"
    table = Table(title=title, title_justify="left")
    for col in (
        "Mailbox",
        "Status",
        "Folders",
        "Messages",
        "Copied" if not dry_run else "To copy",
        "Already there",
        "Skipped",
        "Failed",
        "MB",
        "Seconds",
        "Msgs/s",
        "MB/s",
        "Problem",
    ):
        table.add_column(col, justify="right" if col not in ("Mailbox", "Status", "Problem") else "left")

    def trouble(mb: MailboxStats) -> tuple[int, str]:
        return (0 if mb.status == "failed" else 1 if mb.total("failed") else 2, mb.job)

    for mb in sorted(stats.mailboxes.values(), key=trouble):
        copied = mb.total("to_copy") if dry_run else mb.total("copied")
        secs = mb.seconds
        rate = f"{mb.total('copied') / secs:,.0f}" if secs > 0 and not dry_run else "-"
        mb_rate = f"{mb.total('bytes') / secs / 1e6:,.2f}" if secs > 0 and not dry_run else "-"
        status = {"ok": "[green]ok", "failed": "[red]failed", "interrupted": "[yellow]interrupted"}.get(
            mb.status, mb.status
        )
        problem = mb.error or ""
        if mb.failed_messages:
            problem = (problem + "; " if problem else "") + f"{len(mb.failed_messages)} message(s) failed"
        table.add_row(
            mb.job,
            status,
            str(len(mb.folders)),
            f"{mb.total('listed'):,}",
            f"{copied:,}",
            f"{mb.total('done') + mb.total('matched'):,}",
            f"{mb.total('skipped'):,}",
            f"{mb.total('failed'):,}",
            _mb(mb.total("bytes_to_copy") if dry_run else mb.total("bytes")),
            f"{secs:,.1f}",
            rate,
            mb_rate,
            problem,
        )
    return table


def details(stats: RunStats, console: Console, dry_run: bool = False) -> None:
    """Folder renames, exclusions, skipped, failed and altered messages, each with its reason."""
    for mb in sorted(stats.mailboxes.values(), key=lambda m: m.job):
        lines: list[str] = []
        if mb.status == "failed" and mb.error:
            lines.append(f"[red]failed ({mb.error_kind})[/]: {mb.error}")
        for f in mb.folders:
            for note in f.notes:
                lines.append(f"folder {join(f.source)!r} -> {join(f.dest)!r}: {note}")
        for path, reason in mb.excluded:
            lines.append(f"folder {join(path)!r} not copied: {reason}")
        for path, msg_id, reason in mb.skipped_messages[:50]:
            lines.append(f"skipped {join(path)} #{msg_id}: {reason}")
        if len(mb.skipped_messages) > 50:
            lines.append(f"... and {len(mb.skipped_messages) - 50} more skipped (every one with its reason: --report)")
        for path, msg_id, reason in mb.failed_messages[:50]:
            lines.append(f"[red]failed[/] {join(path)} #{msg_id}: {reason}")
        if len(mb.failed_messages) > 50:
            lines.append(f"... and {len(mb.failed_messages) - 50} more failed (`migrator status`, --report)")
        for a in mb.altered_messages[:50]:
            kept = f" (kept as #{a.dst_id})" if a.dst_id else ""
            lines.append(f"[yellow]altered[/] {join(a.folder)} #{a.id}: {a.reason}{kept}")
        if len(mb.altered_messages) > 50:
            lines.append(f"... and {len(mb.altered_messages) - 50} more altered (every one with its sizes: --report)")
        if lines:
            console.print(f"[bold]{mb.job}[/]")
            for line in lines:
                console.print(f"  {line}", highlight=False)


def one_line(stats: RunStats, code: ExitCode, dry_run: bool = False) -> str:
    """A single line for cron mail and logs. Messages the destination altered when it
    stored them are named whenever there are some (they do not change the exit code)."""
    t = stats.totals()
    mbs = stats.mailboxes.values()
    failed_mb = sum(1 for m in mbs if m.status == "failed")
    secs = (stats.finished or stats.started) - stats.started
    verb = "would copy" if dry_run else "copied"
    n = t["to_copy"] if dry_run else t["copied"]
    altered = f", {t['altered']:,} altered by the destination (kept)" if t.get("altered") else ""
    return (
        f"migrator: exit {int(code)}: {len(stats.mailboxes)} mailbox(es), {failed_mb} failed; "
        f"{verb} {n:,} message(s) ({_mb(t['bytes_to_copy'] if dry_run else t['bytes'])} MB), "
        f"{t['done'] + t['matched']:,} already there, {t['skipped']:,} skipped, {t['failed']:,} failed"
        f"{altered} in {secs:,.1f} s"
    )
