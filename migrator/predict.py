"""Dry-run predictions: the problems a cutover would meet, and how long it would take.

Inputs, all read-only:

* the ``RunStats`` of a dry run: the engine listed every folder, so it knows counts
  and sizes, what is already at the destination, what it would skip and why
  (messages over the destination's size limit, filters), folder renames and
  exclusions, messages without or with duplicate Message-IDs (``RunStats.listing``),
  and which mailboxes could not log in;
* one cheap probe per mailbox (``probe_job``): log in to the destination and every
  source again, read the server's capabilities (UIDPLUS, CONDSTORE, QUOTA,
  APPENDLIMIT) and the destination's quota (GETQUOTAROOT), log out;
* a throughput: given (``--throughput 20msg/s`` or ``5MB/s``, per mailbox) or measured
  from earlier runs in the state DB.

``problems()`` also serves the report of a real run (failed messages, skips with
their reasons, mailbox failures). Nothing here writes anywhere.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from migrator.connectors.base import open_store
from migrator.errors import AuthError, ConnectError, PlanError, TLSError, TransientError
from migrator.folders import join
from migrator.model import Account, MailboxJob
from migrator.state import State
from migrator.stats import MailboxStats, RunStats

log = logging.getLogger("migrator")

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}
OVER_LIMIT = "over the destination's limit"  # march.skip_reason's wording for the destination's size limit
QUOTA_WARN_SHARE = 0.9  # warn when the copy would fill the quota beyond this share
MEASURED_RUNS = 5  # earlier runs averaged for a measured throughput

FAILURE_KINDS: dict[str, str] = {
    "auth": "login",
    "tls": "tls",
    "connect": "connection",
    "quota": "quota",
    "config": "configuration",
    "folder": "folder",
    "guard": "deletion-guard",
    "interrupted": "interrupted",
}


# --------------------------------------------------------------------------- throughput
@dataclass(frozen=True, slots=True)
class Throughput:
    """Speed of ONE mailbox (one connection); mailboxes run ``parallel`` at a time.

    With both rates the slower side wins (an estimate is the larger of the two)."""

    msgs_per_second: float | None = None
    bytes_per_second: float | None = None
    origin: str = ""  # "configured (--throughput 5MB/s)", "measured (3 earlier runs)"

    def seconds(self, msgs: int, nbytes: int) -> float | None:
        est = []
        if self.msgs_per_second:
            est.append(msgs / self.msgs_per_second)
        if self.bytes_per_second:
            est.append(nbytes / self.bytes_per_second)
        return max(est) if est else None

    def describe(self) -> str:
        parts = []
        if self.msgs_per_second:
            parts.append(f"{self.msgs_per_second:,.1f} msg/s")
        if self.bytes_per_second:
            parts.append(f"{self.bytes_per_second / 1e6:,.2f} MB/s")
        return " and ".join(parts) + " per mailbox"


_MSG_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:msgs?|messages?)?\s*/\s*s(?:ec)?", re.IGNORECASE)
_BYTE_RATE = re.compile(r"(\d+(?:\.\d+)?\s*(?:[kmgt]i?)?b)\s*/\s*s(?:ec)?", re.IGNORECASE)


def parse_throughput(text: str) -> Throughput:
    """``"20msg/s"``, ``"20/s"``, ``"5MB/s"``, ``"800 KiB/s"`` or both, comma-separated
    (``"20msg/s,5MB/s"``). Raises ValueError with the expected forms."""
    from migrator.plan import parse_size

    msgs: float | None = None
    nbytes: float | None = None
    for part in (p.strip() for p in text.split(",")):
        if m := _BYTE_RATE.fullmatch(part):
            nbytes = float(parse_size(m.group(1).replace(" ", "")))
        elif m := _MSG_RATE.fullmatch(part):
            msgs = float(m.group(1))
        else:
            raise ValueError(f"invalid throughput {part!r}: expected e.g. 20msg/s, 5MB/s or 20msg/s,5MB/s")
    if not msgs and not nbytes:
        raise ValueError(f"invalid throughput {text!r}: must be more than 0")
    return Throughput(msgs, nbytes, f"configured (--throughput {text})")


def _iso_seconds(start: object, end: object) -> float | None:
    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
    except ValueError:
        return None


def measured_throughput(state_path: Path | None, parallel: int) -> Throughput | None:
    """Per-mailbox speed of the last few real runs recorded in the state DB.

    A run's rate is copied messages (bytes) over its wall time, shared by the
    mailboxes that ran side by side (the mailboxes that copied something in that
    run, at most ``parallel``). Runs shorter than a second are not measurable."""
    if state_path is None or not Path(state_path).exists():
        return None
    state = State.open(state_path, readonly=True)
    try:
        msgs = nbytes = lane_seconds = 0.0
        used = 0
        for run in state.last_runs(50):
            if used >= MEASURED_RUNS:
                break
            if run.get("dry_run") or not run.get("finished") or not run.get("copied"):
                continue
            secs = _iso_seconds(run["started"], run["finished"])
            if not secs or secs < 1:
                continue
            row = state.conn.execute(
                "select count(distinct job) from messages where run_id = ? and status = 'copied'", [run["id"]]
            ).fetchone()
            lanes = max(1, min(int(row[0] or 1), max(parallel, 1)))
            msgs += float(run["copied"])  # type: ignore[arg-type]
            nbytes += float(run.get("bytes") or 0)  # type: ignore[arg-type]
            lane_seconds += secs * lanes
            used += 1
    finally:
        state.close()
    if not used or lane_seconds <= 0:
        return None
    return Throughput(
        msgs / lane_seconds,
        nbytes / lane_seconds if nbytes else None,
        f"measured ({used} earlier run{'s' if used > 1 else ''} in the state DB)",
    )


@dataclass(slots=True)
class Estimate:
    throughput: Throughput | None
    parallel: int
    per_mailbox: dict[str, float | None] = field(default_factory=dict)
    total_seconds: float | None = None


def schedule(durations: Sequence[float], parallel: int) -> float:
    """Wall time of running ``durations`` ``parallel`` at a time, longest first (what the
    engine's pool roughly does: the next mailbox starts when one finishes)."""
    lanes = [0.0] * max(1, min(parallel, len(durations) or 1))
    heapq.heapify(lanes)
    for d in sorted(durations, reverse=True):
        heapq.heappush(lanes, heapq.heappop(lanes) + d)
    return max(lanes)


def estimate(stats: RunStats, jobs: Sequence[MailboxJob], throughput: Throughput | None, parallel: int) -> Estimate:
    """Predicted duration of copying what the dry run found to copy."""
    est = Estimate(throughput, max(1, min(parallel, len(jobs))))  # never more at a time than there are
    if throughput is None:
        est.per_mailbox = {j.id: None for j in jobs}
        return est
    for job in jobs:
        mb = stats.mailboxes[job.id]
        est.per_mailbox[job.id] = throughput.seconds(mb.total("to_copy"), mb.total("bytes_to_copy"))
    known = [s for s in est.per_mailbox.values() if s is not None]
    est.total_seconds = schedule(known, parallel) if known else None
    return est


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if 0 < seconds < 1:
        return "< 1 s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def size_text(n: float | None) -> str:
    """Bytes in decimal units: "512 B", "4.2 KB", "1.5 MB", "2.3 GB"."""
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- probes
@dataclass(frozen=True, slots=True)
class Quota:
    """A quota root as GETQUOTAROOT reports it, in bytes and messages."""

    root: str
    storage_used: int | None = None
    storage_limit: int | None = None
    messages_used: int | None = None
    messages_limit: int | None = None


@dataclass(frozen=True, slots=True)
class StoreProbe:
    label: str  # Account.describe(): no secrets
    role: str  # "source" | "destination"
    server_capabilities: tuple[str, ...] | None = None  # None: not a server with capabilities (local store)
    max_message_bytes: int | None = None
    quota: Quota | None = None
    error: str | None = None
    error_kind: str | None = None  # "auth", "tls", "connect", "config", "error"


@dataclass(frozen=True, slots=True)
class JobProbe:
    destination: StoreProbe
    sources: tuple[StoreProbe, ...]


def _caps_of(store: object) -> tuple[str, ...] | None:
    """The server's advertised capabilities (IMAP ``server_capabilities``), None for a
    store that has none (local stores)."""
    caps = getattr(store, "server_capabilities", None)
    if callable(caps):
        caps = caps()
    if caps is None:
        return None
    return tuple(sorted({(c.decode("ascii", "replace") if isinstance(c, bytes) else str(c)).upper() for c in caps}))


def _quota_of(store: object) -> Quota | None:
    fn = getattr(store, "quota", None)
    return normalise_quota(fn()) if callable(fn) else None


def normalise_quota(value: Any) -> Quota | None:
    """A Quota from what a connector's ``quota()`` returns: None; a Quota; ``(used,
    limit)`` storage bytes (ImapStore); imapclient's ``get_quota_root`` answer
    ``(MailboxQuotaRoots, [Quota(root, resource, usage, limit)])`` or just that list
    (IMAP STORAGE is in units of 1024 octets); or a mapping with storage_used /
    storage_limit (bytes), messages_used / messages_limit."""
    if value is None or isinstance(value, Quota):
        return value
    if isinstance(value, dict):
        return Quota(
            root=str(value.get("root", "")),
            **{k: (int(value[k]) if value.get(k) is not None else None) for k in _QUOTA_FIELDS},
        )
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(x, int) for x in value):
        return Quota(root="", storage_used=value[0], storage_limit=value[1])
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], list):
        value = value[1]
    if not isinstance(value, list | tuple):
        return None
    root = ""
    out: dict[str, int | None] = dict.fromkeys(_QUOTA_FIELDS)
    for item in value:
        resource = str(getattr(item, "resource", "")).upper()
        root = root or str(getattr(item, "quota_root", ""))
        usage, limit = getattr(item, "usage", None), getattr(item, "limit", None)
        if resource == "STORAGE":
            out["storage_used"] = int(usage) * 1024 if usage is not None else None
            out["storage_limit"] = int(limit) * 1024 if limit is not None else None
        elif resource == "MESSAGE":
            out["messages_used"] = int(usage) if usage is not None else None
            out["messages_limit"] = int(limit) if limit is not None else None
    if all(v is None for v in out.values()):
        return None
    return Quota(root=root, **out)


