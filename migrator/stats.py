"""Counters of a run: one object, updated by the engine's threads, read by report.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from migrator.model import FolderPath

COUNTERS = (
    "listed",
    "to_copy",
    "copied",
    "matched",
    "skipped",
    "failed",
    "bytes",
    "bytes_to_copy",
    "done",
    "flags_changed",
    "deleted",
    "source_deleted",
)


@dataclass(slots=True)
class FolderStats:
    source: FolderPath
    dest: FolderPath
    store: str = ""  # the source store's label (a job may merge several sources)
    notes: tuple[str, ...] = ()
    listed: int = 0  # messages in the source folder
    to_copy: int = 0  # not yet at the destination, after matching
    copied: int = 0
    matched: int = 0  # found already at the destination (no copy needed)
    skipped: int = 0
    failed: int = 0
    bytes: int = 0  # bytes copied
    bytes_to_copy: int = 0
    done: int = 0  # already copied by an earlier run
    flags_changed: int = 0  # mirror: destination copies whose flags were updated
    deleted: int = 0  # mirror: destination copies deleted because the source message is gone
    source_deleted: int = 0  # move / after_copy delete: source messages deleted after a confirmed copy


@dataclass(slots=True)
class MailboxStats:
    job: str
    status: str = "waiting"  # waiting | running | ok | failed | interrupted
    error: str | None = None
    error_kind: str | None = None  # "connect", "auth", "quota", "folder", ...
    started: float | None = None
    finished: float | None = None
    folders: list[FolderStats] = field(default_factory=list)
    excluded: list[tuple[FolderPath, str]] = field(default_factory=list)
    skipped_messages: list[tuple[FolderPath, str, str]] = field(default_factory=list)  # folder, id, reason
    failed_messages: list[tuple[FolderPath, str, str]] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.folders)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


Listener = Callable[[MailboxStats], None]


class RunStats:
    """Thread-safe counters for every mailbox of a run."""

    def __init__(self, jobs: list[str], listener: Listener | None = None):
        self.mailboxes = {j: MailboxStats(j) for j in jobs}
        self._lock = threading.Lock()
        self._listener = listener
        self.started = time.monotonic()
        self.finished: float | None = None
        self.interrupted = False

    def _changed(self, mb: MailboxStats) -> None:
        if self._listener:
            self._listener(mb)

    def start(self, job: str) -> None:
        with self._lock:
            mb = self.mailboxes[job]
            mb.status, mb.started = "running", time.monotonic()
        self._changed(mb)

    def finish(self, job: str, status: str, error: str | None = None, kind: str | None = None) -> None:
        with self._lock:
            mb = self.mailboxes[job]
            mb.status, mb.finished = status, time.monotonic()
            mb.error, mb.error_kind = error, kind
        self._changed(mb)

    def folder(
        self, job: str, store: str, source: FolderPath, dest: FolderPath, notes: tuple[str, ...] = ()
    ) -> FolderStats:
        with self._lock:
            mb = self.mailboxes[job]
            for f in mb.folders:
                if f.source == source and f.store == store:
                    return f
            fs = FolderStats(source, dest, store, notes)
            mb.folders.append(fs)
            return fs

    def add(self, job: str, fs: FolderStats, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(fs, name, getattr(fs, name) + n)
            mb = self.mailboxes[job]
        self._changed(mb)

    def set(self, job: str, fs: FolderStats, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(fs, name, n)
            mb = self.mailboxes[job]
        self._changed(mb)

    def excluded(self, job: str, path: FolderPath, reason: str) -> None:
        with self._lock:
            self.mailboxes[job].excluded.append((path, reason))

    def skipped_message(self, job: str, folder: FolderPath, msg_id: str, reason: str) -> None:
        with self._lock:
            self.mailboxes[job].skipped_messages.append((folder, msg_id, reason))

    def failed_message(self, job: str, folder: FolderPath, msg_id: str, reason: str) -> None:
        with self._lock:
            self.mailboxes[job].failed_messages.append((folder, msg_id, reason))

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {c: sum(mb.total(c) for mb in self.mailboxes.values()) for c in COUNTERS}
