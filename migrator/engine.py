"""Scheduling: mailboxes in parallel, sources and folders in order, retries with reconnects.

For every mailbox job and each of its sources: open the stores, map folders, then
for each folder march the source listing against the checkpoints, match what is
still to copy against the destination when that can matter (first visit,
unconfirmed sends after a crash, a UIDVALIDITY change), copy the rest
(transfer.FolderCopy), and then apply the mode: mirror flag changes and deletions
(behind the deletion guard), or delete at the source what was confirmed (move,
POP3 ``after_copy: delete``).

A folder's sync is idempotent, so the retry policy is simple: on a retryable
error, reconnect and sync the folder again; the checkpoints make it resume.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception

from migrator.connectors.base import Destination, ListingPage, Source, open_store
from migrator.errors import (
    AuthError,
    ConnectError,
    FolderError,
    MigratorError,
    PlanError,
    QuotaError,
    TLSError,
    TransientError,
    is_retryable,
)
from migrator.folders import FolderMap, FolderPlan, join, map_folders
from migrator.march import altered_candidates, hash_candidates, march, match_altered, match_existing
from migrator.model import SEEN, Account, FolderInfo, FolderPath, MailboxJob, MessageMeta
from migrator.ratelimit import AdaptiveLimit, Budgets, ByteBudget, Limits
from migrator.state import DoneRow, FolderRef, State, folder_key
from migrator.stats import AlteredMessage, FolderStats, RunStats
from migrator.transfer import DryRunDestination, FolderCopy, content_hash, preview_adaptations

log = logging.getLogger("migrator")

DEFAULT_MAX_CONNECTIONS = 8  # per endpoint, across all mailboxes of a run
# new messages in a mailbox's changed folders that one connection pair copies alone: a
# connection pair costs the server two logins (Dovecot 2.3: 13 ms of CPU each), about
# what copying 100 messages costs it, and when several mailboxes run at once extra
# pairs add no parallelism (20 mailboxes of 500 at 4 at once: 3.8 s with one pair each,
# 4.3 s with two); one mailbox of 1,000 or more is copied faster with folder workers
FEW_NEW = 1000


def hashes(store: Source, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> dict[str, str]:
    """Content hashes (transfer.content_hash) of ``msgs``, fetched from ``store``."""
    return {m.id: content_hash(raw) for m, raw in store.fetch(folder, msgs)} if msgs else {}


def link_success(link: Link) -> Callable[[], None]:
    def ok() -> None:
        link.progress += 1
        link.run.progress += 1
        for limit in link._slots:
            limit.succeeded()

    return ok


@dataclass(frozen=True, slots=True)
class RunOptions:
    dry_run: bool = False
    parallel_mailboxes: int | None = None  # None: the plan's
    command: str = "run"
    max_wait: float = 30.0  # seconds between retries at most
    force_delete: bool = False  # mirror: override the deletion guard for this run
    max_connections: int | None = None  # per endpoint, across all mailboxes (None: the endpoint's or 8)
    bytes_per_second: float | None = None  # --bwlimit
    messages_per_second: float | None = None  # --max-messages-per-second
    max_bytes_in_flight: int = 64 * 1024 * 1024  # message bytes held in memory at once, all workers


class DeletionRefused(MigratorError):
    """The deletion guard: a mirror run would delete too large a share."""


class RetryBudget:
    """Retries counted between moments of progress: a big folder on a flaky link that
    keeps confirming batches is not given up after ``retries`` faults in total, only
    after ``retries`` faults in a row without anything confirmed; the wait restarts
    small after progress too. A server's back-off hint always wins."""

    def __init__(self, retries: int, max_wait: float, progress: Callable[[], int]):
        self.retries = retries
        self.max_wait = max_wait
        self.progress = progress
        self.mark = progress()
        self.stalls = 0

    def stop(self, rs: RetryCallState) -> bool:
        now = self.progress()
        if now != self.mark:
            self.mark, self.stalls = now, 0
        self.stalls += 1
        return self.stalls > self.retries

    def wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        hint = getattr(exc, "backoff_seconds", None)
        if hint:
            return float(hint)
        return min(self.max_wait, 0.5 * 2 ** (self.stalls - 1))


PER_MAILBOX_LIMITS = {"exchange-online": 4}  # services that limit connections per mailbox, not per server


def endpoint_key(account: Account) -> str:
    """What a connection budget is counted against: the server, the mailbox for
    services that limit per mailbox (Exchange Online), or the local path."""
    if account.type in PER_MAILBOX_LIMITS:
        return f"{account.type}://{account.user}@{account.host}:{account.port}"
    if account.host:
        return f"{account.type}://{account.host}:{account.port}"
    return f"{account.type}:{account.path}"


