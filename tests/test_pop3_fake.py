"""The POP3 connector against servers that are not Dovecot (tests/pop3_server.py):
no UIDL, no TOP, no CAPA, no PIPELINING, refused TOP/RETR, odd answers, a cut at
QUIT, APOP, XOAUTH2; plus the pure helpers (exact multi-line reading, dates).

Dovecot-backed tests (2,000 messages, CLI, TLS, kill -9) are in integration/test_pop3.py.
"""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.connectors.local import open_maildir
from migrator.connectors.pop3 import CHUNK, WINDOW, fallback_ids, header_date, open_pop3, read_multiline
from migrator.errors import AuthError, ConnectError, PlanError, TLSError, TransientError
from migrator.model import Account, OAuth
from tests.pop3_server import PASSWORD, USER, FakePop3, Quirks


def msg(n: int, body: bytes = b"hello\r\n", *, mid: bool = True, extra: bytes = b"") -> bytes:
    head = b"Received: from a by b; Mon, 02 Mar 2020 10:%02d:00 +0100\r\n" % n
    head += b"Subject: message %d\r\nDate: Sun, 01 Mar 2020 09:00:00 +0000\r\n" % n
    if mid:
        head += b"Message-ID: <m%d@example.com>\r\n" % n
    return head + extra + b"\r\n" + body


runner = CliRunner()


def listing(server: FakePop3, **kwargs: object):
    store = open_pop3(server.account(**kwargs), "source")
    try:
        folder = store.list_folders()[0]
        metas = store.list_messages(folder)
        got = dict((m.id, raw) for m, raw in store.fetch(folder, metas))
        return metas, got
    finally:
        store.close()


# --------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (b".\r\n", b""),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n..x\r\nx.\r\n.\r\n", b"..\r\n.x\r\nx.\r\n"),
        (b"a\r\n .\r\n.\r\n", b"a\r\n .\r\n"),
        (b"bare\nlf\n.\n", b"bare\nlf\n"),
        (b"cr\rinside\r\n.\r\n", b"cr\rinside\r\n"),
        (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    ],
)
def test_read_multiline_undoes_dot_stuffing_exactly(wire, body):
    stream = io.BufferedReader(io.BytesIO(wire + b"+OK next\r\n"))
    assert read_multiline(stream.readline) == body
    assert stream.readline() == b"+OK next\r\n"  # nothing of the next answer was consumed


def test_read_multiline_long_lines_are_read_in_pieces_and_unstuffed_only_at_line_start():
    # a stuffed line longer than CHUNK whose second piece starts with "." (not a line start)
    line = b"." + b"x" * (CHUNK - 2) + b".tail\r\n"
    wire = b"." + line + line[1:] + b".\r\n"
    assert read_multiline(io.BufferedReader(io.BytesIO(wire)).readline) == line + line[1:]


def test_read_multiline_eof_is_an_error():
    with pytest.raises(EOFError):
        read_multiline(io.BufferedReader(io.BytesIO(b"half a message\r\n")).readline)


CET = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # the topmost Received header was written by the last hop (this mailbox's server)
        (
            b"Received: from x by mx; Tue, 03 Mar 2020 10:00:00 +0100\r\n"
            b"Received: from y by x; Mon, 02 Mar 2020 09:00:00 +0100\r\nDate: Sun, 01 Mar 2020 08:00:00 +0000\r\n\r\n",
            datetime(2020, 3, 3, 10, 0, tzinfo=CET),
        ),
        # folded Received, date after the last ";"
        (
            b"Received: from x (x [192.0.2.1]; helo)\r\n\tby mx with ESMTP;\r\n"
            b" Tue, 3 Mar 2020 10:00:00 +0100 (CET)\r\n\r\n",
            datetime(2020, 3, 3, 10, 0, tzinfo=CET),
        ),
        # an unparseable topmost Received: the next one
        (
            b"Received: from x by mx; yesterday\r\nReceived: from y by x; Mon, 02 Mar 2020 09:00:00 +0100\r\n\r\n",
            datetime(2020, 3, 2, 9, 0, tzinfo=CET),
        ),
        # no Received: Date
        (b"Date: Sun, 01 Mar 2020 08:00:00 +0000\r\nSubject: x\r\n\r\n", datetime(2020, 3, 1, 8, 0, tzinfo=UTC)),
        # "-0000" (no zone information): UTC
        (b"Date: Sun, 01 Mar 2020 08:00:00 -0000\r\n\r\n", datetime(2020, 3, 1, 8, 0, tzinfo=UTC)),
        # a header case-insensitive, LF endings
        (b"DATE: Sun, 01 Mar 2020 08:00:00 +0000\n\n", datetime(2020, 3, 1, 8, 0, tzinfo=UTC)),
        # nothing usable
        (b"Date: someday\r\nSubject: x\r\n\r\n", None),
        (b"Subject: x\r\n\r\n", None),
        # a Received inside the body does not count
        (b"Subject: x\r\n\r\nReceived: from x by y; Tue, 03 Mar 2020 10:00:00 +0100\r\n", None),
    ],
)
def test_header_date(headers, expected):
    got = header_date(headers)
    assert got == expected
    if got is not None:
        assert got.utcoffset() == expected.utcoffset()


