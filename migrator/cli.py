"""The command line: parses arguments, calls the library, maps results to exit codes.

No migration logic lives here (see engine.py, plan.py, report.py).
"""

from __future__ import annotations

import getpass
import logging
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from migrator import __version__
from migrator.engine import Engine, RunOptions
from migrator.errors import LockedError, PlanError
from migrator.model import Account, MailboxJob, Options, Plan, Secret
from migrator.report import ExitCode, ProgressView, details, exit_code, one_line, summary_table
from migrator.state import RunLock, State
from migrator.stats import RunStats
from migrator.urls import pair_state_name, parse_url, redact

if TYPE_CHECKING:
    from rich.console import Console

    from migrator.predict import Throughput

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Migrate and keep in sync whole organisations' mailboxes (IMAP, Maildir, mbox).",
)

# ---------------------------------------------------------------- shared options (defined once)
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Connect read-only and report what would be copied; write nothing.")
]
StateFile = Annotated[
    Path | None, typer.Option("--state", help="State DB file (default: the plan's, or state/copy-<hash>.db).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; only the final summary line.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log each step to stderr.")]
ForceDelete = Annotated[
    bool, typer.Option("--force-delete", help="Mirror: delete even past the deletion guard's share, this run only.")
]
Report = Annotated[
    list[Path] | None,
    typer.Option("--report", help="Also write a report: FILE.json, FILE.csv or FILE.html (repeatable)."),
]
MetricsFile = Annotated[
    Path | None, typer.Option("--metrics-file", help="Write Prometheus textfile metrics here at the end.")
]
LogJson = Annotated[Path | None, typer.Option("--log-json", help="Also log events as JSON lines to this file.")]
MaxConnections = Annotated[
    int | None,
    typer.Option("--max-connections", min=1, help="Connections per server at most, across all mailboxes."),
]
BwLimit = Annotated[
    str | None, typer.Option("--bwlimit", help="Bytes per second at most, e.g. 20MB or 5MiB (message bytes sent).")
]
MaxRate = Annotated[
    float | None, typer.Option("--max-messages-per-second", min=0.001, help="Messages per second at most.")
]
Parallel = Annotated[
    int | None, typer.Option("--parallel", min=1, help="Mailboxes copied at the same time (default: the plan's).")
]


def _console() -> Console:
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    if not console.is_terminal:  # cron mail, CI logs: wide enough for the summary table
        console = Console(stderr=False, highlight=False, width=160)
    return console


def _say(console: Console | None, line: str) -> None:
    """One plain line on stdout, through the console when there is one (keeps the order
    with its tables); never wrapped, so cron mail and log shippers get it whole."""
    if console is None:
        print(line, flush=True)
    else:
        console.print(line, markup=False, soft_wrap=True)


def _err(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(msg, markup=False)


def _setup_logging(verbose: bool, log_json: Path | None = None) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # --log-json lowers the logger's level; stderr keeps its own
    if log_json is not None:
        from migrator.observe import add_json_log

        add_json_log(log_json)


def _plan_or_exit(path: Path, cached: bool = True) -> Plan:
    """The plan (from the plan cache when nothing it was made from changed: see
    plancache.py), or its problems on stderr and exit 2."""
    try:
        if cached:
            from migrator.plancache import load

            return load(path)
        from migrator.plan import load_plan

        return load_plan(path)
    except PlanError as exc:
        for line in exc.problems:
            _err(line)
        raise typer.Exit(int(ExitCode.CONFIG)) from None


def _sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, handler)


@dataclass(frozen=True, slots=True)
class Execution:
    """How a run is carried out and reported (shared by `run` and `copy`)."""

    dry_run: bool = False
    parallel: int | None = None
    quiet: bool = False
    command: str = "run"
    force_delete: bool = False
    reports: tuple[Path, ...] = ()  # .json / .csv / .html, by extension
    log_json: Path | None = None  # JSON-lines event log
    metrics_file: Path | None = None  # Prometheus textfile
    plan_name: str = ""
    throughput: Throughput | None = None  # dry runs: the estimate's speed (else measured)
    max_connections: int | None = None
    bytes_per_second: float | None = None
    messages_per_second: float | None = None


def _rate(bwlimit: str | None) -> float | None:
    if bwlimit is None:
        return None
    from migrator.plan import parse_size

    try:
        value = parse_size(bwlimit)
    except ValueError as exc:
        _err(f"--bwlimit: {exc}")
        raise typer.Exit(int(ExitCode.CONFIG)) from None
    if value <= 0:
        _err("--bwlimit: must be more than 0")
        raise typer.Exit(int(ExitCode.CONFIG))
    return float(value)


