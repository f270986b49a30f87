"""The exchange-online connector against Dovecot behind a proxy that answers like
Exchange Online (integration/exoproxy.py), logging in with XOAUTH2 tokens from a local
token endpoint (integration/tokenserver.py) that Dovecot checks through its oauth2
passdb: the connector-level rules, then an end-to-end run (expiring tokens, throttling).
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from integration.corpus import FOLDERS, CorpusMessage, generate, load_maildir
from integration.dovecot import DovecotServer, make_certificate
from integration.exoproxy import ExoProxy, ExoRules
from integration.snapshot import diff_snapshots, snapshot_imap
from integration.tokenserver import TokenServer
from migrator.auth import IMAP_SCOPE
from migrator.connectors.base import open_store
from migrator.connectors.exo import MDN_SENT, RESERVED_NAMES, ExoStore, adapt_message, throttle_seconds
from migrator.connectors.imap import open_imap
from migrator.connectors.longlines import longest_line
from migrator.errors import MessageError, TransientError
from migrator.model import Account, FolderInfo, MessageMeta, OAuth, Secret, crlf_size

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "cs-Very-Secret-Value-9"
TENANT = "contoso"
DOMAIN = "contoso.test"


class Exo:
    """Token endpoint + Dovecot (oauth2 passdb) + a factory of proxies."""

    def __init__(self, root: Path) -> None:
        self.cert, self.key = make_certificate(root)
        self.tokens = TokenServer(
            self.cert, self.key, lifetime=20, clients={CLIENT_ID: CLIENT_SECRET}, tenant_domains={TENANT: DOMAIN}
        )
        self.dovecot = DovecotServer(parent_dir=root, oauth2=("", str(self.cert)))
        self.proxies: list[ExoProxy] = []
        self._users = 0

    def start(self) -> Exo:
        self.tokens.start()
        self.dovecot.oauth2 = (self.tokens.introspection_url, str(self.cert))
        self.dovecot.start()
        return self

    def stop(self) -> None:
        for p in self.proxies:
            p.stop()
        self.dovecot.stop()
        self.tokens.stop()

    def new_user(self) -> str:
        self._users += 1
        name = f"exo{self._users}u{os.getpid()}"
        self.dovecot.add_user(name, "pw")
        return f"{name}@{DOMAIN}"

    def token_expiry(self, token: str) -> float | None:
        hit = self.tokens.lookup(token)
        return hit.expires if hit else None

    def proxy(self, **rules: object) -> ExoProxy:
        rules.setdefault("token_expiry", self.token_expiry)
        p = ExoProxy((self.dovecot.host, self.dovecot.imap_port), self.cert, self.key, ExoRules(**rules))  # type: ignore[arg-type]
        self.proxies.append(p.start())
        return p

    def oauth(self, **changes: object) -> OAuth:
        oauth = OAuth(
            flow="client_credentials",
            tenant=TENANT,
            client_id=CLIENT_ID,
            client_secret=Secret(value=CLIENT_SECRET),
            authority=self.tokens.authority(TENANT),
            validate_authority=False,
        )
        return replace(oauth, **changes)  # type: ignore[arg-type]

    def account(self, proxy: ExoProxy, user: str, kind: str = "exchange-online", **options: object) -> Account:
        return Account(
            type=kind,
            host="127.0.0.1",
            port=proxy.port,
            security="tls",
            ca_file=str(self.cert),
            user=user,
            oauth=self.oauth(),
            options=options,
        )


@pytest.fixture(scope="module")
def exo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exo]:
    root = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else tmp_path_factory.mktemp("exo")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="migrator-exo-", dir=root))
    base.chmod(0o755)
    old = os.environ.get("REQUESTS_CA_BUNDLE")
    env = Exo(base)
    os.environ["REQUESTS_CA_BUNDLE"] = str(env.cert)
    env.start()
    try:
        yield env
    finally:
        env.stop()
        if old is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = old
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def msg(n: int, body: bytes = b"hello\r\n", extra: bytes = b"") -> bytes:
    return (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: m{n}\r\nMessage-ID: <m{n}@example.test>\r\n".encode()
        + extra
        + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + body
    )


def meta(n: int, raw: bytes, flags: frozenset[str] = frozenset()) -> MessageMeta:
    return MessageMeta(id=str(n), size=crlf_size(raw), flags=flags, message_id=f"<m{n}@example.test>")


def fetch_all(store: ExoStore | object, folder: FolderInfo) -> dict[str, tuple[MessageMeta, bytes]]:
    listing = store.list_messages(folder)  # type: ignore[attr-defined]
    return {m.message_id or m.id: (m, raw) for m, raw in store.fetch(folder, listing)}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- pure
def test_throttle_text() -> None:
    assert throttle_seconds("NO Request is throttled. Suggested Backoff Time: 299609 milliseconds") == 299.609
    assert throttle_seconds("BAD Request is throttled. Suggested Backoff Time: 92 milliseconds") == 0.092
    assert throttle_seconds("NO [TRYCREATE] no such folder") is None


def test_adapt_is_idempotent_and_keeps_short_messages() -> None:
    short = msg(1)
    assert adapt_message(meta(1, short), short) == (short, None)
    long = msg(2, b"<p>" + b"word " * 4000 + b"</p>\r\n")
    fixed, note = adapt_message(meta(2, long), long)
    assert note and "re-encoded from 7bit to quoted-printable" in note and "content unchanged" in note
    assert longest_line(fixed) <= 9_900
    assert fixed.startswith(f"X-Migrator-Reencoded: original-size={crlf_size(long)}\r\n".encode())
    assert adapt_message(meta(2, long), fixed) == (fixed, None)
    old = email.message_from_bytes(long, policy=email.policy.default)
    new = email.message_from_bytes(fixed, policy=email.policy.default)
    assert new.get_payload(decode=True) == old.get_payload(decode=True)


# --------------------------------------------------------------------------- connector
def test_capabilities_are_exchange_online_rules(exo: Exo) -> None:
    proxy = exo.proxy(throttle_every=0)
    user = exo.new_user()
    store = open_store(exo.account(proxy, user), "destination")
    try:
        assert isinstance(store, ExoStore)
        caps = store.capabilities
        assert caps.max_message_bytes == 35 * 1024 * 1024
        assert caps.max_connections == 4
        assert caps.max_line_length == 9_900 and caps.adapts_messages
        assert "Calendar" in caps.reserved_names and caps.reserved_names == RESERVED_NAMES
        assert not caps.append_returns_id or caps.append_returns_id  # UIDPLUS is kept
        assert store.list_folders()[0].path == ("INBOX",)
    finally:
        store.close()
    store = open_store(exo.account(proxy, user, max_message_size=150 * 1024 * 1024, max_connections=2), "destination")
    try:
        assert store.capabilities.max_message_bytes == 150 * 1024 * 1024
        assert store.capabilities.max_connections == 2
    finally:
        store.close()
    logins = [e for e in proxy.events if e.kind == "login"]
    assert [e.detail for e in logins] == [user, user]  # XOAUTH2 through the proxy, checked by Dovecot


@pytest.mark.parametrize("style", ["no", "bad-bye"])
def test_throttling_is_transient_with_the_server_backoff(exo: Exo, style: str) -> None:
    proxy = exo.proxy(throttle_every=3, backoff_ms=700, throttle_style=style)
    user = exo.new_user()
    store = open_store(exo.account(proxy, user), "destination")
    inbox = store.find_folder(("INBOX",))
    assert inbox is not None
    raws = [msg(i) for i in range(3)]
    store.append(inbox, [(meta(0, raws[0]), raws[0])])
    store.append(inbox, [(meta(1, raws[1]), raws[1])])
    with pytest.raises(TransientError) as err:
        store.append(inbox, [(meta(2, raws[2]), raws[2])])
    assert err.value.backoff_seconds == pytest.approx(0.7)
    assert "throttled" in str(err.value)
    store.close()
    again = open_store(exo.account(proxy, user), "destination")
    try:
        again.append(inbox, [(meta(2, raws[2]), raws[2])])
        got = fetch_all(again, inbox)
        assert sorted(got) == [f"<m{i}@example.test>" for i in range(3)]
        assert all(raw == raws[int(m.id) - 1] for m, raw in got.values())
    finally:
        again.close()


def test_long_lines_refused_as_imap_and_reencoded_as_exchange_online(exo: Exo) -> None:
    proxy = exo.proxy(throttle_every=0)
    user = exo.new_user()
    html = b"<html><body>" + "Größe ".encode() * 3000 + b"</body></html>"
    raw = (
        b"From: a@example.test\r\nMessage-ID: <long@example.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n--b1\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nshort text\r\n--b1\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + html + b"\r\n--b1--\r\n"
    )
    m = MessageMeta(id="1", size=crlf_size(raw), message_id="<long@example.test>")
    plain = open_imap(replace(exo.account(proxy, user), type="imap"), "destination")
    inbox = plain.find_folder(("INBOX",))
    assert inbox is not None
    with pytest.raises(MessageError, match=r"Command Error\. 10"):
        plain.append(inbox, [(m, raw)])
    plain.close()
    assert [e.kind for e in proxy.events if e.kind == "longline"] == ["longline"]
    store = open_store(exo.account(proxy, user), "destination")
    try:
        store.append(inbox, [(m, raw)])
        (listed,) = store.list_messages(inbox)
        assert listed.message_id == "<long@example.test>"
        assert listed.size == crlf_size(raw)  # the source's size, from the trace header
        ((_, stored),) = list(store.fetch(inbox, [listed]))
    finally:
        store.close()
    assert longest_line(stored) <= 9_900 and stored != raw
    old = [p.get_payload(decode=True) for p in email.message_from_bytes(raw).walk() if not p.is_multipart()]
    new = [p.get_payload(decode=True) for p in email.message_from_bytes(stored).walk() if not p.is_multipart()]
    assert old == new  # content unchanged
    assert stored.split(b"\r\n", 1)[1].startswith(b"From: a@example.test\r\n")


def test_read_receipt_requests_get_mdnsent(exo: Exo) -> None:
    proxy = exo.proxy(throttle_every=0)
    user = exo.new_user()
    asks = msg(1, extra=b"Disposition-Notification-To: a@example.test\r\n")
    plain = msg(2)
    store = open_store(exo.account(proxy, user), "destination")
    inbox = store.find_folder(("INBOX",))
    assert inbox is not None
    try:
        store.append(inbox, [(meta(1, asks, frozenset({"\\Seen"})), asks), (meta(2, plain), plain)])
        got = {m.message_id: m.flags for m in store.list_messages(inbox)}
    finally:
        store.close()
    assert got == {"<m1@example.test>": frozenset({"\\Seen", MDN_SENT}), "<m2@example.test>": frozenset()}
    off = open_store(exo.account(proxy, user, mark_mdn_sent=False), "destination")
    try:
        third = msg(3, extra=b"Disposition-Notification-To: a@example.test\r\n")
        off.append(inbox, [(meta(3, third), third)])
        flags = {m.message_id: m.flags for m in off.list_messages(inbox)}
    finally:
        off.close()
    assert flags["<m3@example.test>"] == frozenset()


def test_listing_reports_the_original_message_id(exo: Exo) -> None:
    proxy = exo.proxy(throttle_every=0, rewrite_message_id=lambda body: b"rewrite-me" in body)
    user = exo.new_user()
    a, b = msg(1, b"rewrite-me\r\n"), msg(2)
    store = open_store(exo.account(proxy, user), "destination")
    inbox = store.find_folder(("INBOX",))
    assert inbox is not None
    try:
        store.append(inbox, [(meta(1, a), a), (meta(2, b), b)])
        listing = store.list_messages(inbox)
        stored = {m.message_id: raw for m, raw in store.fetch(inbox, listing)}
    finally:
        store.close()
    assert sorted(m.message_id or "" for m in listing) == ["<m1@example.test>", "<m2@example.test>"]
    rewritten = next(m for m in listing if m.message_id == "<m1@example.test>")
    assert rewritten.extra["exchange_message_id"].startswith("<EXO")
    assert b"X-MS-Exchange-Parent-Message-Id: <m1@example.test>" in stored["<m1@example.test>"]
    assert [e.kind for e in proxy.events].count("rewritten") == 1


def test_session_renewed_before_the_token_expires(exo: Exo) -> None:
    exo.tokens.set_lifetime(4)
    try:
        proxy = exo.proxy(throttle_every=0)
        user = exo.new_user()
        # own settings (explicit scopes): a token provider of its own, with 4-second tokens
        account = replace(exo.account(proxy, user), oauth=exo.oauth(scopes=(IMAP_SCOPE,)))
        store = open_store(account, "destination")
        assert isinstance(store, ExoStore)
        inbox = store.find_folder(("INBOX",))
        assert inbox is not None
        try:
            for i in range(6):  # 6 s of work with 4-second tokens
                raw = msg(i)
                store.append(inbox, [(meta(i, raw), raw)])
                time.sleep(1.0)
            assert len(store.list_messages(inbox)) == 6
        finally:
            store.close()
        assert store.renewals >= 1
        assert not [e for e in proxy.events if e.kind == "bye-expired"]
        # without renewal (plain IMAP), Exchange ends the session: a retryable error
        plain = open_imap(replace(account, type="imap"), "destination")
        try:
            time.sleep(4.5)
            with pytest.raises(TransientError):
                plain.list_messages(inbox)
        finally:
            plain.close()
        assert [e.kind for e in proxy.events if e.kind == "bye-expired"] == ["bye-expired"]
    finally:
        exo.tokens.set_lifetime(20)


def test_oversized_append_is_refused(exo: Exo) -> None:
    proxy = exo.proxy(throttle_every=0, max_message_bytes=50_000)
    user = exo.new_user()
    big = msg(1, base64.encodebytes(os.urandom(60_000)).replace(b"\n", b"\r\n"))
    store = open_store(exo.account(proxy, user, max_message_size=50_000), "destination")
    inbox = store.find_folder(("INBOX",))
    assert inbox is not None
    try:
        assert store.capabilities.max_message_bytes == 50_000
        with pytest.raises(MessageError, match="TOOBIG"):
            store.append(inbox, [(meta(1, big), big)])
    finally:
        store.close()


# --------------------------------------------------------------------------- end to end
RUN_COUNT = 1000
# >= 5 throttles over 2 folder workers: one worker waits 3 x 7 s, so the run outlives
# the 20-second tokens whatever the order
BACKOFF_MS = 7000
SRC_PW = "Src-Pass-77x!q"


def special_messages() -> list[CorpusMessage]:
    """Messages Exchange Online's rules act on, in folders of their own."""
    when = datetime(2021, 5, 4, 10, 30, tzinfo=UTC)

    def mail(n: int, body: bytes, headers: bytes = b"", ctype: bytes = b"text/plain; charset=utf-8") -> bytes:
        return (
            f"From: s@example.test\r\nTo: r@example.test\r\nSubject: special {n}\r\n"
            f"Message-ID: <special{n}@example.test>\r\nMIME-Version: 1.0\r\n".encode()
            + headers
            + b"Content-Type: "
            + ctype
            + b"\r\n\r\n"
            + body
        )

    big = base64.encodebytes(random.Random(3).randbytes(340_000)).replace(b"\n", b"\r\n")
    html = b"<html><body>" + "Grüße aus Köln. ".encode() * 1500 + b"</body></html>\r\n"
    one_line_b64 = base64.b64encode(random.Random(4).randbytes(30_000)) + b"\r\n"
    long_plain = b"A" + b" long line of words" * 800 + b"\r\n"
    specials = ("Specials",)
    return [
        CorpusMessage(
            specials,
            frozenset({"\\Seen"}),
            when,
            mail(1, big, ctype=b"application/octet-stream", headers=b"Content-Transfer-Encoding: base64\r\n"),
        ),
        CorpusMessage(
            specials,
            frozenset(),
            when,
            mail(
                2,
                big + big[:100_000],
                ctype=b"application/octet-stream",
                headers=b"Content-Transfer-Encoding: base64\r\n",
            ),
        ),
        CorpusMessage(
            specials,
            frozenset({"\\Seen"}),
            when,
            mail(3, html, b"Content-Transfer-Encoding: 8bit\r\n", b"text/html; charset=utf-8"),
        ),
        CorpusMessage(
            specials,
            frozenset({"\\Flagged"}),
            when,
            mail(4, one_line_b64, b"Content-Transfer-Encoding: base64\r\n", b"application/pdf"),
        ),
        CorpusMessage(specials, frozenset(), when, mail(5, long_plain)),
        CorpusMessage(
            specials,
            frozenset(),
            when,
            mail(6, b"please confirm\r\n", b"Disposition-Notification-To: s@example.test\r\n"),
        ),
        CorpusMessage(("Calendar",), frozenset({"\\Seen"}), when, mail(7, b"a mail folder called Calendar\r\n")),
    ]