_QUOTA_FIELDS = ("storage_used", "storage_limit", "messages_used", "messages_limit")


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, TLSError):
        return "tls"
    if isinstance(exc, ConnectError | TransientError):
        return "connect"
    if isinstance(exc, PlanError):
        return "config"
    return "error"


def probe_store(account: Account, role: Literal["source", "destination"]) -> StoreProbe:
    """Log in, read capabilities and (destination) quota, log out. Never raises: the
    probe carries the error. Only read commands are sent. Local stores (no host) are
    not opened: they have nothing to tell, and opening must not create them."""
    label = account.describe()
    if account.host is None:
        return StoreProbe(label, role)
    try:
        store = open_store(account, role)
    except Exception as exc:  # the probe reports any failure instead of ending the dry run
        return StoreProbe(label, role, error=str(exc) or type(exc).__name__, error_kind=_error_kind(exc))
    try:
        caps = _caps_of(store)
        quota = None
        quota_error = None
        if role == "destination":
            try:
                quota = _quota_of(store)
            except Exception as exc:  # an odd GETQUOTAROOT answer must not hide the rest
                quota_error = f"quota unknown: {exc}"
        return StoreProbe(
            label,
            role,
            server_capabilities=caps,
            max_message_bytes=store.capabilities.max_message_bytes,
            quota=quota,
            error=quota_error,
            error_kind="error" if quota_error else None,
        )
    finally:
        try:
            store.close()
        except Exception:  # logging out of a broken connection may fail; nothing to save
            log.debug("close failed", exc_info=True)