def _execute(jobs: list[MailboxJob], state_path: Path, ex: Execution) -> None:
    """Run ``jobs`` with progress and summary; always ends with typer.Exit(code)."""
    if ex.reports:
        from migrator.reports import check_report_paths

        try:
            check_report_paths(ex.reports)
        except PlanError as exc:
            _err(str(exc))
            raise typer.Exit(int(ExitCode.CONFIG)) from None
    console = None if ex.quiet else _console()  # quiet (cron): rich is never loaded
    _sigterm_as_interrupt()
    view = ProgressView(console, [j.id for j in jobs], enabled=console is not None and console.is_terminal)
    stats = RunStats([j.id for j in jobs], listener=view.update)
    try:
        lock = None if ex.dry_run else RunLock(state_path)
        if lock:
            lock.__enter__()
    except LockedError as exc:
        _err(str(exc))
        raise typer.Exit(int(ExitCode.LOCKED)) from None
    options = RunOptions(
        dry_run=ex.dry_run,
        parallel_mailboxes=ex.parallel,
        command=ex.command,
        force_delete=ex.force_delete,
        max_connections=ex.max_connections,
        bytes_per_second=ex.bytes_per_second,
        messages_per_second=ex.messages_per_second,
    )
    try:
        try:
            state = State.open(state_path, readonly=ex.dry_run)
        except PlanError as exc:
            _err(str(exc))
            raise typer.Exit(int(ExitCode.CONFIG)) from None
        engine = Engine(jobs, state, stats, options)
        try:
            with view:
                engine.run()
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            state.close()
    finally:
        if lock:
            lock.__exit__(None, None, None)
    code = exit_code(stats)
    data = _report(jobs, stats, state_path, ex) if ex.dry_run or ex.reports else None
    if console is not None:
        if ex.dry_run and data is not None:
            from migrator.reports import print_dry_run

            print_dry_run(console, data)
        else:
            console.print(summary_table(stats, dry_run=ex.dry_run))
            details(stats, console, dry_run=ex.dry_run)
    if ex.reports and data is not None:
        from migrator.reports import write_report_files

        for path in write_report_files(ex.reports, data):
            _say(console, f"report written: {path}")
    if ex.metrics_file:
        from migrator.observe import write_metrics

        write_metrics(ex.metrics_file, stats, code, plan_name=ex.plan_name)
    line = one_line(stats, code, dry_run=ex.dry_run)
    if code == ExitCode.INTERRUPTED:
        line += " (interrupted: run the same command again to resume)"
    _say(console, line)
    raise typer.Exit(int(code))


def _report(jobs: list[MailboxJob], stats: RunStats, state_path: Path, ex: Execution) -> dict[str, Any]:
    """The run's report data; a dry run's with predictions (probes, problems, estimate)."""
    from migrator.reports import report_data

    prediction = None
    if ex.dry_run and not stats.interrupted:
        from migrator.predict import predict

        parallel = ex.parallel or max((j.options.parallel_mailboxes for j in jobs), default=1)
        prediction = predict(jobs, stats, state_path=state_path, throughput=ex.throughput, parallel=parallel)
    return report_data(stats, jobs, dry_run=ex.dry_run, plan_name=ex.plan_name, prediction=prediction)


def _select(plan: Plan, mailbox: list[str] | None) -> list[MailboxJob]:
    if not mailbox:
        return list(plan.jobs)
    known = {j.id: j for j in plan.jobs}
    missing = [m for m in mailbox if m not in known]
    if missing:
        _err(f"{plan.source_file}: no mailbox with id {', '.join(missing)} (known: {', '.join(known) or 'none'})")
        raise typer.Exit(int(ExitCode.CONFIG))
    return [known[m] for m in mailbox]


