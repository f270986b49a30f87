"""`migrator verify`: reconcile every source folder with its destination folder.

Read-only on both sides (the destination is wrapped in the dry-run guard; the state
DB is opened read-only). For each mailbox, each of its sources and each folder the
plan copies, the live source listing is matched against the live listing of the
destination folder it maps to:

1. a source message whose checkpoint row names a destination id that is listed
   there with the same Message-ID (and, without Message-ID, the same size) is at the
   destination;
2. the remaining ones are matched as a multiset by identity (Message-ID + size, or a
   SHA-256 of the content + size for messages without Message-ID; the checkpoint's
   hash or a fetch), against destination messages not claimed in step 1, as the
   engine does: Message-ID alone where the destination rewrites messages
   (``exact_sizes`` False), and the same Message-ID at another size when the
   line-ending-normalised contents agree (a destination that altered the message);
3. a message still unmatched whose checkpoint row says ``skipped`` is accounted for
   by its reason;
4. everything else is **unaccounted**, each with the reason the checkpoint gives
   (failed with its error, sent but never confirmed, recorded as copied but not at the
   destination, or never copied).

Source folders merged into one destination folder are matched together. Counts,
sizes, Message-ID sets (the unaccounted ones) and flags (source vs destination, of
every matched pair) are reported per folder; flag differences are warnings (copy mode
does not carry later flag changes), not unaccounted messages.

Exit codes: 0 nothing unaccounted; 1 something unaccounted, or a folder could not be
checked; 2 plan or configuration error; 3 a mailbox could not connect or log in.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from migrator import __version__
from migrator.connectors.base import Destination, Source, open_store
from migrator.errors import AuthError, ConnectError, MigratorError, PlanError, TLSError, TransientError
from migrator.folders import FolderMap, FolderPlan, join, map_folders
from migrator.march import altered_candidates, hash_candidates, match_altered, match_existing
from migrator.model import SYSTEM_FLAGS, Account, Capabilities, FolderInfo, FolderPath, MailboxJob, MessageMeta
from migrator.predict import Problem, problem_sort_key
from migrator.report import ExitCode
from migrator.state import NO_VALIDITY, State, folder_key
from migrator.transfer import DryRunDestination, content_hash

log = logging.getLogger("migrator")

MAX_FLAG_EXAMPLES = 200  # flag differences kept per folder (the count is exact)


@dataclass(frozen=True, slots=True)
class Row:
    """A checkpoint row of one source message."""

    status: str  # pending | copied | matched | skipped | failed
    dst_id: str | None
    dst_folder: FolderPath | None
    size: int
    message_id: str | None
    content_hash: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Unaccounted:
    folder: str
    id: str
    message_id: str | None
    size: int
    reason: str


@dataclass(frozen=True, slots=True)
class FlagDifference:
    folder: str
    id: str
    source_flags: tuple[str, ...]
    destination_flags: tuple[str, ...]


@dataclass(slots=True)
class FolderCheck:
    store: str
    source: FolderPath
    dest: FolderPath
    source_messages: int = 0
    source_bytes: int = 0
    destination_messages: int = 0  # of the destination folder (shared when folders merge into it)
    destination_bytes: int = 0
    at_destination: int = 0
    skipped: int = 0
    extra_at_destination: int = 0  # destination messages no source message stands for (on one folder per dest)
    flag_difference_count: int = 0
    unaccounted: list[Unaccounted] = field(default_factory=list)
    flag_differences: list[FlagDifference] = field(default_factory=list)
    skipped_messages: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


@dataclass(slots=True)
class MailboxCheck:
    job: str
    status: str = "waiting"  # ok | unaccounted | failed
    error: str | None = None
    error_kind: str | None = None  # auth | tls | connect | config | folder | error
    seconds: float = 0.0
    folders: list[FolderCheck] = field(default_factory=list)
    excluded: list[tuple[FolderPath, str]] = field(default_factory=list)
    folder_errors: list[str] = field(default_factory=list)

    def total(self, name: str) -> int:
        if name == "unaccounted":
            return sum(len(f.unaccounted) for f in self.folders)
        if name == "flag_differences":
            return sum(f.flag_difference_count for f in self.folders)
        return sum(getattr(f, name) for f in self.folders)

    def destination_total(self, name: str) -> int:
        """destination_messages / destination_bytes counted once per destination folder."""
        seen: dict[FolderPath, int] = {}
        for f in self.folders:
            seen.setdefault(f.dest, getattr(f, name))
        return sum(seen.values())


@dataclass(slots=True)
class VerifyResult:
    plan: str
    mailboxes: list[MailboxCheck]
    state_path: Path | None
    state_found: bool
    seconds: float = 0.0

    def exit_code(self) -> ExitCode:
        kinds = {m.error_kind for m in self.mailboxes if m.status == "failed"}
        if "config" in kinds:
            return ExitCode.CONFIG
        if kinds & {"auth", "tls", "connect"}:
            return ExitCode.CONNECTION
        if kinds or any(m.total("unaccounted") for m in self.mailboxes):
            return ExitCode.FAILED
        return ExitCode.OK


# --------------------------------------------------------------------------- state rows
class RowReader:
    """Checkpoint rows by folder, from one read-only connection shared by threads."""

    def __init__(self, state: State):
        self.state = state
        self._lock = threading.Lock()

    def rows(self, job: str, source: str, path: FolderPath, validity: int | None) -> dict[str, Row]:
        with self._lock:
            cur = self.state.conn.execute(
                "select src_id, status, dst_id, dst_folder, size, message_id, content_hash, reason from messages"
                " where job = ? and source = ? and src_folder = ? and src_validity is ?",
                [job, source, folder_key(path), NO_VALIDITY if validity is None else validity],
            )
            return {
                src_id: Row(status, dst_id, tuple(json.loads(dst)) if dst else None, size or 0, mid, sha, reason)
                for src_id, status, dst_id, dst, size, mid, sha, reason in cur.fetchall()
            }


# --------------------------------------------------------------------------- matching
def _flags(flags: frozenset[str], caps: Capabilities) -> tuple[str, ...]:
    kept = {f for f in flags if f.upper() != "\\RECENT"}
    if not caps.keywords:
        kept &= SYSTEM_FLAGS
    return tuple(sorted(kept))


@dataclass(slots=True)
class _Entry:
    """One source folder being reconciled."""

    check: FolderCheck
    msgs: list[MessageMeta]
    rows: dict[str, Row]
    hashes: dict[str, str]  # source id -> content hash (no Message-ID)
    compare_flags: bool


def _reason(row: Row | None) -> str:
    if row is None:
        return "never copied (new at the source since the last run, or its folder has not been run)"
    if row.status == "failed":
        return f"failed: {row.reason or 'no reason recorded'}"
    if row.status == "pending":
        return "sent but never confirmed (the run was interrupted): run again"
    if row.status in ("copied", "matched"):
        where = f" as id {row.dst_id}" if row.dst_id else ""
        return f"recorded as {row.status}{where} but not at the destination (deleted there?)"
    return f"status {row.status}"


def reconcile(
    entries: Sequence[_Entry],
    dst_msgs: Sequence[MessageMeta],
    dst_hashes: dict[str, str],
    dst_caps: Capabilities,
    dst_hash: Callable[[Sequence[MessageMeta]], dict[str, str]] | None = None,
) -> None:
    """Match the source folders ``entries`` (all mapped to one destination folder)
    against its listing ``dst_msgs``; fill each entry's FolderCheck.

    ``dst_hashes``: content hashes of destination messages without Message-ID;
    ``dst_hash``: fetches content hashes of more destination messages (for messages the
    destination altered when storing them: the same Message-ID at another size, as
    the engine recognises them, ``march.altered_candidates``)."""
    available: dict[str, MessageMeta] = {m.id: m for m in dst_msgs}
    pairs: list[tuple[_Entry, MessageMeta, MessageMeta]] = []
    rest: list[tuple[_Entry, MessageMeta]] = []
    for e in entries:  # 1. by the destination id the checkpoint recorded (APPENDUID etc.)
        for m in e.msgs:
            row = e.rows.get(m.id)
            d = available.get(row.dst_id) if row and row.dst_id and row.status in ("copied", "matched") else None
            # the same Message-ID at the recorded id: the destination may have altered the size
            if d is not None and d.message_id == m.message_id and (d.size == m.size or m.message_id):
                del available[d.id]
                pairs.append((e, m, d))
            else:
                rest.append((e, m))
    exact = getattr(dst_caps, "exact_sizes", True)
    still: list[tuple[_Entry, MessageMeta]] = []
    for e in entries:  # 2. by identity, as a multiset (source ids are unique within one folder only)
        mine = [m for x, m in rest if x is e]
        if mine and available:
            matched, unmatched = match_existing(
                mine, list(available.values()), Counter(), e.hashes, dst_hashes, exact_sizes=exact
            )
            for m, d_id in matched:
                pairs.append((e, m, available.pop(d_id)))
            maybe_src, maybe_dst = altered_candidates(unmatched, list(available.values()), set(), Counter())
            maybe_src = [m for m in maybe_src if m.id in e.hashes]
            if maybe_src and dst_hash is not None:
                for m, d_id in match_altered(maybe_src, maybe_dst, e.hashes, dst_hash(maybe_dst)):
                    if d_id in available:
                        pairs.append((e, m, available.pop(d_id)))
                        unmatched = [x for x in unmatched if x is not m]
            still += [(e, m) for m in unmatched]
        else:
            still += [(e, m) for m in mine]
    rest = still
    for e, m in rest:  # 3. skipped with a reason, 4. unaccounted
        row = e.rows.get(m.id)
        if row is not None and row.status == "skipped":
            e.check.skipped += 1
            e.check.skipped_messages.append((m.id, row.reason or ""))
        else:
            e.check.unaccounted.append(Unaccounted(join(e.check.source), m.id, m.message_id, m.size, _reason(row)))
    for e, m, d in pairs:
        e.check.at_destination += 1
        if e.compare_flags:
            sf, df = _flags(m.flags, dst_caps), _flags(d.flags, dst_caps)
            if sf != df:
                e.check.flag_difference_count += 1
                if len(e.check.flag_differences) < MAX_FLAG_EXAMPLES:
                    e.check.flag_differences.append(FlagDifference(join(e.check.source), m.id, sf, df))
    if entries:
        entries[0].check.extra_at_destination = len(available)
    for e in entries:
        e.check.destination_messages = len(dst_msgs)
        e.check.destination_bytes = sum(d.size for d in dst_msgs)


# --------------------------------------------------------------------------- one mailbox
def _kind(exc: BaseException) -> str:
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, TLSError):
        return "tls"
    if isinstance(exc, ConnectError | TransientError):
        return "connect"
    if isinstance(exc, PlanError):
        return "config"
    return "error"


def _mapping(job: MailboxJob, src: Source, dst: Destination) -> FolderPlan:
    """The engine's folder mapping (engine.MailboxRun._mapping), read-only."""
    src_folders = src.list_folders()
    dst_folders = dst.list_folders()
    if not src.capabilities.folders:  # POP3: one folder, into the configured one
        target = tuple(p for p in job.options.pop3_folder.split("/") if p) or ("INBOX",)
        return FolderPlan(maps=[FolderMap(f, target) for f in src_folders if f.selectable])
    return map_folders(src_folders, dst_folders, job.options.folders, dst.capabilities)