def probe_job(job: MailboxJob) -> JobProbe:
    return JobProbe(probe_store(job.destination, "destination"), tuple(probe_store(a, "source") for a in job.sources))


def probe_jobs(jobs: Sequence[MailboxJob], parallel: int) -> dict[str, JobProbe]:
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="probe") as pool:
        return dict(zip((j.id for j in jobs), pool.map(probe_job, jobs), strict=True))


NO_PROBE_KINDS = frozenset({"auth", "tls", "connect", "config"})  # the dry run already could not log in


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True, slots=True)
class Problem:
    mailbox: str
    severity: Severity
    kind: str  # "login", "too-large", "folder-name", "duplicate-message-id", "quota", "capability", ...
    message: str
    folder: str = ""
    count: int = 1


def problem_sort_key(p: Problem) -> tuple[int, str, str, str]:
    return (SEVERITY_ORDER[p.severity], p.mailbox, p.folder, p.kind)


def _mb_text(n: float) -> str:
    return size_text(n)


def _mailbox_failure(mb: MailboxStats) -> list[Problem]:
    if mb.status != "failed" or not mb.error:
        return []
    kind = FAILURE_KINDS.get(mb.error_kind or "", "error")
    prefix = "login failed: " if kind == "login" else ""
    return [Problem(mb.job, "error", kind, prefix + mb.error)]