def test_fallback_ids_are_size_and_header_hash_with_suffixes_for_repeats():
    a, b = b"Subject: a\r\n\r\n", b"Subject: b\r\n\r\n"
    ha, hb = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    assert fallback_ids([(10, a), (10, b), (10, a), (11, a), (10, a)]) == [
        f"nouidl-10-{ha}",
        f"nouidl-10-{hb}",
        f"nouidl-10-{ha}-2",
        f"nouidl-11-{ha}",
        f"nouidl-10-{ha}-3",
    ]


# --------------------------------------------------------------------------- against the fake server
def test_no_uidl_fallback_ids_are_stable_distinct_and_suffixed():
    same = msg(1)
    other_body_same_size = msg(1, b"HELLO\r\n")  # same headers and size, different body
    messages = [same, msg(2), same, msg(3, mid=False), same, other_body_same_size]
    with FakePop3(messages, Quirks(uidl=False)) as server:
        first, got = listing(server)
        second, _ = listing(server)
    ids = [m.id for m in first]
    assert ids == [m.id for m in second]  # stable across sessions
    assert len(set(ids)) == len(ids)  # distinct
    head = same[: same.index(b"\r\n\r\n") + 4]
    base = f"nouidl-{len(same)}-{hashlib.sha256(head).hexdigest()}"
    assert ids[0] == base and ids[2] == base + "-2" and ids[4] == base + "-3" and ids[5] == base + "-4"
    assert all(re.fullmatch(r"nouidl-\d+-[0-9a-f]{64}(-\d+)?", i) for i in ids)
    assert [got[i] for i in ids] == messages  # bytes follow the ids
    assert "UIDL" in server.commands


def test_without_top_headers_come_from_retr():
    messages = [msg(1), msg(2), msg(3, mid=False)]
    with FakePop3(messages, Quirks(top=False)) as server:
        metas, got = listing(server)
    assert not any(c.startswith("TOP") for c in server.commands)  # CAPA said there is no TOP
    assert [m.message_id for m in metas] == ["<m1@example.com>", "<m2@example.com>", None]
    assert [m.internal_date for m in metas] == [datetime(2020, 3, 2, 10, n, tzinfo=CET) for n in (1, 2, 3)]
    assert [got[m.id] for m in metas] == messages


def test_rfc1939_server_without_capa_is_probed():
    messages = [msg(1), msg(2)]
    with FakePop3(messages, Quirks(capa=False, top=False, uidl=False, pipelining=False)) as server:
        metas, got = listing(server)
    assert [m.message_id for m in metas] == ["<m1@example.com>", "<m2@example.com>"]
    assert all(m.id.startswith("nouidl-") for m in metas)
    assert [got[m.id] for m in metas] == messages
    assert server.commands.count("TOP 1 0") == 1  # the probe, then RETR for all
    assert server.sent_ahead == 0


def test_top_refused_for_one_message_reads_that_one_whole():
    messages = [msg(n) for n in range(1, 6)]
    with FakePop3(messages, Quirks(top_refused=frozenset({3}))) as server:
        metas, got = listing(server)
    assert [m.message_id for m in metas] == [f"<m{n}@example.com>" for n in range(1, 6)]
    assert metas[2].internal_date == datetime(2020, 3, 2, 10, 3, tzinfo=CET)
    assert [got[m.id] for m in metas] == messages
    assert server.commands.count("RETR 3") == 2  # once to list, once to copy


def test_unreadable_message_is_listed_but_not_fetched_and_the_others_are():
    messages = [msg(n) for n in range(1, 5)]
    with FakePop3(messages, Quirks(top_refused=frozenset({2}), retr_refused=frozenset({2}))) as server:
        before = datetime.now(UTC).replace(microsecond=0)
        metas, got = listing(server)
    assert len(metas) == 4 and metas[1].message_id is None
    assert before <= metas[1].internal_date <= datetime.now(UTC)  # listing time
    assert metas[1].id not in got
    assert [got[metas[i].id] for i in (0, 2, 3)] == [messages[i] for i in (0, 2, 3)]