class MailboxVerify:
    def __init__(self, job: MailboxJob, reader: RowReader):
        self.job = job
        self.reader = reader
        self.check = MailboxCheck(job.id)
        self.dst: DryRunDestination | None = None
        self.dst_listing: dict[FolderPath, tuple[FolderInfo | None, list[MessageMeta]]] = {}
        self.entries: dict[FolderPath, list[_Entry]] = {}

    def run(self) -> MailboxCheck:
        started = time.monotonic()
        try:
            self.dst = DryRunDestination(open_store(self.job.destination, "destination"))
            for account in self.job.sources:
                self._source(account)
            for dest_path, entries in self.entries.items():
                self._reconcile(dest_path, entries)
            self.check.status = "unaccounted" if self.check.total("unaccounted") else "ok"
            if self.check.folder_errors:
                self.check.status, self.check.error_kind = "failed", "folder"
                self.check.error = "; ".join(self.check.folder_errors)
        except MigratorError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug or an odd server answer: this mailbox fails, others go on
            log.exception("%s: unexpected error during verify", self.job.id)
            self._fail(exc)
        finally:
            if self.dst is not None:
                try:
                    self.dst.close()
                except Exception:
                    log.debug("close failed", exc_info=True)
            self.check.seconds = time.monotonic() - started
        return self.check

    def _fail(self, exc: BaseException) -> None:
        self.check.status = "failed"
        self.check.error = str(exc) or type(exc).__name__
        self.check.error_kind = _kind(exc)

    def _dest(self, path: FolderPath) -> tuple[FolderInfo | None, list[MessageMeta]]:
        if path not in self.dst_listing:
            assert self.dst is not None
            folder = self.dst.find_folder(path)
            msgs = self.dst.list_messages(folder) if folder is not None and folder.selectable else []
            self.dst_listing[path] = (folder, msgs)
        return self.dst_listing[path]

    def _source(self, account: Account) -> None:
        assert self.dst is not None
        label = account.describe()
        src = open_store(account, "source")
        try:
            plan = _mapping(self.job, src, self.dst)
            self.check.excluded += [(e.source.path, e.reason) for e in plan.excluded]
            for fm in plan.maps:
                try:
                    self._folder(src, label, fm)
                except MigratorError as exc:
                    if _kind(exc) in ("auth", "tls", "connect", "config"):
                        raise
                    self.check.folder_errors.append(f"{join(fm.source.path)}: {exc}")
        finally:
            try:
                src.close()
            except Exception:
                log.debug("close failed", exc_info=True)

    def _folder(self, src: Source, label: str, fm: FolderMap) -> None:
        assert self.dst is not None
        msgs = src.list_messages(fm.source)
        rows = self.reader.rows(self.job.id, label, fm.source.path, fm.source.validity)
        check = FolderCheck(label, fm.source.path, fm.dest_path, len(msgs), sum(m.size for m in msgs))
        _, dst_msgs = self._dest(fm.dest_path)
        # content hashes of source messages without Message-ID that may match one at
        # the destination (from the checkpoint when it has one, else fetched now), and of
        # those whose Message-ID is there only at another size (altered when stored)
        hashes: dict[str, str] = {}
        candidates, _ = hash_candidates(msgs, dst_msgs)
        there = {(d.message_id, d.size) for d in dst_msgs if d.message_id}
        mids = {mid for mid, _ in there}
        candidates += [m for m in msgs if m.message_id in mids and (m.message_id, m.size) not in there]
        need = []
        for m in candidates:
            row = rows.get(m.id)
            if row is not None and row.content_hash:
                hashes[m.id] = row.content_hash
            else:
                need.append(m)
        if need:
            hashes.update({m.id: content_hash(raw) for m, raw in src.fetch(fm.source, need)})
        compare = src.capabilities.flags and self.dst.capabilities.flags
        self.check.folders.append(check)
        self.entries.setdefault(fm.dest_path, []).append(_Entry(check, msgs, rows, hashes, compare))

    def _reconcile(self, dest_path: FolderPath, entries: list[_Entry]) -> None:
        assert self.dst is not None
        folder, dst_msgs = self._dest(dest_path)
        src_sizes = {m.size for e in entries for m in e.msgs if not m.message_id}
        dst_need = [m for m in dst_msgs if not m.message_id and m.size in src_sizes]
        dst_hashes = {}
        if dst_need and folder is not None:
            dst_hashes = {m.id: content_hash(raw) for m, raw in self.dst.fetch(folder, dst_need)}

        def fetch_hashes(msgs: Sequence[MessageMeta]) -> dict[str, str]:
            assert self.dst is not None
            if not msgs or folder is None:
                return {}
            return {m.id: content_hash(raw) for m, raw in self.dst.fetch(folder, msgs)}

        reconcile(entries, dst_msgs, dst_hashes, self.dst.capabilities, fetch_hashes)


