"""POP3 -> IMAP through the real Dovecot POP3 service, end to end through the CLI.

A generated corpus (2,000 messages and a few hand-made ones: dot lines, no final
line break, Received/Date variants; attachments up to 5 MB, duplicates, messages
without Message-ID) is put into one INBOX and copied from POP3 to IMAP: the
destination must hold exactly the source's bytes, with the internal dates the
connector derives (topmost Received, else Date, else the listing time), once each,
also after kill -9 in the middle of the copy and between DELE and QUIT in delete
mode. TLS (POP3S, STLS), APOP, wrong passwords and dry runs are covered on small
mailboxes; XOAUTH2 against Dovecot's oauth2 passdb.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from integration.corpus import INBOX, CorpusMessage, generate, load_maildir
from integration.dovecot import DovecotServer, make_certificate
from integration.faultproxy import Fault, FaultProxy
from integration.harness import forget_user
from integration.snapshot import Snapshot, snapshot_imap
from integration.tokenserver import TokenServer
from migrator.connectors.pop3 import open_pop3
from migrator.errors import AuthError
from migrator.model import Account, OAuth, Secret

COUNT = 2000
PW = "pw-Pop3-Geheim-5150"
SMALL = 40  # messages in the mailboxes of the TLS / auth / dry-run tests
CET = timezone(timedelta(hours=1))

# Hand-made messages with the internal date the connector must derive (None: the
# time of the listing, i.e. the run). No bare CR: Dovecot's IMAP APPEND turns it into
# CRLF, so it could not arrive byte-exact (tests/test_pop3_fake.py covers it on the
# POP3 side).
EXTRAS: list[tuple[bytes, datetime | None]] = [
    (  # two hops: the topmost Received is the arrival here
        b"Received: from mx1 by pop.example; Tue, 03 Mar 2020 10:00:00 +0100\r\n"
        b"Received: from client by mx1; Tue, 03 Mar 2020 09:58:00 +0100\r\n"
        b"Date: Tue, 03 Mar 2020 09:57:00 +0100\r\nSubject: two hops\r\nMessage-ID: <hops@x>\r\n\r\nbody\r\n",
        datetime(2020, 3, 3, 10, 0, tzinfo=CET),
    ),
    (  # no Received: Date
        b"Date: Wed, 04 Mar 2020 08:00:00 +0000\r\nSubject: date only\r\nMessage-ID: <dateonly@x>\r\n\r\nbody\r\n",
        datetime(2020, 3, 4, 8, 0, tzinfo=UTC),
    ),
    (  # an unparseable Received date: Date
        b"Received: from a by b; not a date\r\nDate: Thu, 05 Mar 2020 07:00:00 +0000\r\nSubject: bad received\r\n"
        b"\r\nbody\r\n",
        datetime(2020, 3, 5, 7, 0, tzinfo=UTC),
    ),
    (b"Subject: no dates at all\r\nMessage-ID: <nodate@x>\r\n\r\nbody\r\n", None),
    (  # dot lines (dot-stuffed on the wire), no final line break
        b"Date: Fri, 06 Mar 2020 06:00:00 +0000\r\nSubject: dots\r\n\r\n.\r\n..\r\n.x\r\n. \r\nlast line, no CRLF",
        datetime(2020, 3, 6, 6, 0, tzinfo=UTC),
    ),
    (  # the last line is a lone dot, without line break
        b"Date: Sat, 07 Mar 2020 05:00:00 +0000\r\nSubject: ends in a dot\r\n\r\ntext\r\n.",
        datetime(2020, 3, 7, 5, 0, tzinfo=UTC),
    ),
]


# --------------------------------------------------------------------------- helpers
def migrator(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "MIGRATOR_SOURCE_PASSWORD": PW, "MIGRATOR_DEST_PASSWORD": PW, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args], capture_output=True, text=True, env=full, timeout=timeout
    )


def pop3_url(server: DovecotServer, user: str, *, port: int | None = None, query: str = "tls=off") -> str:
    return f"pop3://{user}@{server.host}:{port or server.pop3_port}" + (f"?{query}" if query else "")


def imap_url(server: DovecotServer, user: str) -> str:
    return f"imap://{user}@{server.host}:{server.imap_port}?tls=off"


def snap(server: DovecotServer, user: str) -> Snapshot:
    return snapshot_imap(server.host, server.imap_port, user, PW)


def shas(snapshot: Snapshot, folder: tuple[str, ...] = INBOX) -> Counter[str]:
    return Counter(f.sha256 for f in snapshot.get(folder, []))


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def runs(state: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(state) as db:
        return list(db.execute("select copied, matched, status from runs order by id"))


def state_count(state: Path, where: str) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(state, timeout=1) as db:
            return int(db.execute(f"select count(*) from messages where {where}").fetchone()[0])
    except sqlite3.Error:
        return 0


def inbox_messages(count: int, seed: int, max_attachment: int = 5 * 1024 * 1024) -> list[CorpusMessage]:
    """The corpus, all in INBOX, without flags (POP3 carries none), plus EXTRAS."""
    out = [
        CorpusMessage(INBOX, frozenset(), m.internal_date, m.raw)
        for m in generate(count, seed, max_attachment=max_attachment)
    ]
    fallback = datetime(2000, 1, 1, tzinfo=UTC)  # only the Maildir file time; POP3 ignores it
    out += [CorpusMessage(INBOX, frozenset(), date or fallback, raw) for raw, date in EXTRAS]
    return out


def expected_dates(messages: list[CorpusMessage]) -> list[datetime | None]:
    """The internal date the connector must derive for each message. Corpus messages
    carry one Received header with their planned date; a byte-identical duplicate
    carries its original's, so the first message with the same bytes decides."""
    extras = {raw: date for raw, date in EXTRAS}
    first: dict[bytes, datetime] = {}
    out: list[datetime | None] = []
    for m in messages:
        if m.raw in extras:
            out.append(extras[m.raw])
        else:
            out.append(first.setdefault(m.raw, m.internal_date))
    return out