def test_dot_stuffed_lines_and_missing_final_crlf_come_back_exact():
    messages = [
        b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n. \r\nend\r\n",
        b".starts with a dot: x\r\n\r\nbody\r\n",
        b"Subject: no final line break\r\n\r\nlast line",
        b"Subject: ends in CR\r\n\r\nlast line\r",
        b"Subject: ends in dot\r\n\r\n.",
        b"Subject: empty body\r\n\r\n",
        b"Subject: long\r\n\r\n." + b"y" * (3 * CHUNK) + b"\r\n.\r\n",
        b"Subject: bare LF\n\nline\n.\n",
    ]
    with FakePop3(messages) as server:
        metas, got = listing(server)
    assert [got[m.id] for m in metas] == messages
    assert [m.size for m in metas] == [len(m) for m in messages]


def test_pipelining_only_when_offered():
    messages = [msg(n) for n in range(1, 2 * WINDOW + 5)]
    with FakePop3(messages, Quirks(pipelining=False)) as plain:
        metas, got = listing(plain)
    assert plain.sent_ahead == 0  # every command waited for the previous answer
    assert [got[m.id] for m in metas] == messages
    with FakePop3(messages) as piped:
        metas2, got2 = listing(piped)
    assert piped.sent_ahead > WINDOW  # TOPs and RETRs went out in windows
    assert [got2[m.id] for m in metas2] == messages
    assert [m.id for m in metas] == [m.id for m in metas2]


def test_delete_removes_exactly_the_given_ids_at_quit():
    messages = [msg(n) for n in range(1, 7)]
    with FakePop3(messages) as server:
        store = open_pop3(server.account(), "source")
        metas = store.list_messages(store.list_folders()[0])
        gone = [metas[1], metas[4], replace(metas[0], id="not-on-the-server")]
        store.delete(store.list_folders()[0], gone)
        assert server.maildrop == messages  # nothing before QUIT
        # a deleted message is not fetched again in the same session
        assert [m.id for m, _ in store.fetch(store.list_folders()[0], metas)] == [metas[i].id for i in (0, 2, 3, 5)]
        store.close()
        store.close()  # idempotent
        assert server.maildrop == [messages[i] for i in (0, 2, 3, 5)]
        after, _ = listing(server)
    assert [m.id for m in after] == [metas[i].id for i in (0, 2, 3, 5)]  # UIDLs unchanged


def test_ids_from_an_older_session_map_to_this_sessions_numbers():
    """Another client deleted message 1 meanwhile: every number shifts. Fetch and
    delete with the old listing must touch exactly the named messages."""
    messages = [msg(n) for n in range(1, 6)]
    with FakePop3(messages) as server:
        old, _ = listing(server)
        other = open_pop3(server.account(), "source")
        other.delete(other.list_folders()[0], [old[0]])
        other.close()
        store = open_pop3(server.account(), "source")
        folder = store.list_folders()[0]
        got = dict((m.id, raw) for m, raw in store.fetch(folder, old))
        assert got == {old[i].id: messages[i] for i in range(1, 5)}  # the vanished one is not yielded
        store.delete(folder, [old[0], old[2]])  # old[0] is gone: skipped; old[2] is now number 2
        store.close()
        assert server.maildrop == [messages[i] for i in (1, 3, 4)]
        assert "DELE 2" in server.commands and server.commands.count("DELE 1") == 1  # that one by `other`


def test_delete_without_uidl_uses_this_sessions_fallback_ids():
    same = msg(1)
    messages = [same, msg(2), same]
    with FakePop3(messages, Quirks(uidl=False)) as server:
        store = open_pop3(server.account(), "source")
        metas = store.list_messages(store.list_folders()[0])
        store.delete(store.list_folders()[0], [metas[2]])  # the second copy ("-2")
        store.close()
        assert len(server.maildrop) == 2 and server.maildrop[1] == messages[1]


def test_connection_cut_at_quit_deletes_nothing_and_close_says_so():
    messages = [msg(n) for n in range(1, 4)]
    with FakePop3(messages, Quirks(drop_at_quit=True)) as server:
        store = open_pop3(server.account(), "source")
        metas = store.list_messages(store.list_folders()[0])
        store.delete(store.list_folders()[0], metas[:2])
        with pytest.raises(TransientError, match=r"deletion of 2 message\(s\) may not have taken effect"):
            store.close()
        store.close()  # once is enough
        assert server.maildrop == messages
        # without deletions a cut at QUIT is not an error
        quiet = open_pop3(server.account(), "source")
        quiet.list_messages(quiet.list_folders()[0])
        quiet.close()


def test_odd_answer_drops_the_connection_and_close_does_not_raise():
    with FakePop3([msg(1)], Quirks(odd_reply_to="TOP")) as server:
        store = open_pop3(server.account(), "source")
        with pytest.raises(TransientError, match="unexpected answer"):
            store.list_messages(store.list_folders()[0])
        with pytest.raises(TransientError, match="connection closed"):
            store.list_messages(store.list_folders()[0])
        store.close()