def verify_jobs(
    jobs: Sequence[MailboxJob], state_path: Path | None, *, plan_name: str, parallel: int = 1
) -> VerifyResult:
    """Verify every job (``parallel`` at a time). Never raises for a mailbox's problem."""
    started = time.monotonic()
    found = state_path is not None and Path(state_path).exists()
    state = State.open(state_path if state_path is not None else Path("/nonexistent/none.db"), readonly=True)
    try:
        reader = RowReader(state)
        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="verify") as pool:
            checks = list(pool.map(lambda j: MailboxVerify(j, reader).run(), jobs))
    finally:
        state.close()
    return VerifyResult(plan_name, checks, state_path, found, time.monotonic() - started)


# --------------------------------------------------------------------------- reporting
def verify_problems(result: VerifyResult) -> list[Problem]:
    out: list[Problem] = []
    for mb in result.mailboxes:
        if mb.status == "failed" and mb.error:
            kind = {"auth": "login", "tls": "tls", "connect": "connection", "config": "configuration"}.get(
                mb.error_kind or "", mb.error_kind or "error"
            )
            prefix = "login failed: " if kind == "login" else ""
            out.append(Problem(mb.job, "error", kind, prefix + mb.error))
        for f in mb.folders:
            for u in f.unaccounted:
                mid = f" {u.message_id}" if u.message_id else " (no Message-ID)"
                out.append(
                    Problem(mb.job, "error", "unaccounted", f"#{u.id}{mid}, {u.size:,} bytes: {u.reason}", u.folder)
                )
            if f.flag_difference_count:
                ex = f.flag_differences[0]
                out.append(
                    Problem(
                        mb.job,
                        "warning",
                        "flags",
                        f"{f.flag_difference_count} message(s) with other flags at the destination, e.g. #{ex.id}: "
                        f"source {' '.join(ex.source_flags) or '(none)'}, destination "
                        f"{' '.join(ex.destination_flags) or '(none)'}",
                        join(f.source),
                        f.flag_difference_count,
                    )
                )
            if f.extra_at_destination:
                out.append(
                    Problem(
                        mb.job,
                        "info",
                        "extra-at-destination",
                        f"{f.extra_at_destination} message(s) in {join(f.dest)!r} no source message stands for",
                        join(f.source),
                        f.extra_at_destination,
                    )
                )
        for path, reason in mb.excluded:
            out.append(Problem(mb.job, "info", "folder-excluded", f"not verified: {reason}", join(path)))
    return sorted(out, key=problem_sort_key)