def load(server: DovecotServer, user: str, messages: list[CorpusMessage]) -> None:
    load_maildir(messages, server.maildir(user), uid=server.mail_uid, gid=server.mail_gid, folders=[INBOX])
    server.force_resync(user)


def assert_copy_exact(dst: Snapshot, messages: list[CorpusMessage], run_started: datetime, run_ended: datetime) -> None:
    """INBOX holds each message's bytes exactly once with the derived internal date
    (messages without any date: the listing time, within the run)."""
    assert [k for k, v in dst.items() if v and k != INBOX] == []
    got = Counter((f.sha256, f.internal_date) for f in dst[INBOX])
    undated = Counter(sha(m.raw) for m, d in zip(messages, expected_dates(messages), strict=True) if d is None)
    want = Counter(
        (sha(m.raw), d.astimezone(UTC))
        for m, d in zip(messages, expected_dates(messages), strict=True)
        if d is not None
    )
    dated = Counter({k: n for k, n in got.items() if k[0] not in undated})
    assert dated == want
    for f in dst[INBOX]:
        if f.sha256 in undated:
            assert run_started - timedelta(seconds=1) <= f.internal_date <= run_ended + timedelta(seconds=1)
    assert shas(dst) == Counter(sha(m.raw) for m in messages)


def kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start the CLI, SIGKILL it as soon as ``ready()`` (or at ``timeout``)."""
    env = {**os.environ, "MIGRATOR_SOURCE_PASSWORD": PW, "MIGRATOR_DEST_PASSWORD": PW}
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrator", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended by itself (exit {proc.returncode}) before the kill"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


class RecordingProxy(FaultProxy):
    """A FaultProxy that also keeps what each client sent (POP3 commands are small)."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self._sent: dict[int, bytearray] = {}

    def _forward(self, link, direction, data, dst):  # type: ignore[no-untyped-def]
        if direction == "up":
            self._sent.setdefault(link.number, bytearray()).extend(data)
        return super()._forward(link, direction, data, dst)

    def sent_by_client(self, connection: int) -> bytes:
        return bytes(self._sent.get(connection, b""))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus() -> list[CorpusMessage]:
    return inbox_messages(COUNT, seed=21)