_LIMIT_RE = re.compile(r"message of (\d+) bytes is over the destination's limit of (\d+)")
_NUMBERS = re.compile(r"\d[\d.,:+T-]*")


def _skip_problems(mb: MailboxStats, dry_run: bool) -> list[Problem]:
    by_folder: dict[tuple[str, str], list[str]] = {}
    for path, _msg_id, reason in mb.skipped_messages:
        kind = "too-large" if OVER_LIMIT in reason else "skipped"
        key = _NUMBERS.sub("N", reason) if kind == "skipped" else ""
        by_folder.setdefault((join(path), kind + "\0" + key), []).append(reason)
    out = []
    verb = "will be skipped" if dry_run else "skipped"
    for (folder, key), reasons in sorted(by_folder.items()):
        kind = key.split("\0", 1)[0]
        n = len(reasons)
        if kind == "too-large":
            sizes = [(int(m.group(1)), int(m.group(2))) for r in reasons if (m := _LIMIT_RE.search(r))]
            largest = max((s for s, _ in sizes), default=0)
            limit = sizes[0][1] if sizes else 0
            msg = (
                f"{n} message(s) over the destination's size limit of {limit:,} bytes {verb} "
                f"(largest {largest:,} bytes)"
            )
            out.append(Problem(mb.job, "warning", "too-large", msg, folder, n))
        else:
            out.append(Problem(mb.job, "info", "skipped", f"{n} message(s) {verb}: {reasons[0]}", folder, n))
    return out


def note_kind(note: str) -> tuple[str, Severity]:
    """Classify a folder note (folders.py renames, the engine's message changes)."""
    if note.startswith("message "):
        return "message-changed", "warning"  # the destination changes a message to accept it
    if "cannot hold" in note or ("keeps" in note and "for itself" in note):
        return "folder-name", "warning"  # a name the destination cannot hold or reserves
    return "folder-mapping", "info"  # special-use mapping, merges, rules


def _folder_problems(mb: MailboxStats) -> list[Problem]:
    out = []
    for f in mb.folders:
        src, dst = join(f.source), join(f.dest)
        for note in f.notes:
            kind, severity = note_kind(note)
            text = note if kind == "message-changed" else f"{src!r} -> {dst!r}: {note}"
            out.append(Problem(mb.job, severity, kind, text, src))
        if f.no_message_id:
            out.append(
                Problem(
                    mb.job,
                    "info",
                    "no-message-id",
                    f"{f.no_message_id} message(s) without Message-ID: recognised at the destination "
                    "by a SHA-256 of their content (fetched to compare)",
                    src,
                    f.no_message_id,
                )
            )
        if f.duplicate_message_ids:
            shown = ", ".join(f"{mid} (x{n})" for mid, n in f.duplicate_examples)
            out.append(
                Problem(
                    mb.job,
                    "warning",
                    "duplicate-message-id",
                    f"{f.duplicate_message_ids} message(s) share a Message-ID with another message of this folder; "
                    "each is copied (a destination that deduplicates by Message-ID may keep only one): " + shown,
                    src,
                    f.duplicate_message_ids,
                )
            )
    for path, reason in mb.excluded:
        out.append(Problem(mb.job, "info", "folder-excluded", f"not copied: {reason}", join(path)))
    return out