def connection_cap(account: Account) -> int | None:
    """The endpoint's own connection cap: its plan option, else the service's default."""
    cap = account.options.get("max_connections")
    return int(cap) if cap else PER_MAILBOX_LIMITS.get(account.type)


@dataclass(slots=True)
class Shared:
    """What every mailbox of a run shares: connection budgets, rate limits, memory."""

    budgets: Budgets
    limits: Limits
    memory: ByteBudget


class Link:
    """One worker's connections: a source and a destination store, each holding a slot
    of its endpoint's connection budget while open."""

    def __init__(self, run: MailboxRun, account: Account):
        self.run = run
        self.account = account
        self.src: Source | None = None
        self.dst: Destination | None = None
        self._slots: list[AdaptiveLimit] = []
        self.progress = 0  # confirmed batches; a retry after progress starts its budget afresh

    def _reserve(self) -> None:
        """Take the connection slots of both sides at once, endpoints in a fixed order."""
        if self._slots:
            return
        budgets = self.run.shared.budgets
        need: dict[str, int] = {}
        maxima: dict[str, int | None] = {}
        for account in (self.account, self.run.job.destination):
            key = endpoint_key(account)
            need[key] = need.get(key, 0) + 1
            maxima[key] = connection_cap(account)
        for key in sorted(need):
            limit = budgets.for_key(key, maxima[key])
            limit.acquire(self.run.cancel, need[key])
            self._slots.extend([limit] * need[key])

    def connect(self) -> tuple[Source, Destination]:
        self._reserve()
        if self.src is None:
            self.src = open_store(self.account, "source")
        if self.dst is None:
            dst = open_store(self.run.job.destination, "destination")
            self.dst = DryRunDestination(dst) if self.run.options.dry_run else dst  # type: ignore[assignment]
        assert self.dst is not None
        return self.src, self.dst

    def close_source(self) -> None:
        """Log out of the source (POP3: QUIT, when its deletions take effect)."""
        if self.src is not None:
            src, self.src = self.src, None
            src.close()

    def disconnect(self) -> None:
        for store in (self.src, self.dst):
            if store is not None:
                try:
                    store.close()
                except Exception:  # closing a broken connection may fail; nothing to save
                    log.debug("close failed", exc_info=True)
        self.src = self.dst = None
        for limit in self._slots:
            limit.release()
        self._slots.clear()

    def throttled(self, pause: float | None = None) -> None:
        for limit in self._slots:
            limit.throttled(pause)

    def wait_if_paused(self) -> None:
        """Before sending: honour a back-off any connection to these endpoints was given."""
        for limit in set(self._slots):
            limit.wait_if_paused(self.run.cancel)


