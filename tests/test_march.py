"""march and match_existing: the exactly-once rules, without I/O."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.march import batches, hash_candidates, march, match_existing
from migrator.model import Capabilities, Filters, MessageMeta
from migrator.transfer import content_hash


def M(id_: str, mid: str | None = "<a@x>", size: int = 100, date: datetime | None = None) -> MessageMeta:
    return MessageMeta(id=id_, size=size, message_id=mid, internal_date=date or datetime(2020, 1, 1, tzinfo=UTC))


CAPS = Capabilities()


def test_march_splits_done_pending_skipped():
    msgs = [M("1"), M("2"), M("3", size=10_000), M("4")]
    r = march(msgs, done={"1"}, pending={"4"}, filters=Filters(max_size=5000), dest=CAPS)
    assert [m.id for m in r.done] == ["1"]
    assert [m.id for m in r.to_copy] == ["2", "4"]
    assert [m.id for m in r.pending] == ["4"]
    assert [(m.id, "max_size" in why) for m, why in r.skipped] == [("3", True)]


@pytest.mark.parametrize(
    ("filters", "caps", "skipped"),
    [
        (Filters(since=datetime(2020, 1, 1, tzinfo=UTC)), CAPS, {"old"}),
        (Filters(before=datetime(2021, 1, 1, tzinfo=UTC)), CAPS, {"new"}),
        (Filters(min_size=50), CAPS, {"small"}),
        (Filters(), Capabilities(max_message_bytes=1000), {"big"}),
    ],
)
def test_filters_and_destination_limits(filters, caps, skipped):
    msgs = [
        M("old", date=datetime(2019, 1, 1, tzinfo=UTC)),
        M("new", date=datetime(2022, 1, 1, tzinfo=UTC)),
        M("small", size=10, date=datetime(2020, 6, 1, tzinfo=UTC)),
        M("big", size=2000, date=datetime(2020, 6, 1, tzinfo=UTC)),
    ]
    r = march(msgs, set(), set(), filters, caps)
    assert {m.id for m, _ in r.skipped} == skipped
    assert all(reason for _, reason in r.skipped)


def test_match_is_a_multiset_true_duplicates_keep_their_count():
    # two source copies of the same message; one is already at the destination
    src = [M("1"), M("2")]
    dst = [M("d1")]
    matched, rest = match_existing(src, dst, Counter())
    assert [(m.id, d) for m, d in matched] == [("1", "d1")]
    assert [m.id for m in rest] == ["2"]


def test_claimed_destination_messages_do_not_match_again():
    # d1 is already accounted for by a checkpoint row: the pending message must be sent
    src = [M("2")]
    dst = [M("d1")]
    matched, rest = match_existing(src, dst, Counter({("mid", "<a@x>", 100): 1}))
    assert matched == [] and [m.id for m in rest] == ["2"]


def test_distinct_messages_sharing_message_id_are_both_copied():
    src = [M("1", size=100), M("2", size=120)]  # same Message-ID, different content
    dst = [M("d1", size=100)]
    matched, rest = match_existing(src, dst, Counter())
    assert [m.id for m, _ in matched] == ["1"]
    assert [m.id for m in rest] == ["2"]


def test_messages_without_message_id_match_by_content_hash_only():
    src = [M("1", mid=None, size=50), M("2", mid=None, size=50)]
    dst = [M("d1", mid=None, size=50), M("d2", mid=None, size=77)]
    a, b = hash_candidates(src, dst)
    assert {m.id for m in a} == {"1", "2"} and {m.id for m in b} == {"d1"}
    matched, rest = match_existing(src, dst, Counter(), {"1": "h1", "2": "h2"}, {"d1": "h2"})
    assert [(m.id, d) for m, d in matched] == [("2", "d1")]
    assert [m.id for m in rest] == ["1"]
    # unknown hashes never match
    matched, rest = match_existing(src, dst, Counter())
    assert matched == [] and len(rest) == 2


def test_batches_by_bytes_and_count():
    msgs = [M(str(i), size=s) for i, s in enumerate([10, 10, 10, 100, 5, 5, 5, 5])]
    got = [[m.id for m in b] for b in batches(msgs, max_bytes=30, max_count=3)]
    assert got == [["0", "1", "2"], ["3"], ["4", "5", "6"], ["7"]]
    assert batches([], 10, 10) == []


def test_sizeless_matching_for_destinations_that_rebuild_mime():
    src = [M("1", size=100), M("2", mid="<b@x>", size=50)]
    dst = [M("d1", size=180)]  # the same message, listed at another size
    matched, rest = match_existing(src, dst, Counter(), exact_sizes=False)
    assert [(m.id, d) for m, d in matched] == [("1", "d1")] and [m.id for m in rest] == ["2"]
    # claims count by Message-ID alone too
    matched, rest = match_existing(src, dst, Counter({("mid", "<a@x>", 100): 1}), exact_sizes=False)
    assert matched == []


def test_altered_copies_are_candidates_only_when_no_claim_accounts_for_them():
    from migrator.march import altered_candidates, match_altered

    src = [M("1", size=100)]
    dst = [M("d1", size=98)]  # Dovecot stored CR CR LF as CR LF: two bytes shorter
    a, b = altered_candidates(src, dst, set(), Counter())
    assert [m.id for m in a] == ["1"] and [m.id for m in b] == ["d1"]
    assert match_altered(a, b, {"1": "h"}, {"d1": "h"}) == [(src[0], "d1")]
    assert match_altered(a, b, {"1": "h"}, {"d1": "other"}) == []  # same Message-ID, different content
    # a checkpoint row already accounts for the altered copy: a true duplicate must be copied
    a, b = altered_candidates(src, dst, set(), Counter({("mid", "<a@x>", 100): 1}))
    assert a == [] and b == []


@given(st.lists(st.sampled_from([b"a", b"b ", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\r\r", b"x\r"]), max_size=40))
def test_content_hash_is_the_hash_with_every_line_ending_as_lf(parts):
    """The fast path (CR LF -> LF by bytes.replace) gives what the general rule (every
    CR* LF and lone CR is one LF, trailing ones dropped) gives, whatever the endings."""
    raw = b"".join(parts)
    want = hashlib.sha256(re.sub(rb"\r*\n|\r", b"\n", raw).rstrip(b"\n")).hexdigest()
    assert content_hash(raw) == want
