"""Copying messages of one folder: fetch -> checkpoint pending -> append -> checkpoint.

Also the single dry-run choke point (``DryRunDestination``): every write the engine
makes at a destination goes through the Destination interface, and in a dry run
that interface is this wrapper, which reads but never writes.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from migrator.connectors.base import Destination, Source
from migrator.errors import MessageError, MigratorError, TransientError
from migrator.march import batches
from migrator.model import Capabilities, FolderInfo, FolderPath, MessageMeta, crlf_size
from migrator.ratelimit import ByteBudget, Limits
from migrator.state import FolderRef, State
from migrator.stats import AlteredMessage

log = logging.getLogger("migrator.transfer")

_LINE_END = re.compile(rb"\r*\n|\r")


def content_hash(raw: bytes) -> str:
    """SHA-256 of the message with every line ending as LF and no trailing ones: the
    identity of a message without Message-ID, the same whether a store keeps it with
    CRLF (IMAP, POP3), LF (mbox, Maildir files) or altered CR runs (Dovecot)."""
    lf = raw.replace(b"\r\n", b"\n")  # the usual case, at memchr speed
    if b"\r" in lf:  # CR runs or lone CRs: the general rule
        lf = _LINE_END.sub(b"\n", raw)
    return hashlib.sha256(lf.rstrip(b"\n")).hexdigest()


class DryRunDestination:
    """A destination that answers reads and refuses to write: folders that do not
    exist are returned as placeholders, appends are counted and dropped."""

    dry_run = True

    def __init__(self, inner: Destination):
        self.inner = inner
        self.capabilities: Capabilities = inner.capabilities
        self.would_create: list[FolderPath] = []

    def list_folders(self) -> list[FolderInfo]:
        return self.inner.list_folders()

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        return self.inner.find_folder(path)

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        found = self.inner.find_folder(path)
        if found is not None:
            return found
        self.would_create.append(path)
        return FolderInfo(path, special_use, validity=None, selectable=False)

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        if not folder.selectable and folder.validity is None:
            return []  # a placeholder for a folder that does not exist yet
        return self.inner.list_messages(folder)

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        if not folder.selectable and folder.validity is None:
            return iter(())
        return self.inner.fetch(folder, msgs)

    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        return [None] * len(items)

    def adapt(self, meta: MessageMeta, raw: bytes) -> tuple[bytes, str | None]:
        return self.inner.adapt(meta, raw)  # type: ignore[attr-defined,no-any-return]  # pure: no write

    def close(self) -> None:
        self.inner.close()


def altered_messages(
    folder: FolderPath, items: Sequence[tuple[MessageMeta, bytes]], ids: Sequence[str | None], stored: dict[str, int]
) -> list[AlteredMessage]:
    """The appended ``items`` (destination ids ``ids``) whose ``stored`` size differs from
    what was sent. Sent bytes with bare LF line ends match either their own length or
    their RFC 822 size (CRLF), as a store may keep them either way; an id without a
    stored size is not judged."""
    out = []
    for (meta, raw), dst_id in zip(items, ids, strict=True):
        got = stored.get(dst_id) if dst_id is not None else None
        if got is None or got == len(raw):  # the usual case: no scan of the bytes
            continue
        sent = crlf_size(raw)
        if got != sent:
            out.append(AlteredMessage(folder, meta.id, dst_id, sent, got))
    return out


def adapt_items(
    dst: Destination,
    items: list[tuple[MessageMeta, bytes]],
    on_changed: Callable[[MessageMeta, str], None] | None,
) -> list[tuple[MessageMeta, bytes]]:
    """``items`` as the destination will accept them (``Destination.adapt`` when it
    declares ``adapts_messages``), reporting each change through ``on_changed``."""
    if not dst.capabilities.adapts_messages:
        return items
    out = []
    for meta, raw in items:
        new, note = dst.adapt(meta, raw)  # type: ignore[attr-defined]
        if note and on_changed is not None:
            on_changed(meta, note)
        out.append((meta, new))
    return out


def preview_adaptations(
    src: Source,
    dst: Destination,
    folder: FolderInfo,
    todo: Sequence[MessageMeta],
    batch_bytes: int,
    batch_messages: int,
    on_changed: Callable[[MessageMeta, str], None],
) -> None:
    """Dry run: read ``todo`` from the source and report what the destination would
    change (``Destination.adapt``, which is pure). Writes nothing."""
    if not todo or not dst.capabilities.adapts_messages:
        return
    for batch in batches(todo, batch_bytes, batch_messages):
        by_id = {m.id: m for m in batch}
        items = [(by_id.get(fresh.id, fresh), raw) for fresh, raw in src.fetch(folder, batch)]
        adapt_items(dst, items, on_changed)


Row = tuple[MessageMeta, str | None, str | None]  # (message, destination id, content hash)


class Prepared(NamedTuple):
    """A fetched batch as it will be sent, checkpointed pending."""

    items: list[tuple[MessageMeta, bytes]]
    hashes: dict[str, str]  # content hashes of the messages without Message-ID
    reserved: int  # bytes of the memory budget it holds
    ticket: int  # its pending checkpoint (State.journal_pending)


@dataclass(slots=True)
class FolderCopy:
    """Everything one folder's copy needs; built by the engine."""

    ref: FolderRef
    src: Source
    dst: Destination
    src_folder: FolderInfo
    dst_folder: FolderInfo
    state: State
    run_id: int
    batch_bytes: int
    batch_messages: int
    on_copied: Callable[[int, int], None]  # (messages, bytes)
    on_failed: Callable[[MessageMeta, str], None]
    on_vanished: Callable[[MessageMeta], None]
    cancel: threading.Event | None = None  # set: stop between batches (KeyboardInterrupt)
    extra_flags: frozenset[str] = frozenset()  # e.g. \\Seen for POP3 messages (plan option)
    # a message the destination had to change to accept it (capabilities.adapts_messages:
    # e.g. long lines re-encoded for Exchange Online), with what changed
    on_changed: Callable[[MessageMeta, str], None] | None = None
    # a copied message the destination stored differently from what it was sent
    # (capabilities.reports_stored_sizes and exact_sizes): kept, checkpointed with the reason
    on_altered: Callable[[AlteredMessage], None] | None = None
    limits: Limits | None = None  # --bwlimit / --max-messages-per-second
    memory: ByteBudget | None = None  # cap on message bytes in memory across all workers
    on_batch: Callable[[], None] | None = None  # a batch was confirmed (grows the connection budget)
    on_stored: Callable[[Sequence[str | None]], None] | None = None  # the destination ids of a confirmed batch
    before_send: Callable[[], None] | None = None  # waits out a back-off the endpoint was given
    # journaled batches (State.journal_pending) not yet confirmed nor expanded into
    # pending rows: expanded when the copy stops early (producer adds, consumer removes)
    _open_tickets: set[int] = field(default_factory=set)

    def _fetch_batches(
        self, planned: Sequence[Sequence[MessageMeta]]
    ) -> Iterator[tuple[list[tuple[MessageMeta, bytes]], int]]:
        """Fetched batches, each with the memory it reserved (released after its append)."""
        for batch in planned:
            reserved = self.memory.acquire(sum(m.size for m in batch), self.cancel) if self.memory else 0
            by_id = {m.id: m for m in batch}
            got: list[tuple[MessageMeta, bytes]] = []
            try:
                for fresh, raw in self.src.fetch(self.src_folder, batch):
                    listed = by_id.pop(fresh.id, None)
                    if listed is None:
                        continue
                    # identity (size, Message-ID) from the listing; flags and date as of now
                    flags, date = fresh.flags | self.extra_flags, fresh.internal_date or listed.internal_date
                    got.append((replace(listed, flags=flags, internal_date=date), raw))
            except BaseException:  # a failed fetch holds no memory
                if self.memory:
                    self.memory.release(reserved)
                raise
            for gone in by_id.values():
                self.on_vanished(gone)
            if got:
                yield got, reserved
            elif self.memory:
                self.memory.release(reserved)

    def _prepared_batches(self, planned: Sequence[Sequence[MessageMeta]]) -> Iterator[Prepared]:
        """Fetched batches as they will be sent (adapted to the destination), each
        checkpointed "pending" before it is handed on: with the fetch one batch ahead,
        that write overlaps the destination's work on the batch before (a batch
        checkpointed pending and then not sent is reconciled like any unconfirmed one)."""
        for items, reserved in self._fetch_batches(planned):
            try:
                items = adapt_items(self.dst, items, self.on_changed)
                hashes = {m.id: content_hash(raw) for m, raw in items if not m.message_id}
                pending = [(m, hashes.get(m.id)) for m, _ in items]
                ticket = self.state.journal_pending(self.ref, pending, self.run_id)
                if ticket:  # 0: a read-only state wrote nothing
                    self._open_tickets.add(ticket)
            except BaseException:
                if self.memory:
                    self.memory.release(reserved)
                raise
            yield Prepared(items, hashes, reserved, ticket)

    def run(self, todo: Sequence[MessageMeta]) -> None:
        """Copy ``todo``. Fetching (and the pending checkpoint) runs one batch ahead of
        appending, in a thread, with at most two batches in memory (a copy of one batch
        runs in this thread). Raises what the connectors raise (TransientError,
        QuotaError, ...); per-message refusals are recorded and the copy goes on."""
        if not todo:
            return
        try:
            self._run(todo)
        except BaseException:
            # batches journaled but not confirmed become pending rows now, so that a
            # retry of the folder in this run reconciles them like any unconfirmed batch
            self._expand_open_tickets()
            raise

    def _expand_open_tickets(self) -> None:
        tickets, self._open_tickets = self._open_tickets, set()
        try:
            self.state.expand_pending(tickets)
        except sqlite3.Error as exc:  # left in the journal: the next open expands them
            log.warning("%s: unconfirmed batches not recorded as pending yet: %s", self.ref.job, exc)

    def _run(self, todo: Sequence[MessageMeta]) -> None:
        planned = batches(todo, self.batch_bytes, self.batch_messages)
        if len(planned) == 1:  # nothing to overlap: fetch and send in this thread
            for batch in self._prepared_batches(planned):
                self._send(batch)
            return
        q: queue.Queue[Prepared | BaseException | None] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def produce() -> None:
            try:
                for batch in self._prepared_batches(planned):
                    while not stop.is_set():
                        try:
                            q.put(batch, timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(None)
            except BaseException as exc:  # forwarded to the consumer
                q.put(exc)

        producer = threading.Thread(target=produce, name=f"fetch-{self.ref.job}", daemon=True)
        producer.start()
        try:
            while True:
                got = q.get()
                if got is None:
                    break
                if isinstance(got, BaseException):
                    raise got
                self._send(got)
        finally:
            stop.set()
            while producer.is_alive() or not q.empty():
                try:
                    left = q.get_nowait()
                    if isinstance(left, Prepared) and self.memory:
                        self.memory.release(left.reserved)
                except queue.Empty:
                    producer.join(timeout=0.1)

    def _send(self, batch: Prepared) -> None:
        """Append one prepared batch, then release the memory it reserved."""
        items = batch.items
        try:
            if self.cancel is not None and self.cancel.is_set():
                raise KeyboardInterrupt
            if self.before_send is not None:
                self.before_send()
            if self.limits is not None:
                self.limits.take(len(items), sum(len(raw) for _, raw in items))
            self._append(items, batch.hashes, batch.ticket)
            if self.on_batch is not None:
                self.on_batch()
        finally:
            if self.memory:
                self.memory.release(batch.reserved)

    def _append(self, items: list[tuple[MessageMeta, bytes]], hashes: Mapping[str, str], ticket: int = 0) -> None:
        """Append ``items`` (checkpointed pending already: journaled as ``ticket``, or
        as pending rows) and checkpoint what the destination confirmed."""
        try:
            ids = self.dst.append(self.dst_folder, items)
        except MessageError as exc:
            if ticket:  # settled message by message below: as pending rows first
                self._open_tickets.discard(ticket)
                self.state.expand_pending([ticket])
            if len(items) == 1:  # refused alone: this message fails, the copy goes on
                self._failed(items[0][0], str(exc))
                return
            for item in items:  # find the culprit: one by one
                self._append([item], hashes)
            return
        rows = [(m, d, hashes.get(m.id)) for (m, _), d in zip(items, ids, strict=True)]
        if self.on_stored is not None:
            self.on_stored(ids)
        try:
            altered = self._altered(items, ids)
        except MigratorError as exc:  # the append is confirmed: checkpoint it whatever happens here
            self._confirm(rows, ticket)
            self.on_copied(len(items), sum(len(raw) for _, raw in items))
            if isinstance(exc, TransientError):
                raise
            log.warning("%s: %s: stored sizes not checked: %s", self.ref.job, "/".join(self.ref.path), exc)
            return
        self._confirm(rows, ticket, reasons={a.id: a.reason for a in altered})
        self.on_copied(len(items), sum(len(raw) for _, raw in items))
        for entry in altered:
            if self.on_altered is not None:
                self.on_altered(entry)

    def _confirm(self, rows: list[Row], ticket: int, reasons: Mapping[str, str] | None = None) -> None:
        self.state.confirm_sent(self.ref, rows, self.run_id, reasons=reasons, ticket=ticket)
        self._open_tickets.discard(ticket)

    def _altered(self, items: list[tuple[MessageMeta, bytes]], ids: Sequence[str | None]) -> list[AlteredMessage]:
        """The appended messages the destination stored at another size (one request per
        batch); none where the destination's sizes are not exact (Exchange rewrites MIME)."""
        caps = self.dst.capabilities
        known = [d for d in ids if d is not None]
        if not (caps.reports_stored_sizes and caps.exact_sizes and known):
            return []
        stored = self.dst.stored_sizes(self.dst_folder, known)  # type: ignore[attr-defined]
        return altered_messages(self.src_folder.path, items, ids, stored)

    def _failed(self, meta: MessageMeta, reason: str) -> None:
        self.state.mark_skipped(self.ref, [(meta, reason)], self.run_id, status="failed")
        self.on_failed(meta, reason)