def verify_data(result: VerifyResult, jobs: Sequence[MailboxJob]) -> dict[str, Any]:
    """The verification report in the report schema (kind "verify")."""
    from migrator.reports import now_iso, problem_dict, trouble

    probs = [problem_dict(p) for p in verify_problems(result)]
    by_mb: dict[str, list[dict[str, object]]] = {}
    for p in probs:
        by_mb.setdefault(str(p["mailbox"]), []).append(p)
    accounts = {j.id: j for j in jobs}
    mailboxes = []
    for mb in result.mailboxes:
        job = accounts[mb.job]
        mailboxes.append(
            {
                "id": mb.job,
                "status": mb.status,
                "trouble": trouble(by_mb.get(mb.job, []), mb.status),
                "error": mb.error,
                "error_kind": mb.error_kind,
                "seconds": round(mb.seconds, 3),
                "sources": [a.describe() for a in job.sources],
                "destination": job.destination.describe(),
                "source_messages": mb.total("source_messages"),
                "source_bytes": mb.total("source_bytes"),
                "destination_messages": mb.destination_total("destination_messages"),
                "destination_bytes": mb.destination_total("destination_bytes"),
                "at_destination": mb.total("at_destination"),
                "skipped": mb.total("skipped"),
                "unaccounted": mb.total("unaccounted"),
                "extra_at_destination": mb.total("extra_at_destination"),
                "flag_differences": mb.total("flag_differences"),
                "folders": [
                    {
                        "store": f.store,
                        "source": join(f.source),
                        "destination": join(f.dest),
                        "renamed": f.source != f.dest,
                        "source_messages": f.source_messages,
                        "source_bytes": f.source_bytes,
                        "destination_messages": f.destination_messages,
                        "destination_bytes": f.destination_bytes,
                        "at_destination": f.at_destination,
                        "skipped": f.skipped,
                        "unaccounted": len(f.unaccounted),
                        "extra_at_destination": f.extra_at_destination,
                        "flag_differences": f.flag_difference_count,
                    }
                    for f in mb.folders
                ],
                "excluded": [{"folder": join(p), "reason": r} for p, r in mb.excluded],
                "unaccounted_messages": [
                    {"folder": u.folder, "id": u.id, "message_id": u.message_id, "size": u.size, "reason": u.reason}
                    for f in mb.folders
                    for u in f.unaccounted
                ],
                "skipped_messages": [
                    {"folder": join(f.source), "id": i, "reason": r} for f in mb.folders for i, r in f.skipped_messages
                ],
                "flag_differences_list": [
                    {
                        "folder": d.folder,
                        "id": d.id,
                        "source_flags": " ".join(d.source_flags),
                        "destination_flags": " ".join(d.destination_flags),
                    }
                    for f in mb.folders
                    for d in f.flag_differences
                ],
                "problems": by_mb.get(mb.job, []),
            }
        )
    keys = ("source_messages", "source_bytes", "destination_messages", "at_destination", "skipped", "unaccounted",
            "extra_at_destination", "flag_differences")  # fmt: skip
    totals: dict[str, object] = {k: sum(int(m[k]) for m in mailboxes) for k in keys}
    totals.update(
        mailboxes=len(mailboxes),
        failed_mailboxes=sum(1 for m in mailboxes if m["status"] == "failed"),
        errors=sum(1 for p in probs if p["severity"] == "error"),
        warnings=sum(1 for p in probs if p["severity"] == "warning"),
    )
    return {
        "schema": 1,
        "kind": "verify",
        "plan": result.plan,
        "dry_run": False,
        "generated": now_iso(),
        "migrator": __version__,
        "seconds": round(result.seconds, 3),
        "state_found": result.state_found,
        "exit_code": int(result.exit_code()),
        "totals": totals,
        "estimate": None,
        "mailboxes": mailboxes,
        "problems": probs,
    }


