"""Strict mailbox snapshots and their comparison, for end-to-end fidelity tests.

A `Snapshot` maps each folder (decoded path parts, ("INBOX",) for the inbox) to the
sorted list of its messages' `MessageFacts`: SHA-256 and size of the exact bytes,
system flags, keywords and internal date (as a UTC instant). Two mailboxes are
identical for a migration when `diff_snapshots` returns no lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl as ssl_module
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import imapclient

from integration.corpus import FOLDERS, INBOX, CorpusMessage, folder_label

SYSTEM_FLAGS: dict[str, str] = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
IGNORED_FLAGS = frozenset({"\\recent"})
META_BATCH = 1000  # UIDs per metadata FETCH (keeps command lines short)
BODY_BATCH_BYTES = 8 * 1024 * 1024
TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class MessageFacts:
    """What must survive a migration unchanged (internal_date is UTC, whole seconds)."""

    sha256: str
    size: int
    flags: frozenset[str]
    keywords: frozenset[str]
    internal_date: datetime

    def sort_key(self) -> tuple[str, datetime, tuple[str, ...], tuple[str, ...]]:
        """Total order used to sort a folder's messages."""
        return (self.sha256, self.internal_date, tuple(sorted(self.flags)), tuple(sorted(self.keywords)))

    def describe(self) -> str:
        """One-line human description (no message content)."""
        flags = " ".join(sorted(self.flags)) or "-"
        kws = " ".join(sorted(self.keywords)) or "-"
        return (
            f"sha256={self.sha256[:12]}.. size={self.size} flags=[{flags}] keywords=[{kws}] "
            f"date={self.internal_date.isoformat()}"
        )


Snapshot = dict[tuple[str, ...], list[MessageFacts]]


def split_flags(flags: Iterable[str | bytes]) -> tuple[frozenset[str], frozenset[str]]:
    """Split IMAP flags into (system flags in canonical case, keywords); drops \\Recent."""
    system: set[str] = set()
    keywords: set[str] = set()
    for flag in flags:
        text = flag.decode("utf-8", "replace") if isinstance(flag, bytes) else flag
        low = text.lower()
        if low in IGNORED_FLAGS:
            continue
        if low in SYSTEM_FLAGS:
            system.add(SYSTEM_FLAGS[low])
        else:
            keywords.add(text)
    return frozenset(system), frozenset(keywords)


def facts_of(raw: bytes, flags: Iterable[str | bytes], internal_date: datetime) -> MessageFacts:
    """MessageFacts of one message; internal_date must be timezone-aware."""
    if internal_date.tzinfo is None:
        raise ValueError("internal_date must be timezone-aware")
    system, keywords = split_flags(flags)
    return MessageFacts(hashlib.sha256(raw).hexdigest(), len(raw), system, keywords, internal_date.astimezone(UTC))


def _sorted(snapshot: dict[tuple[str, ...], list[MessageFacts]]) -> Snapshot:
    return {folder: sorted(msgs, key=MessageFacts.sort_key) for folder, msgs in sorted(snapshot.items())}


def snapshot_corpus(messages: Iterable[CorpusMessage], *, folders: Iterable[tuple[str, ...]] = FOLDERS) -> Snapshot:
    """Snapshot of what loading `messages` (plus the empty `folders`) should produce."""
    out: dict[tuple[str, ...], list[MessageFacts]] = {tuple(f): [] for f in folders}
    for msg in messages:
        out.setdefault(msg.folder, []).append(facts_of(msg.raw, msg.flags, msg.internal_date))
    return _sorted(out)


# ----------------------------------------------------------------------------- IMAP side


def _folder_path(name: str, prefix: str, sep: str) -> tuple[str, ...] | None:
    """Path parts of a listed name relative to the personal prefix; None if outside it."""
    if name.upper() == "INBOX":
        return INBOX
    if prefix and not name.startswith(prefix):
        return None
    rel = name[len(prefix) :]
    return tuple(rel.split(sep)) if sep else (rel,)