def _probe_problems(mb: MailboxStats, probe: JobProbe | None, dry_run: bool) -> list[Problem]:
    if probe is None:
        return []
    out = []
    failed = mb.status == "failed"
    for p in (probe.destination, *probe.sources):
        if p.error and not (failed and p.error_kind in ("auth", "tls", "connect", "config")):
            sev: Severity = "error" if p.error_kind in ("auth", "tls", "connect", "config") else "warning"
            kind = FAILURE_KINDS.get(p.error_kind or "", "probe")
            out.append(Problem(mb.job, sev, kind, f"{p.role} {p.label}: {p.error}"))
    dst = probe.destination
    caps = dst.server_capabilities
    if caps is not None and "UIDPLUS" not in caps:
        out.append(
            Problem(
                mb.job,
                "warning",
                "capability",
                f"destination {dst.label} has no UIDPLUS: no ids for appended messages; verify and crash "
                "recovery find them by Message-ID and size (slower)",
            )
        )
    for src in probe.sources:
        if src.server_capabilities is not None and "CONDSTORE" not in src.server_capabilities:
            out.append(
                Problem(
                    mb.job,
                    "warning",
                    "capability",
                    f"source {src.label} has no CONDSTORE: every re-run lists every folder in full (slower "
                    "incremental syncs before the cutover)",
                )
            )
    q = dst.quota
    need = mb.total("bytes_to_copy") if dry_run else 0
    if q is not None and q.storage_limit:
        used = q.storage_used or 0
        free = max(q.storage_limit - used, 0)
        root = f" {q.root!r}" if q.root else ""
        where = f"quota{root}: {_mb_text(used)} used of {_mb_text(q.storage_limit)}"
        if need > free:
            out.append(
                Problem(mb.job, "error", "quota", f"needs {_mb_text(need)} but only {_mb_text(free)} free ({where})")
            )
        elif used + need > QUOTA_WARN_SHARE * q.storage_limit:
            out.append(
                Problem(
                    mb.job,
                    "warning",
                    "quota",
                    f"after the copy the mailbox is {(used + need) / q.storage_limit:.0%} full ({where})",
                )
            )
    if q is not None and q.messages_limit and dry_run:
        free_msgs = max(q.messages_limit - (q.messages_used or 0), 0)
        if mb.total("to_copy") > free_msgs:
            out.append(
                Problem(
                    mb.job,
                    "error",
                    "quota",
                    f"needs room for {mb.total('to_copy'):,} messages but the quota allows {free_msgs:,} more",
                )
            )
    return out


def problems(
    stats: RunStats,
    jobs: Iterable[MailboxJob],
    probes: dict[str, JobProbe] | None = None,
    *,
    dry_run: bool,
) -> list[Problem]:
    """Every problem of every mailbox, most serious first (error, warning, info)."""
    out: list[Problem] = []
    for job in jobs:
        mb = stats.mailboxes[job.id]
        out += _mailbox_failure(mb)
        for path, msg_id, reason in mb.failed_messages:
            out.append(Problem(mb.job, "error", "failed-message", f"#{msg_id}: {reason}", join(path)))
        out += _skip_problems(mb, dry_run)
        out += _folder_problems(mb)
        out += _probe_problems(mb, (probes or {}).get(job.id), dry_run)
    return sorted(out, key=problem_sort_key)


# --------------------------------------------------------------------------- all of it
@dataclass(slots=True)
class Prediction:
    estimate: Estimate
    probes: dict[str, JobProbe]
    problems: list[Problem]


def predict(
    jobs: Sequence[MailboxJob],
    stats: RunStats,
    *,
    state_path: Path | None,
    throughput: Throughput | None = None,
    parallel: int = 1,
    probe: bool = True,
) -> Prediction:
    """Probes, problems and the estimate of a finished dry run. ``throughput``
    (configured) wins over the one measured from the state DB."""
    # a mailbox that could not log in is not tried again (no second failed login: lockouts)
    todo = [j for j in jobs if stats.mailboxes[j.id].error_kind not in NO_PROBE_KINDS]
    probes = probe_jobs(todo, parallel) if probe else {}
    speed = throughput or measured_throughput(state_path, parallel)
    return Prediction(
        estimate(stats, jobs, speed, parallel),
        probes,
        problems(stats, jobs, probes, dry_run=True),
    )