_RANK = {"failed": 0, "unaccounted": 1, "ok": 2}


def verify_table(result: VerifyResult) -> Table:
    """One row per mailbox, trouble first."""
    table = Table(title="Verification (read-only)", title_justify="left")
    for col in ("Mailbox", "Status", "Folders", "Source msgs", "MB", "At destination", "Skipped", "Unaccounted",
                "Extra at dest.", "Flag diffs", "Problem"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("Mailbox", "Status", "Problem") else "right")
    for mb in sorted(result.mailboxes, key=lambda m: (_RANK.get(m.status, 0), -m.total("unaccounted"), m.job)):
        status = {"ok": "[green]ok", "unaccounted": "[red]unaccounted", "failed": "[red]failed"}.get(mb.status)
        table.add_row(
            mb.job,
            status or mb.status,
            str(len(mb.folders)),
            f"{mb.total('source_messages'):,}",
            f"{mb.total('source_bytes') / 1e6:,.1f}",
            f"{mb.total('at_destination'):,}",
            f"{mb.total('skipped'):,}",
            f"{mb.total('unaccounted'):,}",
            f"{mb.total('extra_at_destination'):,}",
            f"{mb.total('flag_differences'):,}",
            f"{mb.error_kind}: {mb.error}" if mb.error else "",
        )
    return table


