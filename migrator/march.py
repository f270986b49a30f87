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


def _sizeless(key: MatchKey) -> MatchKey:
    return (key[0], key[1], 0) if key[0] == "mid" else key


def match_existing(
    candidates: Sequence[MessageMeta],
    destination: Iterable[MessageMeta],
    claimed: Counter[MatchKey],
    source_hashes: Mapping[str, str] | None = None,
    dest_hashes: Mapping[str, str] | None = None,
    exact_sizes: bool = True,
) -> tuple[list[tuple[MessageMeta, str]], list[MessageMeta]]:
    """Split ``candidates`` into (already at the destination, with the destination id
    they were matched to) and (still to copy).

    Identity: Message-ID + size; for messages without Message-ID, content hash +
    size (``source_hashes`` by source id, ``dest_hashes`` by destination id; a
    message whose hash is unknown never matches). ``claimed`` counts destination
    messages per identity that checkpoint rows already account for.
    ``exact_sizes`` False (a destination that rewrites MIME, like Exchange Online):
    Message-ID alone identifies, still as a multiset."""
    source_hashes = source_hashes or {}
    dest_hashes = dest_hashes or {}

    def key_of(mid: str | None, size: int, sha: str | None) -> MatchKey | None:
        key = match_key(mid, size, sha)
        return _sizeless(key) if key and not exact_sizes else key

    available: dict[MatchKey, list[str]] = defaultdict(list)
    for d in destination:
        key = key_of(d.message_id, d.size, dest_hashes.get(d.id))
        if key:
            available[key].append(d.id)
    remaining: Counter[MatchKey] = Counter()
    for key, n in claimed.items():
        remaining[key if exact_sizes else _sizeless(key)] += n
    for key, ids in available.items():
        drop = min(remaining[key], len(ids))
        if drop:
            del ids[:drop]
    matched: list[tuple[MessageMeta, str]] = []
    unmatched: list[MessageMeta] = []
    for meta in candidates:
        key = key_of(meta.message_id, meta.size, source_hashes.get(meta.id))
        ids = available.get(key) if key else None
        if ids:
            matched.append((meta, ids.pop(0)))
        else:
            unmatched.append(meta)
    return matched, unmatched


def altered_candidates(
    unmatched: Sequence[MessageMeta],
    destination: Sequence[MessageMeta],
    matched_ids: set[str],
    claimed: Counter[MatchKey],
) -> tuple[list[MessageMeta], list[MessageMeta]]:
    """Second chance for a destination that changed a message when it stored it (Dovecot
    stores CR CR LF as CR LF; some servers add a final CRLF): the same Message-ID at a
    different size. Returns (source, destination) messages worth comparing by their
    line-ending-normalised content; destination messages that other checkpoint rows of
    the same Message-ID still account for are left out."""
    want = {m.message_id for m in unmatched if m.message_id}
    if not want:
        return [], []
    claims: dict[str, Counter[int]] = defaultdict(Counter)  # Message-ID -> size -> rows
    for key, n in claimed.items():
        if key[0] == "mid" and key[1] in want:
            claims[key[1]][key[2]] += n
    left: dict[str, list[MessageMeta]] = defaultdict(list)
    for d in destination:
        if d.id not in matched_ids and d.message_id in want:
            left[d.message_id].append(d)
    dst_out: list[MessageMeta] = []
    for mid, msgs in left.items():
        by_size = claims[mid]
        rest = []
        for d in msgs:  # claims of exactly this size account for these first
            if by_size[d.size] > 0:
                by_size[d.size] -= 1
            else:
                rest.append(d)
        spare = sum(by_size.values())  # claims whose copy the destination altered
        dst_out.extend(rest[spare:])
    if not dst_out:
        return [], []
    mids = {d.message_id for d in dst_out}
    return [m for m in unmatched if m.message_id in mids], dst_out


def match_altered(
    src: Sequence[MessageMeta],
    dst: Sequence[MessageMeta],
    src_norm: Mapping[str, str],
    dst_norm: Mapping[str, str],
) -> list[tuple[MessageMeta, str]]:
    """Pairs of (source, destination id) with the same Message-ID and the same normalised
    content hash; each destination message is used once."""
    pool: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for d in dst:
        if d.id in dst_norm:
            pool[(d.message_id, dst_norm[d.id])].append(d.id)
    out = []
    for m in src:
        ids = pool.get((m.message_id, src_norm.get(m.id, "")))
        if ids:
            out.append((m, ids.pop(0)))
    return out


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