def dovecot_trouble(exo: Exo) -> str:
    """The Dovecot log lines that explain a dropped session (for failure messages)."""
    lines = exo.dovecot.log_path.read_text(errors="replace").splitlines()
    trouble = re.compile(r"Error|Fatal|Panic|Warning|Disconnected(?!: Logged out)")
    return "\n".join([ln for ln in lines if trouble.search(ln)][-30:])


def migrator_cli(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        cwd=str(Path(__file__).resolve().parents[1]),
    )


def test_run_to_exchange_online_with_expiring_tokens_and_throttling(exo: Exo, tmp_path: Path) -> None:
    src_name = f"exosrc{os.getpid()}"
    exo.dovecot.add_user(src_name, SRC_PW)
    corpus = list(generate(RUN_COUNT, seed=11, max_attachment=150_000))
    specials = special_messages()
    load_maildir(
        corpus + specials,
        exo.dovecot.maildir(src_name),
        uid=exo.dovecot.mail_uid,
        gid=exo.dovecot.mail_gid,
        folders=[*FOLDERS, ("Specials",), ("Calendar",)],
    )
    exo.dovecot.force_resync(src_name)
    dst_user = exo.new_user()
    proxy = exo.proxy(throttle_every=200, backoff_ms=BACKOFF_MS, max_message_bytes=400_000)
    plan = tmp_path / "exo.yaml"
    plan.write_text(
        f"""version: 1
name: exo
state: exo.db
endpoints:
  old: {{type: imap, host: 127.0.0.1, port: {exo.dovecot.imap_port}, security: none}}
  exo:
    type: exchange-online
    host: 127.0.0.1
    port: {proxy.port}
    ca_file: {exo.cert}
    max_message_size: 400000
    oauth:
      flow: client_credentials
      tenant: {TENANT}
      client_id: {CLIENT_ID}
      client_secret_env: EXO_CLIENT_SECRET
      authority: {exo.tokens.authority(TENANT)}
      validate_authority: false
source: old
destination: exo
defaults: {{folder_workers: 2}}
mailboxes_csv: users.csv
""",
        encoding="utf-8",
    )
    (tmp_path / "users.csv").write_text(f"EmailAddress,UserName,Password\n{dst_user},{src_name},{SRC_PW}\n")
    env = {"EXO_CLIENT_SECRET": CLIENT_SECRET, "REQUESTS_CA_BUNDLE": str(exo.cert)}
    uid_to_mid = folder_mids(exo, src_name, SRC_PW, "Specials")
    oversized = {"<special1@example.test>", "<special2@example.test>"}
    reencoded = {"<special3@example.test>", "<special4@example.test>", "<special5@example.test>"}

    # 1. the dry run reports, before anything is written, what will be skipped or changed
    dry = migrator_cli("run", str(plan), "--dry-run", "--report", str(tmp_path / "dry.json"), env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    dry_report = json.loads((tmp_path / "dry.json").read_text())
    assert proxy.events and not [e for e in proxy.events if e.kind == "append"]
    assert mids_of(dry_report, "skipped", "over the destination's limit of 400000", uid_to_mid) == oversized
    assert notes_of(dry_report, "re-encoded") == reencoded

    # 2. the run: 20-second tokens, a throttling answer every 200 APPENDs
    started = time.time()
    run = migrator_cli(
        "run", str(plan), "--report", str(tmp_path / "run.json"), "--log-json", str(tmp_path / "log.jsonl"), env=env
    )
    took = time.time() - started
    odd = [e for e in proxy.events if e.kind not in ("append", "login", "throttled", "toobig", "rewritten")]
    assert run.returncode == 0, f"{run.stdout}{run.stderr}\nproxy: {odd}\n{dovecot_trouble(exo)}"
    report = json.loads((tmp_path / "run.json").read_text())
    totals = report["totals"]
    # a throttle can land inside a pipeline of APPENDs: the ones the server had already
    # stored are recognised at the destination ("matched") instead of being sent again
    arrived = totals["copied"] + totals["matched"]
    assert (arrived, totals["failed"], totals["skipped"]) == (RUN_COUNT + 5, 0, 2), totals
    assert mids_of(report, "skipped", "over the destination's limit", uid_to_mid) == oversized
    assert notes_of(report, "re-encoded") == reencoded
    assert report["mailboxes"][0]["status"] == "ok"
    with sqlite3.connect(tmp_path / "exo.db") as db:
        assert db.execute("select count(*) from errors").fetchone()[0] == 0

    # every message arrived once: the corpus folders are identical to the source
    src_snap = snapshot_imap(exo.dovecot.host, exo.dovecot.imap_port, src_name, SRC_PW)
    dst_snap = snapshot_imap(exo.dovecot.host, exo.dovecot.imap_port, dst_user.split("@")[0], "pw")
    corpus_folders = set(FOLDERS)
    assert (
        diff_snapshots(
            {f: v for f, v in src_snap.items() if f in corpus_folders},
            {f: v for f, v in dst_snap.items() if f in corpus_folders},
        )
        == []
    )
    assert sum(len(v) for f, v in dst_snap.items() if f in corpus_folders) == RUN_COUNT
    assert set(dst_snap) - corpus_folders == {("Specials",), ("Calendar (mail)",)}
    assert len(dst_snap[("Calendar (mail)",)]) == 1 and len(dst_snap[("Specials",)]) == 4
    specials_at_dst = fetch_specials(exo, dst_user)
    assert set(specials_at_dst) == reencoded | {"<special6@example.test>"}
    by_mid = {m.raw.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode(): m for m in specials}
    for mid in reencoded:
        flags, raw = specials_at_dst[mid]
        assert longest_line(raw) <= 9_900 and flags == by_mid[mid].flags
        assert leaves(raw) == leaves(by_mid[mid].raw)  # content unchanged
    assert specials_at_dst["<special6@example.test>"][0] == {MDN_SENT}

    # back-off obeyed: nothing was appended sooner than the server asked, never a failure
    events = proxy.events
    throttles = [e for e in events if e.kind == "throttled"]
    appends = [e for e in events if e.kind == "append"]
    # (a batch cut by a throttle is rolled back by the IMAP connector and sent again:
    # more APPENDs than messages, but each message is at the destination once, above)
    assert len(appends) >= RUN_COUNT + 5
    assert len(throttles) == (len(appends) + len(throttles)) // 200 >= 5
    gaps = []
    for t in throttles:
        # the worker copying that folder reconnects after the throttle and appends to
        # it again (APPENDs pipelined on the old connection before the answer arrived
        # do not count; other folders' workers are not paused by the engine today)
        later = [
            e.at for e in events if e.kind == "append" and e.mailbox == t.mailbox and e.conn != t.conn and e.at > t.at
        ]
        if later:
            gaps.append(min(later) - t.at)
    assert gaps and min(gaps) >= BACKOFF_MS / 1000
    shown = [round(g, 2) for g in gaps]
    print(f"\nexchange-online run: {took:.1f} s, {len(appends)} APPENDs, {len(throttles)} throttles, gaps {shown} s")

    # tokens: refreshed mid-run (20 s lifetime), sessions never used an expired one
    issued = [i for i in exo.tokens.issued() if i.issued >= started]
    assert len(issued) >= 2 and took > 20
    assert not [e for e in events if e.kind == "bye-expired"]
    introspected = [active for when, active in exo.tokens.state.introspections if when >= started]
    assert introspected and all(introspected)
    print(f"tokens issued during the run: {len(issued)}, logins: {len(introspected)}")

    # no token, client secret or password anywhere in the state DB, the logs or the reports
    blobs = {
        "state DB": (tmp_path / "exo.db").read_bytes(),
        "log": (tmp_path / "log.jsonl").read_bytes(),
        "report": (tmp_path / "run.json").read_bytes(),
        "dry-run report": (tmp_path / "dry.json").read_bytes(),
        "output": (run.stdout + run.stderr + dry.stdout + dry.stderr).encode(),
    }
    assert b"Request is throttled" in blobs["log"]  # the log is there and has content
    secrets = [i.token for i in exo.tokens.issued()] + [CLIENT_SECRET, SRC_PW]
    for name, blob in blobs.items():
        for secret in secrets:
            assert secret.encode() not in blob, f"a secret leaked into the {name}"
        assert b"eyJ" not in blob, f"something token-shaped in the {name}"


def mids_of(report: dict[str, Any], key: str, reason: str, uid_to_mid: dict[str, str]) -> set[str]:
    """Message-IDs of the report's ``key`` entries (skipped / failed) whose reason matches."""
    out = set()
    for mb in report["mailboxes"]:
        entries = mb.get(f"{key}_messages") or mb.get(key) or []
        for entry in entries:
            if reason in entry["reason"]:
                assert entry["folder"] == "Specials"
                out.add(uid_to_mid[str(entry["id"])])
    return out


def notes_of(report: dict[str, Any], needle: str) -> set[str]:
    found = set()
    for mb in report["mailboxes"]:
        for folder in mb["folders"]:
            for note in folder["notes"]:
                if needle in note:
                    found.add(note.split(" ")[2].rstrip(":"))
    return found


def fetch_specials(exo: Exo, user: str) -> dict[str, tuple[frozenset[str], bytes]]:
    import imapclient

    client = imapclient.IMAPClient(exo.dovecot.host, port=exo.dovecot.imap_port, ssl=False, timeout=30)
    try:
        client.login(user.split("@")[0], "pw")
        client.select_folder("Specials", readonly=True)
        data = client.fetch(client.search("ALL"), ["FLAGS", "BODY.PEEK[]"])
    finally:
        client.logout()
    out = {}
    for item in data.values():
        raw = item[b"BODY[]"]
        mid = raw.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
        out[mid] = (frozenset(f.decode() for f in item[b"FLAGS"] if f != b"\\Recent"), raw)
    return out


def leaves(raw: bytes) -> list[bytes]:
    return [p.get_payload(decode=True) for p in email.message_from_bytes(raw).walk() if not p.is_multipart()]


def folder_mids(exo: Exo, user: str, password: str, folder: str) -> dict[str, str]:
    import imapclient

    client = imapclient.IMAPClient(exo.dovecot.host, port=exo.dovecot.imap_port, ssl=False, timeout=30)
    try:
        client.login(user, password)
        client.select_folder(folder, readonly=True)
        data = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    finally:
        client.logout()
    out = {}
    for uid, item in data.items():
        header = item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]
        out[str(uid)] = header.split(b":", 1)[1].strip().decode()
    return out