@pytest.fixture(scope="module")
def source(dovecot: DovecotServer, _user_counter, corpus) -> Iterator[str]:
    """A POP3 mailbox with the corpus, read-only for the tests that use it."""
    user = f"pop{next(_user_counter)}src"
    dovecot.add_user(user, PW)
    load(dovecot, user, corpus)
    assert sum(shas(snap(dovecot, user)).values()) == len(corpus)
    yield user
    forget_user(dovecot, user)  # tmpfs is RAM


@pytest.fixture
def users(dovecot: DovecotServer, new_user) -> Iterator[Callable[[], str]]:
    """Fresh users with the test password, removed after the test (tmpfs is RAM)."""
    made: list[str] = []

    def make() -> str:
        made.append(new_user(dovecot, PW))
        return made[-1]

    yield make
    for user in made:
        forget_user(dovecot, user)


@pytest.fixture
def dest(users: Callable[[], str]) -> str:
    return users()


@pytest.fixture
def small(dovecot: DovecotServer, users: Callable[[], str]) -> tuple[str, list[CorpusMessage]]:
    """A fresh POP3 mailbox with SMALL corpus messages plus EXTRAS."""
    user = users()
    messages = inbox_messages(SMALL, seed=5, max_attachment=200_000)
    load(dovecot, user, messages)
    return user, messages


# --------------------------------------------------------------------------- Dovecot itself
def _pop3_session(
    server: DovecotServer, user: str
) -> tuple[socket.socket, Callable[[str], bytes], Callable[[], bytes]]:
    sock = socket.create_connection((server.host, server.pop3_port), timeout=30)
    rfile = sock.makefile("rb")

    def command(line: str) -> bytes:
        sock.sendall(line.encode() + b"\r\n")
        answer = rfile.readline()
        assert answer.startswith(b"+OK"), answer
        return answer

    def body() -> bytes:  # a plain reading of RFC 1939 3, independent of the connector
        out = []
        while (line := rfile.readline()) != b".\r\n":
            out.append(line[1:] if line.startswith(b".") else line)
        return b"".join(out)

    rfile.readline()
    command(f"USER {user}")
    command(f"PASS {PW}")
    return sock, command, body


def test_dovecot_pop3_sizes_and_bytes_equal_imap(dovecot, source, corpus):
    """What the connector relies on: Dovecot's LIST size is IMAP's RFC822.SIZE and
    RETR gives IMAP's BODY[] bytes, plus CRLF where the message has no final line
    break (the terminating "." must start a line)."""
    known = {sha(m.raw): m.raw for m in corpus}
    seen: Counter[str] = Counter()
    sock, command, body = _pop3_session(dovecot, source)
    try:
        command("LIST")
        sizes = [int(line.split()[1]) for line in body().splitlines()]
        for n, size in enumerate(sizes, 1):
            command(f"RETR {n}")
            got = body()
            raw = known.get(sha(got))
            if raw is None:  # no final line break: Dovecot added one for the "." line
                assert got.endswith(b"\r\n"), f"message {n}"
                raw = known[sha(got[:-2])]
                assert not raw.endswith(b"\r\n")
            assert size == len(raw), f"message {n}"
            seen[sha(raw)] += 1
        command("QUIT")
    finally:
        sock.close()
    assert seen == Counter(sha(m.raw) for m in corpus)
    assert sorted(f.size for f in snap(dovecot, source)[INBOX]) == sorted(sizes)


