"""The pure diff of a source listing against checkpoints and the destination listing.

No I/O here, so every rule is easy to test:

* ``march``: which source messages still need copying, which are done, and which
  are skipped by the plan's filters (each with its reason).
* ``match_existing``: which of the messages still to copy are already at the
  destination. Destination messages are matched as a *multiset*: a destination
  message already accounted for by a checkpoint row (``claimed``) cannot stand for a
  second source message, so two distinct source messages sharing a Message-ID are
  both copied, and true duplicates keep their count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from migrator.model import Capabilities, Filters, MatchKey, MessageMeta, match_key


@dataclass(slots=True)
class MarchResult:
    to_copy: list[MessageMeta] = field(default_factory=list)
    done: list[MessageMeta] = field(default_factory=list)
    skipped: list[tuple[MessageMeta, str]] = field(default_factory=list)
    pending: list[MessageMeta] = field(default_factory=list)  # subset of to_copy: sent before, unconfirmed


def skip_reason(meta: MessageMeta, filters: Filters, dest: Capabilities) -> str | None:
    """Why the plan refuses this message (filters, destination size limit), or None."""
    if dest.max_message_bytes is not None and meta.size > dest.max_message_bytes:
        return f"message of {meta.size} bytes is over the destination's limit of {dest.max_message_bytes}"
    if filters.max_size is not None and meta.size > filters.max_size:
        return f"size {meta.size} over filters.max_size {filters.max_size}"
    if filters.min_size is not None and meta.size < filters.min_size:
        return f"size {meta.size} under filters.min_size {filters.min_size}"
    if meta.internal_date is not None:
        if filters.since is not None and meta.internal_date < filters.since:
            return f"internal date {meta.internal_date.isoformat()} before filters.since"
        if filters.before is not None and meta.internal_date >= filters.before:
            return f"internal date {meta.internal_date.isoformat()} not before filters.before"
    return None


def march(
    source: Iterable[MessageMeta],
    done: frozenset[str] | set[str],
    pending: frozenset[str] | set[str],
    filters: Filters,
    dest: Capabilities,
) -> MarchResult:
    result = MarchResult()
    for meta in source:
        if meta.id in done:
            result.done.append(meta)
            continue
        reason = skip_reason(meta, filters, dest)
        if reason:
            result.skipped.append((meta, reason))
            continue
        result.to_copy.append(meta)
        if meta.id in pending:
            result.pending.append(meta)
    return result


def needs_content_hash(meta: MessageMeta) -> bool:
    return not meta.message_id


def match_existing(
    candidates: Sequence[MessageMeta],
    destination: Iterable[MessageMeta],
    claimed: Counter[MatchKey],
    source_hashes: Mapping[str, str] | None = None,
    dest_hashes: Mapping[str, str] | None = None,
) -> tuple[list[tuple[MessageMeta, str]], list[MessageMeta]]:
    """Split ``candidates`` into (already at the destination, with the destination id
    they were matched to) and (still to copy).

    Identity: Message-ID + size; for messages without Message-ID, content hash +
    size (``source_hashes`` by source id, ``dest_hashes`` by destination id; a
    message whose hash is unknown never matches). ``claimed`` counts destination
    messages per identity that checkpoint rows already account for."""
    source_hashes = source_hashes or {}
    dest_hashes = dest_hashes or {}
    available: dict[MatchKey, list[str]] = defaultdict(list)
    for d in destination:
        key = match_key(d.message_id, d.size, dest_hashes.get(d.id))
        if key:
            available[key].append(d.id)
    remaining = Counter(claimed)
    for key, ids in available.items():
        drop = min(remaining[key], len(ids))
        if drop:
            del ids[:drop]
    matched: list[tuple[MessageMeta, str]] = []
    unmatched: list[MessageMeta] = []
    for meta in candidates:
        key = match_key(meta.message_id, meta.size, source_hashes.get(meta.id))
        ids = available.get(key) if key else None
        if ids:
            matched.append((meta, ids.pop(0)))
        else:
            unmatched.append(meta)
    return matched, unmatched


def hash_candidates(
    candidates: Sequence[MessageMeta], destination: Sequence[MessageMeta]
) -> tuple[list[MessageMeta], list[MessageMeta]]:
    """The messages without Message-ID on each side whose size also occurs on the other
    side: only those need their content hashed to be matched."""
    src_sizes = {m.size for m in candidates if needs_content_hash(m)}
    dst_sizes = {m.size for m in destination if needs_content_hash(m)}
    both = src_sizes & dst_sizes
    return (
        [m for m in candidates if needs_content_hash(m) and m.size in both],
        [m for m in destination if needs_content_hash(m) and m.size in both],
    )


def batches(
    msgs: Sequence[MessageMeta],
    max_bytes: int,
    max_count: int,
    size: Callable[[MessageMeta], int] = lambda m: m.size,
) -> list[list[MessageMeta]]:
    """Cut ``msgs`` into batches of at most ``max_count`` messages and about ``max_bytes``
    (a single larger message forms its own batch)."""
    out: list[list[MessageMeta]] = []
    cur: list[MessageMeta] = []
    cur_bytes = 0
    for m in msgs:
        s = size(m)
        if cur and (cur_bytes + s > max_bytes or len(cur) >= max_count):
            out.append(cur)
            cur, cur_bytes = [], 0
        cur.append(m)
        cur_bytes += s
    if cur:
        out.append(cur)
    return out