# ---------------------------------------------------------------- commands
def _version(value: bool) -> None:
    if value:
        typer.echo(f"migrator {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Migrate and keep in sync whole organisations' mailboxes.

    Exit codes: 0 all copied; 1 some messages failed; 2 plan or configuration
    error; 3 connection or authentication error; 4 another run holds the lock;
    130 interrupted (resumable).
    """


@app.command()
def validate(plan: Annotated[Path, typer.Argument(help="The plan file (YAML).")]) -> None:
    """Check a plan and its mailbox CSV without connecting anywhere.

    Example: migrator validate plans/acme.yaml
    """
    from migrator.plan import check_secrets

    p = _plan_or_exit(plan, cached=False)  # validate always reads and checks everything
    problems = check_secrets(p)
    for line in problems:
        _err(line)
    if problems:
        raise typer.Exit(int(ExitCode.CONFIG))
    console = _console()
    console.print(f"{plan}: ok: {len(p.jobs)} mailbox(es), state {p.state_path}")
    for job in p.jobs:
        console.print(f"  {job.id}: {job.source.describe()} -> {job.destination.describe()}")


@app.command()
def run(
    plan: Annotated[Path, typer.Argument(help="The plan file (YAML).")],
    dry_run: DryRun = False,
    mailbox: Annotated[
        list[str] | None, typer.Option("--mailbox", "-m", help="Only this mailbox id (repeatable).")
    ] = None,
    state: StateFile = None,
    parallel: Parallel = None,
    shard: Annotated[
        str | None, typer.Option("--shard", help="Run only shard I of N (I/N, 1-based), balanced by bytes.")
    ] = None,
    rebalance: Annotated[
        bool, typer.Option("--rebalance", help="With --shard: recompute the assignment from scratch.")
    ] = False,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="With --shard: balance by the bytes in this (dry-run) JSON report."),
    ] = None,
    force_delete: ForceDelete = False,
    max_connections: MaxConnections = None,
    bwlimit: BwLimit = None,
    max_messages_per_second: MaxRate = None,
    report: Report = None,
    metrics_file: MetricsFile = None,
    log_json: LogJson = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Copy every mailbox of a plan; safe to interrupt and run again.

    Example: migrator run plans/acme.yaml --mailbox alice --dry-run
    """
    _setup_logging(verbose, log_json)
    p = _plan_or_exit(plan)
    jobs = _select(p, mailbox)
    state_path = state or p.state_path
    if shard:
        from migrator.shard import select_shard

        try:
            jobs, state_path = select_shard(
                p, jobs, shard, rebalance=rebalance, state_override=state, weights_report=weights, dry_run=dry_run
            )
        except PlanError as exc:
            for line in exc.problems:
                _err(line)
            raise typer.Exit(int(ExitCode.CONFIG)) from None
    ex = Execution(
        dry_run=dry_run,
        parallel=parallel,
        quiet=quiet,
        command="run",
        force_delete=force_delete,
        reports=tuple(report or ()),
        log_json=log_json,
        metrics_file=metrics_file,
        plan_name=p.name,
        max_connections=max_connections,
        bytes_per_second=_rate(bwlimit),
        messages_per_second=max_messages_per_second,
    )
    _execute(jobs, state_path, ex)


@app.command()
def status(
    plan: Annotated[Path, typer.Argument(help="The plan file (YAML).")],
    state: StateFile = None,
) -> None:
    """Show what the state DB knows: per mailbox counts, failures, last runs.

    Example: migrator status plans/acme.yaml
    """
    p = _plan_or_exit(plan)
    path = state or p.state_path
    if not Path(path).exists():
        _err(f"{path}: no state yet (nothing has run for this plan)")
        raise typer.Exit(int(ExitCode.CONFIG))
    st = State.open(path, readonly=True)
    try:
        console = _console()
        from rich.table import Table

        table = Table(title=f"State {path}", title_justify="left")
        for col in ("Mailbox", "Folders", "Copied", "Already there", "Skipped", "Failed", "Pending", "MB", "Updated"):
            table.add_column(col, justify="left" if col in ("Mailbox", "Updated") else "right")
        rows = {r["job"]: r for r in st.job_summary()}
        for job in p.jobs:
            r = rows.get(job.id, {})
            table.add_row(
                job.id,
                str(r.get("folders", 0)),
                f"{r.get('copied', 0):,}",
                f"{r.get('matched', 0):,}",
                f"{r.get('skipped', 0):,}",
                f"{r.get('failed', 0):,}",
                f"{r.get('pending', 0):,}",
                f"{int(r.get('bytes', 0)) / 1e6:,.1f}",  # type: ignore[call-overload]
                str(r.get("updated", "never")),
            )
        console.print(table)
        for f in st.failures():
            console.print(f"failed: {f['job']} {f['src_folder']} #{f['src_id']}: {f['reason']}", markup=False)
        runs = st.last_runs(5)
        if runs:
            runs_table = Table(title="Last runs", title_justify="left")
            for col in ("Run", "Started", "Finished", "Status", "Command", "Copied", "Failed"):
                runs_table.add_column(col)
            for r in runs:
                runs_table.add_row(
                    str(r["id"]),
                    str(r["started"]),
                    str(r["finished"] or "-"),
                    str(r["status"]),
                    str(r["command"]) + (" (dry run)" if r["dry_run"] else ""),
                    str(r["copied"]),
                    str(r["failed"]),
                )
            console.print(runs_table)
    finally:
        st.close()


def _password(env: str, label: str) -> Secret:
    if env in os.environ:
        return Secret(env=env, origin=label)
    if sys.stdin.isatty():
        return Secret(value=getpass.getpass(f"Password for {label}: "), origin=label)
    _err(f"{label}: no password: set {env} (or run on a terminal to be asked)")
    raise typer.Exit(int(ExitCode.CONFIG))


@app.command()
def copy(
    source: Annotated[str, typer.Argument(help="imap://USER@HOST[:PORT], imaps://..., maildir:/path or mbox:/path")],
    dest: Annotated[str, typer.Argument(help="Same forms as SOURCE.")],
    dry_run: DryRun = False,
    state: StateFile = None,
    mode: Annotated[
        str, typer.Option("--mode", help="copy (add what is new), mirror (also flags; deletions with --delete), move.")
    ] = "copy",
    after_copy: Annotated[
        str, typer.Option("--after-copy", help="keep (default) or delete source messages once their copy is confirmed.")
    ] = "keep",
    delete: Annotated[bool, typer.Option("--delete", help="Mirror: propagate deletions too.")] = False,
    force_delete: ForceDelete = False,
    max_connections: MaxConnections = None,
    bwlimit: BwLimit = None,
    max_messages_per_second: MaxRate = None,
    report: Report = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Copy one mailbox to another without a plan file (imapsync-style).

    Passwords come from MIGRATOR_SOURCE_PASSWORD and MIGRATOR_DEST_PASSWORD (or a
    prompt on a terminal), never from the URL. imap:// insists on STARTTLS unless
    ?tls=off; certificates are verified unless ?verify=off.

    Example: migrator copy imaps://alice@old.example imaps://alice@new.example
    """
    _setup_logging(verbose)
    if mode not in ("copy", "mirror", "move") or after_copy not in ("keep", "delete"):
        _err(f"--mode must be copy, mirror or move (got {mode!r}); --after-copy keep or delete (got {after_copy!r})")
        raise typer.Exit(int(ExitCode.CONFIG))
    try:
        src = parse_url(source)
        dst = parse_url(dest)
    except PlanError as exc:
        for line in exc.problems:
            _err(line)
        raise typer.Exit(int(ExitCode.CONFIG)) from None
    if src.host is not None:
        src = _with_secret(src, _password("MIGRATOR_SOURCE_PASSWORD", redact(source)))
    if dst.host is not None:
        dst = _with_secret(dst, _password("MIGRATOR_DEST_PASSWORD", redact(dest)))
    options = Options(mode=mode, after_copy=after_copy, delete=delete)  # type: ignore[arg-type]
    job = MailboxJob(id="copy", source=src, destination=dst, options=options, origin="command line")
    path = state or Path("state") / pair_state_name(source, dest)
    ex = Execution(
        dry_run=dry_run,
        parallel=1,
        quiet=quiet,
        command="copy",
        force_delete=force_delete,
        reports=tuple(report or ()),
        plan_name="copy",
        max_connections=max_connections,
        bytes_per_second=_rate(bwlimit),
        messages_per_second=max_messages_per_second,
    )
    _execute([job], path, ex)


report_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Work with run reports.")
app.add_typer(report_app, name="report")


@report_app.command("merge")
def report_merge(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="INPUT...", help="Shard reports (.json) and/or state DBs (default with --plan: its shard DBs)."
        ),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Write the merged report here (.json, .csv, .html).")
    ] = Path("merged-report.json"),
    plan: Annotated[
        Path | None, typer.Option("--plan", help="The plan: mailbox order, and needed to read state DBs.")
    ] = None,
    state: StateFile = None,
) -> None:
    """Combine the reports and/or state DBs of shards into one report (a single run's schema).

    Exit 1 when a mailbox of the plan is in no input.

    Example: migrator report merge --plan plans/acme.yaml shard-*.json -o acme.json
    """
    from migrator.merge import merge_inputs, write_merged
    from migrator.shard import shard_db_paths

    p = _plan_or_exit(plan) if plan else None
    paths = list(inputs or ())
    if not paths and p is not None:
        paths = list(shard_db_paths(Path(state or p.state_path)).values())
    if not paths:
        _err("report merge: no inputs (give reports or state DBs, or --plan to use its shard DBs)")
        raise typer.Exit(int(ExitCode.CONFIG))
    try:
        merged, missing = merge_inputs(paths, p)
        write_merged(output, merged)
    except PlanError as exc:
        for line in exc.problems:
            _err(line)
        raise typer.Exit(int(ExitCode.CONFIG)) from None
    console = _console()
    console.print(f"report written: {output} ({len(merged['mailboxes'])} mailbox(es) from {len(paths)} input(s))")
    if missing:
        _err(f"report merge: {len(missing)} mailbox(es) of the plan in no input: {', '.join(missing)}")
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("plan")
def plan_command(
    plan: Annotated[Path, typer.Argument(help="The plan file (YAML).")],
    mailbox: Annotated[
        list[str] | None, typer.Option("--mailbox", "-m", help="Only this mailbox id (repeatable).")
    ] = None,
    state: StateFile = None,
    parallel: Parallel = None,
    throughput: Annotated[
        str | None,
        typer.Option(
            "--throughput",
            help="Speed of one mailbox for the estimate: 20msg/s, 5MB/s or both (20msg/s,5MB/s). "
            "Default: measured from earlier runs in the state DB.",
        ),
    ] = None,
    report: Report = None,
    log_json: LogJson = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Dry run with predictions: what would be copied, the problems a cutover would meet
    (oversized messages, folder names, duplicate or missing Message-IDs, quota, missing
    UIDPLUS/CONDSTORE, login failures) and how long it would take.

    Connects read-only everywhere and writes nothing at any destination, nor a state file.

    Example: migrator plan plans/acme.yaml --throughput 5MB/s --report plan.html --report plan.json
    """
    from migrator.predict import parse_throughput

    _setup_logging(verbose, log_json)
    p = _plan_or_exit(plan)
    jobs = _select(p, mailbox)
    speed = None
    if throughput is not None:
        try:
            speed = parse_throughput(throughput)
        except ValueError as exc:
            _err(f"--throughput: {exc}")
            raise typer.Exit(int(ExitCode.CONFIG)) from None
    ex = Execution(
        dry_run=True,
        parallel=parallel,
        quiet=quiet,
        command="plan",
        reports=tuple(report or ()),
        log_json=log_json,
        plan_name=p.name,
        throughput=speed,
    )
    _execute(jobs, state or p.state_path, ex)


@app.command()
def verify(
    plan: Annotated[Path, typer.Argument(help="The plan file (YAML).")],
    mailbox: Annotated[
        list[str] | None, typer.Option("--mailbox", "-m", help="Only this mailbox id (repeatable).")
    ] = None,
    state: StateFile = None,
    parallel: Parallel = None,
    report: Report = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Reconcile every source folder with the destination (counts, sizes, Message-IDs,
    flags) using the state DB and live listings; read-only on both sides.

    Lists every source message that is neither at the destination nor skipped with a
    reason. Exit 0 only when nothing is unaccounted for; 1 otherwise; 3 when a mailbox
    could not connect or log in.

    Example: migrator verify plans/acme.yaml --report verify.html
    """
    from migrator.reports import check_report_paths, write_report_files
    from migrator.verify import one_line as verify_line
    from migrator.verify import print_verify, verify_data, verify_jobs

    _setup_logging(verbose)
    p = _plan_or_exit(plan)
    jobs = _select(p, mailbox)
    try:
        check_report_paths(tuple(report or ()))
    except PlanError as exc:
        _err(str(exc))
        raise typer.Exit(int(ExitCode.CONFIG)) from None
    n = parallel or max((j.options.parallel_mailboxes for j in jobs), default=1)
    result = verify_jobs(jobs, Path(state or p.state_path), plan_name=p.name, parallel=n)
    console = _console()
    if not quiet:
        print_verify(result, console)
    if report:
        for path in write_report_files(tuple(report), verify_data(result, jobs)):
            console.print(f"report written: {path}", markup=False)
    console.print(verify_line(result), markup=False, soft_wrap=True)
    raise typer.Exit(int(result.exit_code()))


def _with_secret(account: Account, secret: Secret) -> Account:
    return replace(account, secret=secret)


def main() -> None:
    app(prog_name="migrator")