def print_verify(result: VerifyResult, console: Console) -> None:
    """The table, then every unaccounted message and every flag difference example."""
    console.print(verify_table(result))
    if not result.state_found:
        console.print(
            f"note: no state DB at {result.state_path}: no skip list; messages are matched by identity only",
            markup=False,
            soft_wrap=True,
        )
    for mb in sorted(result.mailboxes, key=lambda m: m.job):
        lines = []
        for f in mb.folders:
            for u in f.unaccounted:
                mid = u.message_id or "(no Message-ID)"
                lines.append(f"unaccounted {u.folder} #{u.id} {mid} ({u.size:,} bytes): {u.reason}")
            if f.flag_difference_count:
                ex = f.flag_differences[0]
                lines.append(
                    f"flags differ on {f.flag_difference_count} message(s) of {join(f.source)}, e.g. #{ex.id}: "
                    f"source {' '.join(ex.source_flags) or '(none)'}, destination "
                    f"{' '.join(ex.destination_flags) or '(none)'}"
                )
        if lines:
            console.print(f"{mb.job}", style="bold", markup=False)
            for line in lines:
                console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def one_line(result: VerifyResult) -> str:
    n = sum(m.total("unaccounted") for m in result.mailboxes)
    failed = sum(1 for m in result.mailboxes if m.status == "failed")
    return (
        f"migrator verify: exit {int(result.exit_code())}: {len(result.mailboxes)} mailbox(es), "
        f"{sum(m.total('source_messages') for m in result.mailboxes):,} source message(s): "
        f"{sum(m.total('at_destination') for m in result.mailboxes):,} at the destination, "
        f"{sum(m.total('skipped') for m in result.mailboxes):,} skipped with a reason, {n:,} unaccounted; "
        f"{failed} mailbox(es) not verified"
    )
