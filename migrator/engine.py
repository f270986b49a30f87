"""Scheduling: mailboxes in parallel, folders in order, retries with reconnects.

For every mailbox job: open both stores, map folders, then for each folder march
the source listing against the checkpoints, match what is still to copy against
the destination when that can matter (first visit, unconfirmed sends after a
crash, a UIDVALIDITY change), and copy the rest (transfer.FolderCopy).

A folder's sync is idempotent, so the retry policy is simple: on a retryable
error, reconnect and sync the folder again; the checkpoints make it resume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from migrator.connectors.base import Destination, open_store
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
from migrator.folders import FolderMap, join, map_folders
from migrator.march import hash_candidates, march, match_existing
from migrator.model import FolderInfo, MailboxJob, MessageMeta
from migrator.state import State
from migrator.stats import RunStats
from migrator.transfer import DryRunDestination, FolderCopy, content_hash

log = logging.getLogger("migrator")


@dataclass(frozen=True, slots=True)
class RunOptions:
    dry_run: bool = False
    parallel_mailboxes: int | None = None  # None: the plan's
    command: str = "run"
    max_wait: float = 30.0  # seconds between retries at most


def _wait(options: RunOptions) -> Callable[[RetryCallState], float]:
    base = wait_exponential(multiplier=0.5, max=options.max_wait)

    def wait(rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        hint = getattr(exc, "backoff_seconds", None)
        return float(hint) if hint else base(rs)

    return wait


class MailboxRun:
    """One mailbox job: its two connections and its folders."""

    def __init__(
        self, job: MailboxJob, state: State, stats: RunStats, run_id: int, options: RunOptions, cancel: threading.Event
    ):
        self.job = job
        self.state = state
        self.stats = stats
        self.run_id = run_id
        self.options = options
        self.cancel = cancel
        self.src: Destination | None = None
        self.dst: Destination | None = None

    # ------------------------------------------------------------------ connections
    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(is_retryable),
            stop=stop_after_attempt(self.job.options.retries + 1),
            wait=_wait(self.options),
            before_sleep=self._before_retry,
            reraise=True,
        )

    def _before_retry(self, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        log.warning("%s: %s; reconnecting (attempt %d)", self.job.id, exc, rs.attempt_number + 1)
        self.disconnect()

    def connect(self) -> None:
        if self.src is None:
            self.src = open_store(self.job.source, "source")
        if self.dst is None:
            dst = open_store(self.job.destination, "destination")
            self.dst = DryRunDestination(dst) if self.options.dry_run else dst  # type: ignore[assignment]

    def disconnect(self) -> None:
        for store in (self.src, self.dst):
            if store is not None:
                try:
                    store.close()
                except Exception:  # closing a broken connection may fail; nothing to save
                    log.debug("close failed", exc_info=True)
        self.src = self.dst = None

    # ------------------------------------------------------------------ the job
    def run(self) -> None:
        jid = self.job.id
        self.stats.start(jid)
        try:
            for attempt in self._retrying():
                with attempt:
                    self.connect()
                    assert self.src is not None and self.dst is not None
                    src_folders = self.src.list_folders()
                    dst_folders = self.dst.list_folders()
            assert self.dst is not None
            plan = map_folders(src_folders, dst_folders, self.job.options.folders, self.dst.capabilities)
            for ex in plan.excluded:
                self.stats.excluded(jid, ex.source.path, ex.reason)
            folder_errors: list[str] = []
            for fm in plan.maps:
                if self.cancel.is_set():
                    raise KeyboardInterrupt
                try:
                    for attempt in self._retrying():
                        with attempt:
                            self.connect()
                            self.sync_folder(fm)
                except FolderError as exc:
                    folder_errors.append(f"{join(fm.source.path)}: {exc}")
                    self.state.add_error(self.run_id, jid, fm.source.path, None, "folder", str(exc))
                    log.error("%s: folder %s: %s", jid, join(fm.source.path), exc)
            if folder_errors:
                self.stats.finish(jid, "failed", "; ".join(folder_errors), "folder")
            else:
                self.stats.finish(jid, "ok")
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
        finally:
            self.disconnect()

    def _fail(self, kind: str, exc: BaseException) -> None:
        msg = str(exc) or type(exc).__name__
        self.stats.finish(self.job.id, "failed", msg, kind)
        self.state.add_error(self.run_id, self.job.id, None, None, kind, msg)
        log.error("%s: %s", self.job.id, msg)

    # ------------------------------------------------------------------ one folder
    def sync_folder(self, fm: FolderMap) -> None:
        assert self.src is not None and self.dst is not None
        jid, src, dst, state = self.job.id, self.src, self.dst, self.state
        src_folder = fm.source
        fstats = self.stats.folder(jid, src_folder.path, fm.dest_path, fm.notes)
        dst_folder = dst.ensure_folder(fm.dest_path, fm.special_use)
        metas = src.list_messages(src_folder)
        fs = state.folder_state(jid, src_folder.path)
        validity_changed = fs.known and fs.validity != src_folder.validity
        if validity_changed:
            log.warning("%s: %s: UIDVALIDITY changed; re-matching against the destination", jid, join(src_folder.path))
        state.set_folder(jid, src_folder.path, src_folder.validity, fm.dest_path)
        done = frozenset() if validity_changed else fs.done
        pending = frozenset() if validity_changed else fs.pending
        m = march(metas, done, pending, self.job.options.filters, dst.capabilities)
        if m.skipped:
            state.mark_skipped(jid, src_folder.path, src_folder.validity, fm.dest_path, m.skipped, self.run_id)
            for meta, reason in m.skipped:
                self.stats.skipped_message(jid, src_folder.path, meta.id, reason)
        todo = m.to_copy
        matched: list[tuple[MessageMeta, str]] = []
        if todo and (not fs.reconciled or m.pending or validity_changed):
            matched, todo = self._match_destination(todo, dst_folder, fm)
        if not self.options.dry_run:
            state.set_reconciled(jid, src_folder.path)
        self.stats.set(
            jid,
            fstats,
            listed=len(metas),
            done=len(m.done),
            skipped=len(m.skipped),
            matched=len(matched),
            to_copy=len(todo),
            bytes_to_copy=sum(x.size for x in todo),
            copied=0,
            failed=0,
            bytes=0,
        )
        if self.options.dry_run or not todo:
            return
        copier = FolderCopy(
            job=jid,
            src=src,
            dst=dst,
            src_folder=src_folder,
            dst_folder=dst_folder,
            state=state,
            run_id=self.run_id,
            batch_bytes=self.job.options.batch_bytes,
            batch_messages=self.job.options.batch_messages,
            on_copied=lambda n, b: self.stats.add(jid, fstats, copied=n, bytes=b),
            on_failed=lambda meta, reason: self._message_failed(fstats, src_folder, meta, reason),
            on_vanished=lambda meta: self._vanished(fstats, src_folder, meta),
            cancel=self.cancel,
        )
        copier.run(todo)

    def _message_failed(self, fstats, folder: FolderInfo, meta: MessageMeta, reason: str) -> None:  # type: ignore[no-untyped-def]
        self.stats.add(self.job.id, fstats, failed=1)
        self.stats.failed_message(self.job.id, folder.path, meta.id, reason)
        self.state.add_error(self.run_id, self.job.id, folder.path, meta.id, "message", reason)

    def _vanished(self, fstats, folder: FolderInfo, meta: MessageMeta) -> None:  # type: ignore[no-untyped-def]
        reason = "vanished from the source during the run"
        self.stats.add(self.job.id, fstats, skipped=1)
        self.stats.skipped_message(self.job.id, folder.path, meta.id, reason)

    def _match_destination(
        self, todo: list[MessageMeta], dst_folder: FolderInfo, fm: FolderMap
    ) -> tuple[list[tuple[MessageMeta, str]], list[MessageMeta]]:
        """Which of ``todo`` are already at the destination (multiset match)."""
        assert self.src is not None and self.dst is not None
        dst_msgs = self.dst.list_messages(dst_folder)
        if not dst_msgs:
            return [], todo
        claimed = self.state.claimed(self.job.id, fm.dest_path)
        src_hash_msgs, dst_hash_msgs = hash_candidates(todo, dst_msgs)
        src_hashes = (
            {m.id: content_hash(raw) for m, raw in self.src.fetch(fm.source, src_hash_msgs)} if src_hash_msgs else {}
        )
        dst_hashes = (
            {m.id: content_hash(raw) for m, raw in self.dst.fetch(dst_folder, dst_hash_msgs)} if dst_hash_msgs else {}
        )
        matched, rest = match_existing(todo, dst_msgs, claimed, src_hashes, dst_hashes)
        if matched:
            self.state.mark_copied(
                self.job.id,
                fm.source.path,
                fm.source.validity,
                fm.dest_path,
                [(meta, dst_id, src_hashes.get(meta.id)) for meta, dst_id in matched],
                self.run_id,
                status="matched",
            )
        return matched, rest


class Engine:
    """Runs mailbox jobs, ``parallel`` at a time, against one state store."""

    def __init__(self, jobs: Sequence[MailboxJob], state: State, stats: RunStats, options: RunOptions):
        self.jobs = list(jobs)
        self.state = state
        self.stats = stats
        self.options = options
        self.cancel = threading.Event()

    def run(self) -> RunStats:
        run_id = self.state.start_run(self.options.command, self.options.dry_run)
        parallel = self.options.parallel_mailboxes or max((j.options.parallel_mailboxes for j in self.jobs), default=1)
        status = "interrupted"
        try:
            if parallel <= 1 or len(self.jobs) <= 1:
                for job in self.jobs:
                    MailboxRun(job, self.state, self.stats, run_id, self.options, self.cancel).run()
            else:
                with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="mailbox") as pool:
                    futures = [
                        pool.submit(MailboxRun(job, self.state, self.stats, run_id, self.options, self.cancel).run)
                        for job in self.jobs
                    ]
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