class MailboxRun:
    """One mailbox job: its sources in order, each synced by one or more workers."""

    def __init__(
        self,
        job: MailboxJob,
        state: State,
        stats: RunStats,
        run_id: int,
        options: RunOptions,
        cancel: threading.Event,
        shared: Shared,
    ):
        self.job = job
        self.state = state
        self.stats = stats
        self.run_id = run_id
        self.options = options
        self.cancel = cancel
        self.shared = shared
        self.account: Account = job.source  # the source being worked on
        self.folder_errors: list[str] = []
        self.guard_errors: list[str] = []
        self._lock = threading.Lock()
        self.progress = 0  # batches confirmed by any worker (retries are counted between progress)

    # ------------------------------------------------------------------ retries
    def _retrying(self, link: Link) -> Retrying:
        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.warning("%s: %s; reconnecting (attempt %d)", self.job.id, exc, rs.attempt_number + 1)
            # throttled or failing: fewer connections to that server (AIMD); a back-off hint
            # holds back every connection to it, not only this one
            link.throttled(getattr(exc, "backoff_seconds", None))
            link.disconnect()

        # progress of the whole mailbox counts: a fault can hit whichever worker's connection
        budget = RetryBudget(self.job.options.retries, self.options.max_wait, lambda: self.progress)
        return Retrying(
            retry=retry_if_exception(is_retryable),
            stop=budget.stop,
            wait=budget.wait,
            before_sleep=before_sleep,
            reraise=True,
        )

    def _retry(self, link: Link, fn: Callable[[], Any]) -> Any:
        for attempt in self._retrying(link):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ the job
    def run(self) -> None:
        jid = self.job.id
        self.stats.start(jid)
        log.info("%s: started", jid, extra={"event": "mailbox_started", "mailbox": jid})
        try:
            for account in self.job.sources:
                self.account = account
                self.sync_source(account)
            problems = self.folder_errors + self.guard_errors
            if problems:
                self.stats.finish(jid, "failed", "; ".join(problems), "guard" if self.guard_errors else "folder")
            else:
                self.stats.finish(jid, "ok")
            self._log_finished()
        except KeyboardInterrupt:
            self.stats.finish(jid, "interrupted", "interrupted", "interrupted")
            raise
        except AuthError as exc:
            self._fail("auth", exc)
        except TLSError as exc:
            self._fail("tls", exc)
        except ConnectError as exc:
            self._fail("connect", exc)
        except QuotaError as exc:
            self._fail("quota", exc)
        except PlanError as exc:
            self._fail("config", exc)
        except TransientError as exc:
            self._fail("connect", exc)
        except MigratorError as exc:
            self._fail("error", exc)
        except Exception as exc:  # a bug or an unexpected server answer: this mailbox fails, others go on
            log.exception("%s: unexpected error", jid)
            self._fail("error", exc)

    def _fail(self, kind: str, exc: BaseException) -> None:
        msg = str(exc) or type(exc).__name__
        self.stats.finish(self.job.id, "failed", msg, kind)
        self.state.add_error(self.run_id, self.job.id, None, None, kind, msg)
        log.error("%s: %s", self.job.id, msg, extra={"event": "mailbox_failed", "mailbox": self.job.id, "kind": kind})

    def _log_finished(self) -> None:
        mb = self.stats.mailboxes[self.job.id]
        counts = {c: mb.total(c) for c in ("copied", "matched", "done", "skipped", "failed", "bytes")}
        log.info(
            "%s: %s: copied %d, already there %d, skipped %d, failed %d",
            self.job.id,
            mb.status,
            counts["copied"],
            counts["done"] + counts["matched"],
            counts["skipped"],
            counts["failed"],
            extra={"event": "mailbox_finished", "mailbox": self.job.id, "status": mb.status, **counts},
        )

    def _mapping(self, link: Link) -> FolderPlan:
        def listing() -> FolderPlan:
            src, dst = link.connect()
            src_folders = src.list_folders()
            dst_folders = dst.list_folders()
            if not src.capabilities.folders:  # POP3: one folder, into the configured one
                target = tuple(p for p in self.job.options.pop3_folder.split("/") if p) or ("INBOX",)
                return FolderPlan(maps=[FolderMap(f, target) for f in src_folders if f.selectable])
            return map_folders(src_folders, dst_folders, self.job.options.folders, dst.capabilities)

        result: FolderPlan = self._retry(link, listing)
        return result

    def sync_source(self, account: Account) -> None:
        """Sync every folder of one source: the first worker lists and maps the
        folders, then up to ``folder_workers`` workers (each with its own pair of
        connections) take folders from a shared queue, biggest work first."""
        jid, label = self.job.id, account.describe()
        first = Link(self, account)
        try:
            plan = self._mapping(first)
            for ex in plan.excluded:
                self.stats.excluded(jid, ex.source.path, ex.reason)
            assert first.src is not None
            can_parallel = first.src.capabilities.folders
            quiet, busy, small = self._known_unchanged(first.src, label, plan.maps)
            # extra connections only for folders that may have work: an unchanged mailbox
            # is visited by the first link alone, from the data its listing fetched, and
            # so is one whose changes are known to be few (a login costs the server more
            # than copying a handful of messages)
            workers = max(1, min(self.job.options.folder_workers if can_parallel else 1, len(busy)))
            if small:
                workers = 1
            todo: queue.SimpleQueue[FolderMap] = queue.SimpleQueue()
            for fm in busy:
                todo.put(fm)
            stop = threading.Event()
            fatal: list[BaseException] = []

            def work(link: Link, own: Sequence[FolderMap] = ()) -> None:
                try:
                    mine = iter(own)
                    while not stop.is_set():
                        if self.cancel.is_set():
                            raise KeyboardInterrupt
                        fm = next(mine, None)
                        if fm is None:
                            try:
                                fm = todo.get_nowait()
                            except queue.Empty:
                                return
                        self._sync_one(link, fm, label)
                except BaseException as exc:  # fatal for the mailbox: stop the other workers
                    stop.set()
                    with self._lock:
                        fatal.append(exc)
                finally:
                    # never wait for other workers while holding connection slots: they may need them
                    link.disconnect()

            threads = [
                threading.Thread(target=work, args=(Link(self, account),), name=f"{jid}-folders-{i}", daemon=True)
                for i in range(1, workers)
            ]
            for t in threads:
                t.start()
            work(first, quiet)
            for t in threads:
                t.join()
            if fatal:
                interrupts = [e for e in fatal if isinstance(e, KeyboardInterrupt)]
                raise interrupts[0] if interrupts else fatal[0]
            if self.job.options.mode == "mirror" and self.job.options.delete:
                mapped = {fm.source.path for fm in plan.maps} | {path for path, _ in plan_excluded(plan)}
                try:
                    self._retry(first, lambda: self._mirror_deleted_folders(first, label, mapped, plan))
                except DeletionRefused as exc:
                    self.guard_errors.append(str(exc))
                    self.state.add_error(self.run_id, jid, None, None, "guard", str(exc))
            first.close_source()
        finally:
            first.disconnect()

    def _known_unchanged(
        self, src: Source | None, label: str, maps: Sequence[FolderMap]
    ) -> tuple[list[FolderMap], list[FolderMap], bool]:
        """``maps`` split into the folders the source already knows unchanged since their
        stored cursor (``Source.known_unchanged``, no round trip) and the rest; and
        whether the rest are known to hold few new messages (``Source.new_at_most``:
        fewer than ``FEW_NEW`` in all)."""
        check = getattr(src, "known_unchanged", None)
        if check is None or self.options.dry_run:
            return [], list(maps), False
        bound = getattr(src, "new_at_most", None)
        cursors = self.state.cursors(self.job.id, label)
        quiet: list[FolderMap] = []
        busy: list[FolderMap] = []
        new = 0
        for fm in maps:
            cursor = cursors.get(folder_key(fm.source.path))
            if check(fm.source, cursor):
                quiet.append(fm)
                continue
            busy.append(fm)
            most = bound(fm.source, cursor) if bound is not None else None
            new = FEW_NEW if most is None else new + most
        return quiet, busy, new < FEW_NEW

    def _sync_one(self, link: Link, fm: FolderMap, label: str) -> None:
        jid = self.job.id
        try:
            self._retry(link, lambda: self.sync_folder(link, fm, label))
        except (FolderError, DeletionRefused) as exc:
            with self._lock:
                target = self.guard_errors if isinstance(exc, DeletionRefused) else self.folder_errors
                target.append(f"{join(fm.source.path)}: {exc}")
            self.state.add_error(self.run_id, jid, fm.source.path, None, "folder", str(exc))
            log.error("%s: folder %s: %s", jid, join(fm.source.path), exc)

    # ------------------------------------------------------------------ one folder
    def _pages(self, src: Source, folder: FolderInfo, cursor: str | None) -> Iterator[ListingPage]:
        if src.capabilities.incremental:
            yield from src.list_pages(folder, cursor)  # type: ignore[attr-defined]
        else:
            yield ListingPage(src.list_messages(folder), cursor=None, complete=True)

    def sync_folder(self, link: Link, fm: FolderMap, label: str) -> None:
        src, dst = link.connect()
        jid, state, opts = self.job.id, self.state, self.job.options
        src_folder = fm.source
        ref = FolderRef(jid, label, src_folder.path, src_folder.validity, fm.dest_path)
        fstats = self.stats.folder(jid, label, src_folder.path, fm.dest_path, fm.notes)
        dst_folder = dst.ensure_folder(fm.dest_path, fm.special_use)
        fs = state.folder_state(ref, ids=False)  # the ids are read when a page has messages
        ids_read = not fs.known or bool(fs.pending or fs.failed)
        validity_changed = fs.known and fs.validity != src_folder.validity
        if validity_changed:
            log.warning("%s: %s: UIDVALIDITY changed; re-matching against the destination", jid, join(ref.path))
            ids_read = True  # the old ids mean nothing now
        state.set_folder(ref)
        done = frozenset() if validity_changed else fs.done
        pending = frozenset() if validity_changed else fs.pending
        reconciled = fs.reconciled and not validity_changed
        # unconfirmed sends (a crash) and failed messages need the whole listing again:
        # an incremental listing would not show them, being unchanged at the source
        cursor = None if (validity_changed or fs.pending or fs.failed or self.options.dry_run) else fs.cursor
        # (a dry run reports whole folders, so it lists them completely too)
        # a retry lists again: what an earlier attempt of this run copied or found at the
        # destination is "done" now, and stays counted as copied / matched, not twice
        copied_before = copied_at_start = fstats.copied + fstats.matched
        seen_done = 0  # listed messages already at the destination
        self.stats.set(jid, fstats, listed=0, done=0, skipped=0, to_copy=0, bytes_to_copy=0)
        listed_ids: set[str] = set()
        deferred_cursor: tuple[str | None, ...] = ()  # a cursor past deletions not yet applied
        complete = False
        vanished: list[str] = []
        mirror = opts.mode == "mirror"
        # mirror: what the destination holds of this folder, read once something is listed
        # or vanished (an unchanged folder never needs it)
        done_rows: dict[str, DoneRow] = {}
        rows_read = not mirror or validity_changed
        extra = frozenset({SEEN}) if (not src.capabilities.flags and opts.pop3_seen) else frozenset()
        # a destination with a watermark (uid_mark/list_since) shows writes by others
        watch = not self.options.dry_run and hasattr(dst, "uid_mark") and hasattr(dst, "list_since")
        for page in self._pages(src, src_folder, cursor):
            if page.messages and not ids_read:  # (nothing pending or failed: see folder_state)
                if page.complete:
                    fs, ids_read = state.folder_state(ref), True
                    done, pending = fs.done, fs.pending
                else:  # an incremental page: look up just its ids
                    done = state.done_among(ref, [x.id for x in page.messages])
            complete = complete or page.complete
            if not rows_read and (page.messages or page.vanished or complete):
                done_rows, rows_read = state.done_rows(ref), True
            listed_ids.update(m.id for m in page.messages)
            self.stats.listing(jid, fstats, page.messages)  # sizes, Message-ID problems for reports
            vanished.extend(page.vanished)
            m = march(page.messages, done, pending, opts.filters, dst.capabilities)
            if m.skipped:
                state.mark_skipped(ref, m.skipped, self.run_id)
                for meta, reason in m.skipped:
                    self.stats.skipped_message(jid, src_folder.path, meta.id, reason)
            todo = m.to_copy
            matched: list[tuple[MessageMeta, str]] = []
            mark_now: tuple[int, int] | None = None  # the destination folder's mark before this page's copy
            stored_ids: list[str | None] = []
            # look at the destination first: on a folder's first visit, after unconfirmed
            # sends, and when most ids of a complete listing are new although the folder
            # was copied before (a source that renumbered its messages: POP3 UIDLs, a
            # restored mailbox; an incremental page holds only what is new or changed)
            renumbered = page.complete and bool(done) and len(todo) > max(10, len(page.messages) // 2)
            created = getattr(dst, "created_empty", None)
            if todo and not m.pending and created is not None and created(dst_folder):
                pass  # this connection created the folder and nothing was sent yet: nothing is there
            elif todo and (not reconciled or m.pending or renumbered):
                matched, todo = self._match_destination(src, dst, todo, (src_folder, dst_folder), ref)
            elif todo and watch:
                mark_now = dst.uid_mark(dst_folder)  # type: ignore[attr-defined]
                matched, todo = self._match_foreign(src, dst, todo, (src_folder, dst_folder), ref, mark_now)
            seen_done += len(m.done)
            already = max(len(m.done) - copied_before, 0)
            copied_before = max(copied_before - len(m.done), 0)
            self.stats.add(
                jid,
                fstats,
                listed=len(page.messages),
                done=already,
                skipped=len(m.skipped),
                matched=len(matched),
                to_copy=len(todo),
                bytes_to_copy=sum(x.size for x in todo),
            )
            if mirror and m.done:
                self._mirror_flags(dst, dst_folder, ref, fstats, m.done, done_rows, extra)
            if not self.options.dry_run and todo:
                FolderCopy(
                    ref=ref,
                    src=src,
                    dst=dst,
                    src_folder=src_folder,
                    dst_folder=dst_folder,
                    state=state,
                    run_id=self.run_id,
                    batch_bytes=opts.batch_bytes,
                    batch_messages=opts.batch_messages,
                    on_copied=lambda n, b: self.stats.add(jid, fstats, copied=n, bytes=b),
                    on_failed=lambda meta, reason: self._message_failed(fstats, src_folder, meta, reason),
                    on_vanished=lambda meta: self._vanished(fstats, src_folder, meta),
                    cancel=self.cancel,
                    extra_flags=extra,
                    on_changed=lambda meta, note: self._changed(fstats, src_folder, meta, note),
                    on_altered=lambda entry: self._altered(fstats, entry),
                    limits=self.shared.limits,
                    memory=self.shared.memory,
                    on_batch=link_success(link),
                    before_send=link.wait_if_paused,
                    on_stored=stored_ids.extend,
                ).run(todo)
            elif self.options.dry_run and todo and dst.capabilities.adapts_messages:
                preview_adaptations(
                    src,
                    dst,
                    src_folder,
                    todo,
                    opts.batch_bytes,
                    opts.batch_messages,
                    lambda meta, note: self._changed(fstats, src_folder, meta, note),
                )
            marking = watch and bool(todo or matched)  # what this job leaves there: the next run's mark
            mark = self._mark_after(dst, dst_folder, mark_now, stored_ids) if marking else None
            with state.transaction():  # the page's bookkeeping in one commit
                if marking:
                    state.set_dst_mark(jid, ref.dst, mark)
                if not self.options.dry_run:
                    if not reconciled:
                        state.set_reconciled(ref)
                        reconciled = True
                    if src.capabilities.incremental:
                        if mirror and opts.delete and (vanished or complete):
                            deferred_cursor = (page.cursor,)  # saved once the deletions are done
                        elif page.cursor != fs.cursor or validity_changed:
                            state.set_cursor(ref, page.cursor)
        if fs.known and not validity_changed and not complete:
            # an incremental visit lists only what changed; the rest is already there
            rest = max(fs.n_done - seen_done - copied_at_start, 0)
            self.stats.add(jid, fstats, listed=rest, done=rest)
        if mirror and opts.delete:
            gone = (
                [i for i in vanished if i in done_rows]
                if not complete
                else [i for i in done_rows if i not in listed_ids]
            )
            self._mirror_deletions(dst, dst_folder, ref, fstats, gone, len(done_rows))
        if deferred_cursor and not self.options.dry_run:
            state.set_cursor(ref, deferred_cursor[0])
        if opts.mode == "move" or opts.after_copy == "delete":
            self._delete_at_source(link, src, src_folder, ref, fstats)

    # ------------------------------------------------------------------ matching
    @staticmethod
    def _mark_after(
        dst: Destination, folder: FolderInfo, before: tuple[int, int] | None, stored: Sequence[str | None]
    ) -> tuple[int, int] | None:
        """The destination folder's mark after this job wrote ``stored`` (ids) into it:
        from the mark before and the ids the destination gave, or from what its last
        write answered (``written_mark``: APPENDUID's UIDVALIDITY and UIDs), with no
        round trip; else one STATUS."""
        exact = all(i is not None and i.isdigit() for i in stored)
        if before is not None and exact:
            return before[0], max([before[1], *(int(i) + 1 for i in stored if i is not None)])
        written = getattr(dst, "written_mark", None)
        mark = written(folder) if written is not None and exact and stored else None
        if mark is not None and mark[1] > max(int(i) for i in stored if i is not None):
            return mark  # type: ignore[no-any-return]
        return dst.uid_mark(folder)  # type: ignore[attr-defined,no-any-return]

    def _match_foreign(
        self, src: Source, dst: Destination, todo: list[MessageMeta], folders: tuple[FolderInfo, FolderInfo],
        ref: FolderRef, now: tuple[int, int] | None,
    ) -> tuple[list[tuple[MessageMeta, str]], list[MessageMeta]]:  # fmt: skip
        """A folder this job reconciled before, with new messages to copy: did anyone
        else write into the destination folder since this job last did (another job or
        plan, ``migrator copy`` by hand, a state DB restored from a backup)? One STATUS
        tells (``now``, from ``Destination.uid_mark``); if so, ``todo`` is matched against what was
        stored since (or against the whole folder when the mark is unknown or its
        UIDVALIDITY changed), so nothing is copied twice."""
        mark = self.state.dst_mark(ref.job, ref.dst)
        if now is None or now == mark:
            return [], todo
        if mark is None or mark[0] != now[0]:
            log.info("%s: %s: no mark of the destination folder; matching against it", ref.job, join(ref.dst))
            return self._match_destination(src, dst, todo, folders, ref)
        log.info("%s: %s: written by someone else since the last run; matching", ref.job, join(ref.dst))
        since = dst.list_since(folders[1], mark[1])  # type: ignore[attr-defined]
        return self._match_destination(src, dst, todo, folders, ref, listed=since)

    def _match_destination(
        self, src: Source, dst: Destination, todo: list[MessageMeta], folders: tuple[FolderInfo, FolderInfo],
        ref: FolderRef, listed: list[MessageMeta] | None = None,
    ) -> tuple[list[tuple[MessageMeta, str]], list[MessageMeta]]:  # fmt: skip
        """Which of ``todo`` are already at the destination (multiset match against the
        destination messages this source does not account for yet; ``listed``: only
        these). Copies the destination altered when it stored them (recognised by the
        second chance below) are named in reports like the ones a copy finds altered
        (after a lost state or an interrupted run)."""
        src_folder, dst_folder = folders
        altered: list[AlteredMessage] = []
        dst_msgs = dst.list_messages(dst_folder) if listed is None else listed
        if not dst_msgs:
            return [], todo
        claimed = self.state.claimed(ref.job, ref.source, ref.dst)
        src_hash_msgs, dst_hash_msgs = hash_candidates(todo, dst_msgs)
        src_hashes = (
            {m.id: content_hash(raw) for m, raw in src.fetch(src_folder, src_hash_msgs)} if src_hash_msgs else {}
        )
        dst_hashes = (
            {m.id: content_hash(raw) for m, raw in dst.fetch(dst_folder, dst_hash_msgs)} if dst_hash_msgs else {}
        )
        exact = dst.capabilities.exact_sizes
        matched, rest = match_existing(todo, dst_msgs, claimed, src_hashes, dst_hashes, exact_sizes=exact)
        # second chance: the same Message-ID at another size (a destination that altered the
        # message when it stored it), confirmed by the line-ending-normalised content
        maybe_src, maybe_dst = altered_candidates(rest, dst_msgs, {d for _, d in matched}, claimed)
        if maybe_src:
            src_norm = hashes(src, src_folder, maybe_src)
            dst_norm = hashes(dst, dst_folder, maybe_dst)
            also = match_altered(maybe_src, maybe_dst, src_norm, dst_norm)
            if also:
                matched += also
                stored = {d.id: d.size for d in maybe_dst}
                altered = [AlteredMessage(src_folder.path, m.id, d, m.size, stored[d]) for m, d in also if exact]
                again = {m.id for m, _ in also}
                rest = [m for m in rest if m.id not in again]
        if matched:
            self.state.mark_copied(
                ref,
                [(meta, dst_id, src_hashes.get(meta.id)) for meta, dst_id in matched],
                self.run_id,
                status="matched",
                reasons={a.id: a.reason for a in altered},
            )
        for entry in altered:
            self._altered(self.stats.folder(ref.job, ref.source, ref.path, ref.dst), entry)
        return matched, rest

    # ------------------------------------------------------------------ modes
    def _mirror_flags(
        self,
        dst: Destination,
        dst_folder: FolderInfo,
        ref: FolderRef,
        fstats: FolderStats,
        msgs: Sequence[MessageMeta],
        rows: dict[str, Any],
        extra: frozenset[str],
    ) -> None:
        """Give the destination copies the source's current flags (mirror mode)."""
        if not dst.capabilities.can_set_flags:
            return
        changes: list[tuple[str, str, frozenset[str]]] = []  # (src id, dst id, flags)
        for meta in msgs:
            row = rows.get(meta.id)
            want = meta.flags | extra
            if row is not None and row.dst_id and row.flags != want:
                changes.append((meta.id, row.dst_id, want))
        if not changes or self.options.dry_run:
            if changes:
                self.stats.add(ref.job, fstats, flags_changed=len(changes))
            return
        dst.set_flags(dst_folder, [(d, f) for _, d, f in changes])  # type: ignore[attr-defined]
        self.state.set_flags(ref, [(s, f) for s, _, f in changes])
        self.stats.add(ref.job, fstats, flags_changed=len(changes))

    def _guard(self, what: str, n: int, total: int) -> None:
        opts = self.job.options
        if n == 0 or opts.force_delete or self.options.force_delete:
            return
        if total == 0 or n / total > opts.max_delete_share:
            raise DeletionRefused(
                f"deletion guard: the source no longer has {n} of {total} messages of {what} "
                f"(more than {opts.max_delete_share:.0%}); nothing was deleted. If that is right, "
                "run again with --force-delete (or raise max_delete_share)"
            )

    def _mirror_deletions(
        self, dst: Destination, dst_folder: FolderInfo, ref: FolderRef, fstats: FolderStats, gone: list[str], total: int
    ) -> None:
        if not gone:
            return
        self._guard(f"folder {join(ref.path)!r}", len(gone), total)
        rows = self.state.done_rows(ref)
        dst_ids = [rows[i].dst_id for i in gone if i in rows and rows[i].dst_id]
        if self.options.dry_run:
            self.stats.add(ref.job, fstats, deleted=len(dst_ids))
            return
        if dst_ids and dst.capabilities.can_delete_at_destination:
            dst.delete(dst_folder, [MessageMeta(id=d, size=0) for d in dst_ids])  # type: ignore[attr-defined]
        self.state.forget_messages(ref, gone)
        self.stats.add(ref.job, fstats, deleted=len(dst_ids))

    def _mirror_deleted_folders(self, link: Link, label: str, mapped: set[FolderPath], plan: FolderPlan) -> None:
        _, dst = link.connect()
        known = self.state.known_folders(self.job.id, label)
        gone = [ref for ref in known if ref.path not in mapped]
        if not gone:
            return
        still_used = {fm.dest_path for fm in plan.maps}
        n = sum(len(self.state.done_rows(ref)) for ref in gone)
        total = sum(len(self.state.done_rows(ref)) for ref in known)
        self._guard(f"{len(gone)} deleted folder(s)", n, max(total, 1))
        for ref in gone:
            if self.options.dry_run:
                continue
            if ref.dst not in still_used and ref.dst != ("INBOX",) and dst.capabilities.can_delete_at_destination:
                dst.delete_folder(ref.dst)  # type: ignore[attr-defined]
            self.state.forget_folder(ref)

    def _delete_at_source(
        self, link: Link, src: Source, folder: FolderInfo, ref: FolderRef, fstats: FolderStats
    ) -> None:
        """Delete at the source exactly the messages whose copy is confirmed and checkpointed."""
        if not src.capabilities.can_delete:
            raise FolderError(f"{self.account.describe()} cannot delete messages (mode move / after_copy: delete)")
        if self.options.dry_run:
            return
        rows = self.state.done_rows(ref)
        victims = [MessageMeta(id=i, size=0) for i, row in rows.items() if not row.src_deleted]
        if not victims:
            return
        src.delete(folder, victims)  # type: ignore[attr-defined]
        if src.capabilities.folders:  # IMAP/Maildir: done now. POP3: at QUIT, recorded then
            self.state.mark_source_deleted(ref, [m.id for m in victims])
        else:
            link.close_source()  # QUIT: the deletions take effect now, or not at all
            self.state.mark_source_deleted(ref, [m.id for m in victims])
        self.stats.add(ref.job, fstats, source_deleted=len(victims))

    # ------------------------------------------------------------------ per-message events
    def _message_failed(self, fstats: FolderStats, folder: FolderInfo, meta: MessageMeta, reason: str) -> None:
        self.stats.add(self.job.id, fstats, failed=1)
        self.stats.failed_message(self.job.id, folder.path, meta.id, reason)
        self.state.add_error(self.run_id, self.job.id, folder.path, meta.id, "message", reason)

    def _altered(self, fstats: FolderStats, entry: AlteredMessage) -> None:
        """The destination stored a copied message differently: kept, and named in reports."""
        self.stats.altered_message(self.job.id, fstats, entry)
        log.warning("%s: %s: message %s: %s", self.job.id, join(entry.folder), entry.id, entry.reason)

    def _changed(self, fstats: FolderStats, folder: FolderInfo, meta: MessageMeta, note: str) -> None:
        """The destination changes this message to accept it: a folder note in the report."""
        mid = f" {meta.message_id}" if meta.message_id else ""
        text = f"message {meta.id}{mid}: {note}"
        self.stats.note(self.job.id, fstats, text)
        log.warning("%s: %s: %s", self.job.id, join(folder.path), text)

    def _vanished(self, fstats: FolderStats, folder: FolderInfo, meta: MessageMeta) -> None:
        reason = "vanished from the source during the run"
        self.stats.add(self.job.id, fstats, skipped=1)
        self.stats.skipped_message(self.job.id, folder.path, meta.id, reason)


def plan_excluded(plan: FolderPlan) -> list[tuple[FolderPath, str]]:
    """Excluded folders still exist at the source: they are not 'deleted'."""
    return [(e.source.path, e.reason) for e in plan.excluded]


class Engine:
    """Runs mailbox jobs, ``parallel`` at a time, against one state store."""

    def __init__(self, jobs: Sequence[MailboxJob], state: State, stats: RunStats, options: RunOptions):
        self.jobs = list(jobs)
        self.state = state
        self.stats = stats
        self.options = options
        self.cancel = threading.Event()
        self.shared = Shared(
            budgets=Budgets(options.max_connections or DEFAULT_MAX_CONNECTIONS, {}),
            limits=Limits(options.bytes_per_second, options.messages_per_second),
            memory=ByteBudget(options.max_bytes_in_flight),
        )
        if options.max_connections:  # the command line wins over every endpoint's own cap
            self.shared.budgets.overrides = {endpoint_key(a): options.max_connections for j in jobs
                                             for a in (*j.sources, j.destination)}  # fmt: skip

    def _mailbox(self, job: MailboxJob, run_id: int) -> MailboxRun:
        return MailboxRun(job, self.state, self.stats, run_id, self.options, self.cancel, self.shared)

    def run(self) -> RunStats:
        run_id = self.state.start_run(self.options.command, self.options.dry_run)
        parallel = self.options.parallel_mailboxes or max((j.options.parallel_mailboxes for j in self.jobs), default=1)
        status = "interrupted"
        try:
            if parallel <= 1 or len(self.jobs) <= 1:
                for job in self.jobs:
                    self._mailbox(job, run_id).run()
            else:
                with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="mailbox") as pool:
                    futures = [pool.submit(self._mailbox(job, run_id).run) for job in self.jobs]
                    try:
                        for f in futures:
                            f.result()
                    except KeyboardInterrupt:
                        self.cancel.set()
                        for f in futures:
                            f.cancel()
                        raise
            status = "ok" if all(mb.status == "ok" for mb in self.stats.mailboxes.values()) else "failed"
        except KeyboardInterrupt:
            self.stats.interrupted = True
            raise
        finally:
            self.stats.finished = time.monotonic()
            self.state.finish_run(run_id, status, self.stats.totals())
        return self.stats
