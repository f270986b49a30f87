"""Pure parts of the EWS connector: flags <-> MAPI state, the stamp, request sizing,
endpoint and version settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.connectors.ews import (
    MSGFLAG_READ,
    MSGFLAG_UNMODIFIED,
    MSGFLAG_UNSENT,
    _endpoint,
    _version,
    encoded_size,
    folder_validity,
    from_mapi,
    request_batches,
    source_key,
    to_mapi,
)
from migrator.errors import PlanError
from migrator.model import Account

SYSTEM = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft"]
KEYWORDS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda k: not k.startswith("\\")
)


def back(flags: frozenset[str]) -> frozenset[str]:
    state = to_mapi(flags)
    return from_mapi(
        state.is_read,
        bool(state.message_flags & MSGFLAG_UNSENT),
        state.flag_status,
        state.last_verb,
        state.categories,
    )


@given(st.sets(st.sampled_from(SYSTEM)), st.sets(KEYWORDS | st.sampled_from(["$Forwarded", "$MDNSent", "Work"])))
def test_flags_survive_the_mapi_round_trip(system, keywords):
    flags = frozenset(system | keywords)
    assert back(flags) == flags


def test_deleted_has_no_exchange_equivalent():
    assert back(frozenset({"\\Deleted", "\\Seen"})) == frozenset({"\\Seen"})


@pytest.mark.parametrize(
    ("flags", "message_flags"),
    [
        (set(), MSGFLAG_UNMODIFIED),
        ({"\\Seen"}, MSGFLAG_UNMODIFIED | MSGFLAG_READ),
        ({"\\Draft"}, MSGFLAG_UNMODIFIED | MSGFLAG_UNSENT),
        ({"\\Seen", "\\Draft", "\\Flagged", "Work"}, MSGFLAG_UNMODIFIED | MSGFLAG_READ | MSGFLAG_UNSENT),
    ],
)
def test_message_flags_make_a_received_message_and_unsent_only_for_drafts(flags, message_flags):
    assert to_mapi(frozenset(flags)).message_flags == message_flags


def test_answered_forwarded_flagged_and_keywords():
    s = to_mapi(frozenset({"\\Answered", "$Forwarded", "Work", "Later", "\\Flagged"}))
    assert (s.last_verb, s.flag_status, s.categories) == (102, 2, ("$Forwarded", "Later", "Work"))
    s = to_mapi(frozenset({"$Forwarded"}))
    assert (s.last_verb, s.categories) == (104, ())
    assert from_mapi(False, False, None, 103, None) == frozenset({"\\Answered"})  # reply to all
    assert from_mapi(True, False, 1, None, ["Blue"]) == frozenset({"\\Seen", "Blue"})  # complete is not flagged


def test_the_stamp_depends_on_the_source_id_and_the_exact_bytes():
    a = source_key("17", b"message")
    assert a == source_key("17", b"message") and len(a) == 64
    assert len({a, source_key("18", b"message"), source_key("17", b"message "), source_key("1", b"7message")}) == 4


def test_requests_are_cut_by_base64_bytes_and_count_in_order():
    assert encoded_size(0) == 0 and encoded_size(1) == 4 and encoded_size(3) == 4 and encoded_size(4) == 8
    sizes = [3_000_000, 3_000_000, 100, 20_000_000, 5, 5, 5]
    got = request_batches(sizes, 10 * 1024 * 1024, 2)
    assert [i for b in got for i in b] == list(range(len(sizes)))
    assert got == [[0, 1], [2], [3], [4, 5], [6]]
    for batch in got:
        assert len(batch) == 1 or sum(encoded_size(sizes[i]) + 2048 for i in batch) <= 10 * 1024 * 1024


def test_endpoint_and_version_settings():
    explicit = Account(
        type="ews", host="mail.example", options={"service_endpoint": "https://x.example/EWS/Exchange.asmx"}
    )
    assert _endpoint(explicit) == "https://x.example/EWS/Exchange.asmx"
    assert _endpoint(Account(type="ews", host="mail.example", port=443)) == "https://mail.example/EWS/Exchange.asmx"
    plain = Account(type="ews", host="10.0.0.5", port=8080, security="none")
    assert _endpoint(plain) == "http://10.0.0.5:8080/EWS/Exchange.asmx"
    with pytest.raises(PlanError, match="service_endpoint or host"):
        _endpoint(Account(type="ews"))
    assert _version(Account(type="ews")) is None
    assert _version(Account(type="ews", options={"version": "Exchange2016"})).api_version == "Exchange2016"
    assert _version(Account(type="ews", options={"version": "exchange2013_SP1"})).api_version == "Exchange2013_SP1"
    with pytest.raises(PlanError, match="unknown EWS version"):
        _version(Account(type="ews", options={"version": "Exchange2003"}))


def test_folder_validity_is_stable_per_folder_id():
    assert folder_validity("AAMkAD=") == folder_validity("AAMkAD=") != folder_validity("AAMkAE=")
    assert 0 <= folder_validity("x" * 500) < 2**31