# --------------------------------------------------------------------------- the copy
def test_copy_is_byte_exact_with_derived_dates_and_rerun_copies_nothing(dovecot, source, corpus, dest, tmp_path):
    state = tmp_path / "pop.db"
    args = ("copy", pop3_url(dovecot, source), imap_url(dovecot, dest), "--state", str(state))
    started = datetime.now(UTC).replace(microsecond=0)
    t0 = time.monotonic()
    first = migrator(*args)
    seconds = time.monotonic() - t0
    ended = datetime.now(UTC)
    assert first.returncode == 0, first.stdout + first.stderr
    rate = len(corpus) / seconds
    total = sum(len(m.raw) for m in corpus)
    print(f"\nPOP3 -> IMAP: {len(corpus)} messages, {total / 1e6:.0f} MB in {seconds:.1f} s: {rate:.0f} msg/s")
    assert_copy_exact(snap(dovecot, dest), corpus, started, ended)
    second = migrator(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert runs(state) == [(len(corpus), 0, "ok"), (0, 0, "ok")]
    assert sum(shas(snap(dovecot, dest)).values()) == len(corpus)
    # keep mode: the POP3 mailbox is untouched
    assert shas(snap(dovecot, source)) == Counter(sha(m.raw) for m in corpus)
    assert PW.encode() not in state.read_bytes()
    assert PW not in first.stdout + first.stderr + second.stdout + second.stderr


# --------------------------------------------------------------------------- delete mode
def test_delete_mode_survives_kill_9_mid_copy_and_between_dele_and_quit(dovecot, users, tmp_path):
    """kill -9 while copying, then kill -9 while QUIT is held back (after the DELEs):
    the POP3 mailbox keeps everything both times; the resumed run copies nothing
    again and empties it; the destination holds every message exactly once."""
    src_user, dst_user = users(), users()
    messages = inbox_messages(COUNT, seed=22, max_attachment=1024 * 1024)
    load(dovecot, src_user, messages)
    everything = Counter(sha(m.raw) for m in messages)
    state = tmp_path / "move.db"
    with RecordingProxy((dovecot.host, dovecot.pop3_port)) as proxy:
        args = ["copy", pop3_url(dovecot, src_user, port=proxy.port), imap_url(dovecot, dst_user)]
        args += ["--state", str(state), "--after-copy", "delete"]
        # 1. kill -9 in the middle of the copy
        kill_when(args, lambda: state_count(state, "status = 'copied'") >= 700)
        assert shas(snap(dovecot, src_user)) == everything  # no QUIT, nothing deleted
        assert not shas(snap(dovecot, dst_user)) - everything  # nothing twice, nothing foreign
        # 2. kill -9 after the DELEs, while QUIT is held back by the proxy
        proxy.add(Fault("stall", "up", pattern=b"QUIT"))
        kill_when(args, lambda: proxy.count("stall") > 0)
        # the held-back session had DELEted every message (Dovecot answered +OK to each)
        assert proxy.sent_by_client(proxy.injected[-1].connection).count(b"\r\nDELE ") == len(messages)
        assert shas(snap(dovecot, src_user)) == everything  # QUIT never arrived: nothing deleted
        assert shas(snap(dovecot, dst_user)) == everything  # all copied before the DELEs, once each
        assert state_count(state, "src_deleted = 1") == 0
        # 3. resume (the same source URL: the state knows the source by it)
        resumed = migrator(*args)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert runs(state)[-1][:2] == (0, 0)
    assert dovecot.doveadm("search", "-u", src_user, "mailbox", "INBOX", "ALL").strip() == ""
    assert shas(snap(dovecot, dst_user)) == everything
    assert state_count(state, "status in ('copied', 'matched') and src_deleted = 1") == len(messages)


def test_connection_cut_before_quit_deletes_nothing_then_the_retry_deletes(dovecot, small, dest, tmp_path):
    """The first QUIT never reaches the server (the proxy cuts the connection there):
    nothing is deleted and nothing recorded; the engine reconnects, and the second
    session's QUIT deletes every copied message."""
    src_user, messages = small
    state = tmp_path / "cut.db"
    with FaultProxy((dovecot.host, dovecot.pop3_port)) as proxy:
        proxy.add(Fault("drop", "up", pattern=b"QUIT"))
        out = migrator(
            "copy",
            pop3_url(dovecot, src_user, port=proxy.port),
            imap_url(dovecot, dest),
            "--state",
            str(state),
            "--after-copy",
            "delete",
            "--verbose",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert proxy.count("drop") == 1 and proxy.connections >= 2
    assert "may not have taken effect" in out.stdout + out.stderr  # the retry was for this reason
    assert dovecot.doveadm("search", "-u", src_user, "mailbox", "INBOX", "ALL").strip() == ""
    assert shas(snap(dovecot, dest)) == Counter(sha(m.raw) for m in messages)
    assert runs(state)[-1][:2] == (len(messages), 0)


def test_connection_dropped_at_login_is_retried_not_an_auth_failure(dovecot, small, dest, tmp_path):
    """The connection closes before the server answers APOP: poplib calls that
    "-ERR EOF", like a refused login; the engine must reconnect, not fail the mailbox."""
    src_user, messages = small
    state = tmp_path / "login.db"
    with FaultProxy((dovecot.host, dovecot.pop3_port)) as proxy:
        proxy.add(Fault("drop", "up", pattern=b"APOP "))
        src = pop3_url(dovecot, src_user, port=proxy.port)
        out = migrator("copy", src, imap_url(dovecot, dest), "--state", str(state))
        assert proxy.count("drop") == 1 and proxy.connections >= 2
    assert out.returncode == 0, out.stdout + out.stderr
    assert "connection lost during login" in out.stderr, out.stderr
    assert shas(snap(dovecot, dest)) == Counter(sha(m.raw) for m in messages)


def test_after_copy_delete_deletes_only_what_was_copied(dovecot, small, dest, tmp_path):
    """Messages the plan's filter leaves out stay on the POP3 server; the rest go to
    the configured pop3_folder, marked \\Seen (pop3_seen), and leave the server."""
    src_user, messages = small
    limit = 20_000
    plan = tmp_path / "pop.yaml"
    plan.write_text(
        f"""version: 1
name: popmove
state: popmove.db
endpoints:
  old: {{type: pop3, host: {dovecot.host}, port: {dovecot.pop3_port}, security: none, password_env: SRC_PW}}
  new: {{type: imap, host: {dovecot.host}, port: {dovecot.imap_port}, security: none, password_env: DST_PW}}
source: old
destination: new
defaults: {{after_copy: delete, pop3_folder: "From POP3/Inbox", pop3_seen: true, filters: {{max_size: {limit}}}}}
mailboxes:
  - id: box
    source: {{user: {src_user}}}
    destination: {{user: {dest}}}
""",
        encoding="utf-8",
    )
    out = migrator("run", str(plan), env={"SRC_PW": PW, "DST_PW": PW})
    assert out.returncode == 0, out.stdout + out.stderr
    small_ones = Counter(sha(m.raw) for m in messages if len(m.raw) <= limit)
    big_ones = Counter(sha(m.raw) for m in messages if len(m.raw) > limit)
    assert small_ones and big_ones
    assert shas(snap(dovecot, src_user)) == big_ones
    got = snap(dovecot, dest)
    target = ("From POP3", "Inbox")
    assert shas(got, target) == small_ones
    assert all(f.flags == frozenset({"\\Seen"}) for f in got[target])
    assert not got.get(INBOX)


# --------------------------------------------------------------------------- TLS, login, dry run
def _logins(server: DovecotServer, user: str) -> list[str]:
    """Dovecot's pop3-login method=... for ``user``, in order."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if "pop3-login: Info: Login:" in line and f"user=<{user}>" in line:
            out.append(line.split("method=", 1)[1].split(",", 1)[0])
    return out


def test_pop3s_with_ca_file_works_and_without_it_is_a_tls_error(dovecot, small, dest, tmp_path):
    src_user, messages = small
    pop3s = f"pop3s://{src_user}@{dovecot.host}:{dovecot.pop3s_port}"
    bad = migrator("copy", pop3s, imap_url(dovecot, dest), "--state", str(tmp_path / "a.db"))
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "certificate verification failed" in bad.stdout + bad.stderr
    assert "ca_file" in bad.stdout + bad.stderr  # says how to fix it
    good = migrator(
        "copy", f"{pop3s}?ca_file={dovecot.cert_path}", imap_url(dovecot, dest), "--state", str(tmp_path / "b.db")
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert shas(snap(dovecot, dest)) == Counter(sha(m.raw) for m in messages)
    assert _logins(dovecot, src_user)[-1] == "PLAIN"  # USER/PASS inside TLS


def test_stls_works_and_plain_connections_use_apop(dovecot, small, dest, tmp_path):
    src_user, messages = small
    stls = pop3_url(dovecot, src_user, query=f"ca_file={dovecot.cert_path}")  # pop3:// means STLS
    out = migrator("copy", stls, imap_url(dovecot, dest), "--state", str(tmp_path / "s.db"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert shas(snap(dovecot, dest)) == Counter(sha(m.raw) for m in messages)
    assert _logins(dovecot, src_user)[-1] == "PLAIN"
    again = migrator("copy", pop3_url(dovecot, src_user), imap_url(dovecot, dest), "--state", str(tmp_path / "p.db"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert runs(tmp_path / "p.db")[-1][:2] == (0, len(messages))  # a fresh state matches, copies nothing
    assert _logins(dovecot, src_user)[-1] == "APOP"  # no password on the wire without TLS


def test_wrong_password_exits_3_naming_the_user_not_the_password(dovecot, small, dest, tmp_path):
    src_user, _ = small
    for url in (pop3_url(dovecot, src_user), f"pop3s://{src_user}@{dovecot.host}:{dovecot.pop3s_port}?verify=off"):
        out = migrator(
            "copy",
            url,
            imap_url(dovecot, dest),
            "--state",
            str(tmp_path / "w.db"),
            env={"MIGRATOR_SOURCE_PASSWORD": "Not-The-Pass-9"},
        )
        text = out.stdout + out.stderr
        assert out.returncode == 3, text
        assert src_user in text and "login failed" in text
        assert "Not-The-Pass-9" not in text


def test_dry_run_deletes_nothing_and_writes_nothing(dovecot, small, dest, tmp_path):
    src_user, messages = small
    state = tmp_path / "dry.db"
    out = migrator(
        "copy",
        pop3_url(dovecot, src_user),
        imap_url(dovecot, dest),
        "--state",
        str(state),
        "--after-copy",
        "delete",
        "--dry-run",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"would copy {len(messages):,} message(s)" in out.stdout
    assert shas(snap(dovecot, src_user)) == Counter(sha(m.raw) for m in messages)
    assert dovecot.doveadm("search", "-u", dest, "ALL").strip() == ""
    assert not state.exists()


def test_xoauth2_login_against_dovecot_oauth2(monkeypatch):
    """AUTH XOAUTH2 with a client-credentials token from a local token endpoint,
    checked by Dovecot's oauth2 passdb (introspection); a bad token is an AuthError
    naming the user, never the token."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="migrator-pop3oauth-", dir=parent))
    root.chmod(0o755)
    try:
        cert, key = make_certificate(root)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        with TokenServer(cert, key, clients={"app-1": "cs-9"}, tenant_domains={"contoso": "contoso.test"}) as tokens:
            server = DovecotServer(parent_dir=root, oauth2=(tokens.introspection_url, str(cert))).start()
            try:
                server.add_user("popo", PW)
                messages = inbox_messages(5, seed=9, max_attachment=50_000)
                load(server, "popo", messages)
                oauth = OAuth(
                    flow="client_credentials",
                    tenant="contoso",
                    client_id="app-1",
                    client_secret=Secret(value="cs-9"),
                    authority=tokens.authority("contoso"),
                    validate_authority=False,
                )
                account = Account(
                    type="pop3",
                    host=server.host,
                    port=server.pop3s_port,
                    security="tls",
                    ca_file=str(server.cert_path),
                    user="popo@contoso.test",
                    oauth=oauth,
                )
                store = open_pop3(account, "source")
                folder = store.list_folders()[0]
                got = Counter(sha(raw) for _, raw in store.fetch(folder, store.list_messages(folder)))
                store.close()
                assert got == Counter(sha(m.raw) for m in messages)
                assert _logins(server, "popo@contoso.test")[-1] == "XOAUTH2"
                token_file = root / "token"
                token_file.write_text("eyJ.not-a-live-token.x\n", encoding="utf-8")
                bad = Account(
                    type="pop3",
                    host=server.host,
                    port=server.pop3s_port,
                    security="tls",
                    ca_file=str(server.cert_path),
                    user="popo@contoso.test",
                    oauth=OAuth(flow="token_file", token_file=str(token_file)),
                )
                with pytest.raises(AuthError, match=r"XOAUTH2 login failed for popo@contoso\.test") as info:
                    open_pop3(bad, "source")
                assert "not-a-live-token" not in str(info.value)
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
