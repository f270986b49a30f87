"""Counters of a run: one object, updated by the engine's threads, read by report.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from migrator.model import FolderPath, MessageMeta

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
    "listed_bytes",
    "no_message_id",
    "duplicate_message_ids",
    "altered",
)
DUPLICATE_EXAMPLES = 5  # Message-IDs kept per folder to show in reports


@dataclass(frozen=True, slots=True)
class AlteredMessage:
    """A message the destination stored differently from what it was sent (Destination.
    stored_sizes): the copy is kept, counted as copied, and named in reports."""

    folder: FolderPath  # the source folder
    id: str  # source id
    dst_id: str | None  # the destination's id of the stored copy
    sent: int  # RFC 822 size of the bytes sent (CRLF line ends)
    stored: int  # the size the destination holds

    @property
    def reason(self) -> str:
        return altered_reason(self.sent, self.stored)


def altered_reason(sent: int, stored: int) -> str:
    """The reason reports and the state DB give for an altered message."""
    return f"altered by the destination: stored {stored:,} of {sent:,} bytes"


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
    # from the source listing (RunStats.listing; settled when the mailbox finishes):
    listed_bytes: int = 0  # RFC 822 octets of the listed source messages
    no_message_id: int = 0  # listed messages without a Message-ID
    duplicate_message_ids: int = 0  # listed messages sharing their Message-ID with another one of this folder
    duplicate_examples: tuple[tuple[str, int], ...] = ()  # (Message-ID, how many) for a few of them
    altered: int = 0  # copied, but the destination stored them differently (MailboxStats.altered_messages)


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
    altered_messages: list[AlteredMessage] = field(default_factory=list)  # copied, but stored differently
    # source listings of the running mailbox: (store, folder) -> {id: (Message-ID, size)};
    # keyed by id so a retry's second listing counts nothing twice; dropped at finish
    listings: dict[tuple[str, FolderPath], dict[str, tuple[str | None, int]]] = field(default_factory=dict, repr=False)

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
            self._settle(mb)
        self._changed(mb)

    def listing(self, job: str, fs: FolderStats, messages: Iterable[MessageMeta]) -> None:
        """The engine shows every source listing page here. The folder's
        ``listed_bytes``, ``no_message_id`` and ``duplicate_message_ids`` are settled
        when the mailbox finishes (memory: one small tuple per listed message of the
        running mailbox, released then)."""
        with self._lock:
            seen = self.mailboxes[job].listings.setdefault((fs.store, fs.source), {})
            for m in messages:
                seen[m.id] = (m.message_id, m.size)

    @staticmethod
    def _settle(mb: MailboxStats) -> None:
        for (store, source), seen in mb.listings.items():
            fs = next((f for f in mb.folders if f.store == store and f.source == source), None)
            if fs is None:
                continue
            mids = Counter(mid for mid, _ in seen.values() if mid)
            dups = sorted(((mid, n) for mid, n in mids.items() if n > 1), key=lambda x: (-x[1], x[0]))
            fs.listed_bytes = sum(size for _, size in seen.values())
            fs.no_message_id = sum(1 for mid, _ in seen.values() if not mid)
            fs.duplicate_message_ids = sum(n for _, n in dups)
            fs.duplicate_examples = tuple(dups[:DUPLICATE_EXAMPLES])
        mb.listings.clear()

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

    def note(self, job: str, fs: FolderStats, text: str) -> None:
        """Add a note to a folder (e.g. a message the destination changed to accept it)."""
        with self._lock:
            if text not in fs.notes:
                fs.notes = (*fs.notes, text)
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

    def altered_message(self, job: str, fs: FolderStats, entry: AlteredMessage) -> None:
        """A copied message the destination stored differently (counted in ``fs.altered``)."""
        with self._lock:
            fs.altered += 1
            mb = self.mailboxes[job]
            mb.altered_messages.append(entry)
        self._changed(mb)

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {c: sum(mb.total(c) for mb in self.mailboxes.values()) for c in COUNTERS}