def _personal_folders(client: imapclient.IMAPClient) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(IMAP name, path) of every selectable folder in the personal namespace."""
    ns = client.namespace()
    prefix, sep = ns.personal[0] if ns.personal else ("", "/")
    foreign = [p for group in (ns.other, ns.shared) if group for p, _ in group if p]
    for flags, _delim, name in client.list_folders():
        low = {f.decode().lower() if isinstance(f, bytes) else f.lower() for f in flags}
        if "\\noselect" in low or "\\nonexistent" in low:
            continue
        if any(name.startswith(p) for p in foreign):
            continue
        path = _folder_path(name, prefix, sep)
        if path is not None:
            yield name, path


def _batches(sizes: dict[int, int], limit: int) -> Iterator[list[int]]:
    batch: list[int] = []
    total = 0
    for uid in sorted(sizes):
        if batch and total + sizes[uid] > limit:
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += sizes[uid]
    if batch:
        yield batch


def _snapshot_folder(client: imapclient.IMAPClient, name: str) -> list[MessageFacts]:
    status = client.select_folder(name, readonly=True)
    if int(status.get(b"EXISTS", 0)) == 0:
        return []
    uids = sorted(client.search("ALL"))
    meta = {}
    for start in range(0, len(uids), META_BATCH):
        meta.update(client.fetch(uids[start : start + META_BATCH], ["RFC822.SIZE", "FLAGS", "INTERNALDATE"]))
    sizes = {uid: int(d[b"RFC822.SIZE"]) for uid, d in meta.items()}
    out = []
    for batch in _batches(sizes, BODY_BATCH_BYTES):
        for uid, data in client.fetch(batch, ["BODY.PEEK[]"]).items():
            m = meta[uid]
            out.append(facts_of(data[b"BODY[]"], m[b"FLAGS"], m[b"INTERNALDATE"]))
    if len(out) != len(meta):
        raise RuntimeError(f"{name}: fetched {len(out)} bodies for {len(meta)} messages")
    return out


def snapshot_imap(
    host: str, port: int, user: str, password: str, *, ssl: bool = False, timeout: float = TIMEOUT_SECONDS
) -> Snapshot:
    """Read-only snapshot of every selectable personal folder over IMAP.

    Uses EXAMINE and BODY.PEEK[] (no flag changes), fetches bodies in batches of about
    8 MB and hashes them at once (memory stays at about one batch). With ssl=True the
    server certificate is NOT verified (test servers on loopback use self-signed ones).
    """
    context = None
    if ssl:
        context = ssl_module.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
    client = imapclient.IMAPClient(host, port=port, ssl=ssl, ssl_context=context, timeout=timeout)
    client.normalise_times = False
    try:
        client.login(user, password)
        out = {path: _snapshot_folder(client, name) for name, path in _personal_folders(client)}
    finally:
        with contextlib.suppress(Exception):  # best effort on a possibly broken connection
            client.logout()
    return _sorted(out)


# ----------------------------------------------------------------------------- diff


def _fact_key(f: MessageFacts) -> tuple[str, int, frozenset[str], frozenset[str], datetime]:
    return (f.sha256, f.size, f.flags, f.keywords, f.internal_date)


def _pair_changes(missing: list[MessageFacts], extra: list[MessageFacts], label: str) -> list[str]:
    """Lines for one folder: same bytes with different metadata, then pure missing/extra."""
    lines: list[str] = []
    extra_by_sha: dict[str, list[MessageFacts]] = {}
    for e in extra:
        extra_by_sha.setdefault(e.sha256, []).append(e)
    unmatched_missing = []
    for m in missing:
        candidates = extra_by_sha.get(m.sha256)
        if not candidates:
            unmatched_missing.append(m)
            continue
        e = candidates.pop(0)
        what = []
        if m.flags != e.flags:
            what.append(f"flags {sorted(m.flags)} -> {sorted(e.flags)}")
        if m.keywords != e.keywords:
            what.append(f"keywords {sorted(m.keywords)} -> {sorted(e.keywords)}")
        if m.internal_date != e.internal_date:
            what.append(f"date {m.internal_date.isoformat()} -> {e.internal_date.isoformat()}")
        lines.append(f"{label}: message sha256={m.sha256[:12]}.. size={m.size} changed: {'; '.join(what)}")
    for m in unmatched_missing:
        lines.append(f"{label}: message {m.describe()} missing at destination")
    for rest in extra_by_sha.values():
        for e in rest:
            lines.append(f"{label}: message {e.describe()} extra at destination")
    return lines


def diff_snapshots(src: Snapshot, dst: Snapshot, *, max_lines: int = 50) -> list[str]:
    """Human-readable differences (empty list when identical).

    Compares folders (missing/extra, empty ones included) and, per folder, the multiset
    of (sha256, size, flags, keywords, internal date). Messages with identical bytes but
    different metadata are reported as "changed"; counts are reported per differing
    folder. At most `max_lines` lines, the last one saying how many were left out.
    """
    lines: list[str] = []
    for folder in sorted(set(src) - set(dst)):
        lines.append(f"{folder_label(folder)}: folder missing at destination ({len(src[folder])} messages)")
    for folder in sorted(set(dst) - set(src)):
        lines.append(f"{folder_label(folder)}: folder extra at destination ({len(dst[folder])} messages)")
    for folder in sorted(set(src) & set(dst)):
        a = Counter(_fact_key(f) for f in src[folder])
        b = Counter(_fact_key(f) for f in dst[folder])
        if a == b:
            continue
        label = folder_label(folder)
        lines.append(f"{label}: {len(src[folder])} messages at source, {len(dst[folder])} at destination")
        missing = [MessageFacts(*k) for k in sorted((a - b).elements(), key=str)]
        extra = [MessageFacts(*k) for k in sorted((b - a).elements(), key=str)]
        lines.extend(_pair_changes(missing, extra, label))
    if len(lines) > max_lines:
        left = len(lines) - (max_lines - 1)
        lines = [*lines[: max_lines - 1], f"... and {left} more difference lines"]
    return lines