def test_timeout_is_transient():
    with FakePop3([msg(1)], Quirks(stall_on="RETR")) as server:
        store = open_pop3(server.account(timeout=0.5), "source")
        metas = store.list_messages(store.list_folders()[0])
        with pytest.raises(TransientError, match="timed out"):
            list(store.fetch(store.list_folders()[0], metas))
        store.close()


def test_refusing_greeting_is_a_connect_error():
    with (
        FakePop3([], Quirks(greeting="-ERR [SYS/TEMP] too busy")) as server,
        pytest.raises(ConnectError, match="too busy") as info,
    ):
        open_pop3(server.account(), "source")
    assert info.value.retryable


def test_wrong_password_names_user_and_host_never_the_password():
    with FakePop3([msg(1)]) as server, pytest.raises(AuthError) as info:
        open_pop3(server.account(password="Wr0ng-Pass"), "source")
    text = str(info.value)
    assert USER in text and server.host in text and "Wr0ng-Pass" not in text
    assert not info.value.retryable


def test_apop_is_used_on_plain_connections_and_a_refusal_never_falls_back_to_pass():
    with FakePop3([msg(1)], Quirks(apop=True)) as server:
        metas, _ = listing(server)
        assert len(metas) == 1
        assert [c.split()[0] for c in server.commands[:2]] == ["CAPA", "APOP"]
        server.commands.clear()
        with pytest.raises(AuthError, match=f"APOP login failed for {USER}") as info:
            open_pop3(server.account(password="Wr0ng-Pass"), "source")
        assert "Wr0ng-Pass" not in str(info.value)
        assert not any(c.split()[0] in ("USER", "PASS") for c in server.commands)
        # auth: password forces USER/PASS
        server.commands.clear()
        store = open_pop3(replace(server.account(), options={"auth": "password"}), "source")
        store.close()
        assert [c.split()[0] for c in server.commands[:3]] == ["CAPA", "USER", "PASS"]


def test_stls_not_offered_is_a_tls_error():
    with FakePop3([msg(1)]) as server, pytest.raises(TLSError, match="does not offer STLS"):
        open_pop3(replace(server.account(), security="starttls"), "source")


def test_pop3_is_never_a_destination():
    with pytest.raises(PlanError, match="only be a migration source"):
        open_pop3(Account(type="pop3", host="127.0.0.1", port=1, user="x"), "destination")


def test_xoauth2_login(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n", encoding="utf-8")
    oauth = OAuth(flow="token_file", token_file=str(token_file))
    with FakePop3([msg(1)], Quirks(xoauth2_token="tok-123")) as server:
        account = replace(server.account(), secret=None, oauth=oauth)
        store = open_pop3(account, "source")
        assert len(store.list_messages(store.list_folders()[0])) == 1
        store.close()
        assert server.commands[1] == "AUTH XOAUTH2"
        token_file.write_text("expired\n", encoding="utf-8")
        with pytest.raises(AuthError, match=f"XOAUTH2 login failed for {USER}") as info:
            open_pop3(account, "source")
        assert "expired" not in str(info.value)


# --------------------------------------------------------------------------- through the CLI and engine
def test_move_from_a_server_without_uidl_into_maildir(tmp_path):
    """POP3 (no UIDL, no PIPELINING) -> Maildir with --after-copy delete: everything
    arrives once, the maildrop ends empty, a second run copies nothing."""
    same = msg(1)
    messages = [same, msg(2), same, msg(3, mid=False), msg(4, b".\r\n..\r\nlast")]
    dst, state = tmp_path / "Maildir", tmp_path / "s.db"
    with FakePop3(messages, Quirks(uidl=False, pipelining=False)) as server:
        src = f"pop3://{USER}@{server.host}:{server.port}?tls=off"
        args = ["copy", src, f"maildir:{dst}", "--state", str(state), "--after-copy", "delete"]
        env = {"MIGRATOR_SOURCE_PASSWORD": PASSWORD}
        first = runner.invoke(app, args, env=env)
        assert first.exit_code == 0, first.output
        assert server.maildrop == []
        second = runner.invoke(app, args, env=env)
        assert second.exit_code == 0, second.output
        assert "copied 0 message(s)" in second.output
    store = open_maildir(Account(type="maildir", path=str(dst)), "source")
    folder = store.list_folders()[0]
    stored = sorted(raw for _, raw in store.fetch(folder, store.list_messages(folder)))
    store.close()
    assert stored == sorted(messages)
    with sqlite3.connect(state) as db:
        assert db.execute("select copied from runs order by id").fetchall() == [(5,), (0,)]
    assert PASSWORD.encode() not in state.read_bytes()
