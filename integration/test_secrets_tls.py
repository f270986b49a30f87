"""Secrets never written anywhere, files private, TLS verified by default.

One plan exercises every way a secret reaches migrator: passwords from the
environment, from password files and from a mailbox CSV, an OAuth2 client secret
(client-credentials tokens from a local token endpoint, checked by Dovecot's oauth2
passdb), and a wrong password. It runs with ``-v``, ``--log-json``, JSON/CSV/HTML
reports and a metrics file, under umask 000; then ``status`` and ``validate`` run on
it. Every password, the client secret and every access token issued are looked for
(as text and base64, as in AUTHENTICATE PLAIN / XOAUTH2) in the state DB (and its
WAL), the lock, the logs, the reports, the metrics and the terminal output: none
may be there. The state DB, its lock, the log and the reports are 0600.

TLS: a self-signed server (the fixture's IMAPS port and STARTTLS) is refused by
default, exit 3, with a message saying how to trust it (ca_file) or, explicitly, not
to verify; both ways then work. No password is sent to a server that was refused.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.corpus import generate
from integration.dovecot import DovecotServer, make_certificate
from integration.harness import load_source
from integration.snapshot import Snapshot, diff_snapshots, snapshot_imap
from integration.tokenserver import TokenServer

TENANT, DOMAIN = "contoso", "contoso.test"
CLIENT_ID = "22222222-3333-4444-5555-666666666666"
SECRETS = {
    "SRC_PW": "Src-Env-Secret-a7Q#k2",
    "DST_PW": "Dst-Env-Secret-Zz9!m4",
    "file-src": "Src-File-Secret-4r$Tt",
    "file-dst": "Dst-File-Secret-Hh8%p",
    "csv-src": "Csv-Src-Secret-x1;y",
    "csv-dst": "Csv-Dst-Secret-q5,w",
    "CS": "Client-Secret-Value-0Oo9",
    "WRONG_PW": "Wrong-Secret-Nope-77",
}


@dataclass
class World:
    root: Path
    dovecot: DovecotServer
    tokens: TokenServer
    cert: Path


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="migrator-secrets-", dir=parent))
    root.chmod(0o755)
    cert, key = make_certificate(root)
    tokens = TokenServer(cert, key, clients={CLIENT_ID: SECRETS["CS"]}, tenant_domains={TENANT: DOMAIN}).start()
    dovecot = DovecotServer(parent_dir=root, oauth2=(tokens.introspection_url, str(cert))).start()
    try:
        yield World(root, dovecot, tokens, cert)
    finally:
        dovecot.stop()
        tokens.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_private(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m migrator ARGS`` under umask 000: whatever it creates must set its
    own mode."""
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=300,
        preexec_fn=lambda: os.umask(0),
    )


def forms(secret: str) -> list[bytes]:
    """The secret as text, base64 (an AUTHENTICATE answer) and JSON-escaped text."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), json.dumps(secret).encode()[1:-1]]


def test_no_secret_anywhere_and_files_private(world, tmp_path):
    dv = world.dovecot
    users = {}
    for role in ("envsrc", "envdst", "filesrc", "filedst", "csvsrc", "csvdst", "oadst", "wrongsrc", "wrongdst"):
        users[role] = f"{role}{os.getpid()}"
    pw = {
        "envsrc": SECRETS["SRC_PW"],
        "envdst": SECRETS["DST_PW"],
        "filesrc": SECRETS["file-src"],
        "filedst": SECRETS["file-dst"],
        "csvsrc": SECRETS["csv-src"],
        "csvdst": SECRETS["csv-dst"],
        "oadst": SECRETS["DST_PW"],
        "wrongsrc": "the-real-one-differs",
        "wrongdst": SECRETS["DST_PW"],
    }
    for role, name in users.items():
        dv.add_user(name, pw[role])
    oauth_user = f"oasrc{os.getpid()}"
    dv.add_user(oauth_user, "unused-password")
    for i, role in enumerate(("envsrc", "filesrc", "csvsrc")):
        load_source(dv, users[role], generate(12, seed=60 + i, max_attachment=20_000))
    load_source(dv, oauth_user, generate(12, seed=64, max_attachment=20_000))
    work = tmp_path / "plan"
    work.mkdir()
    (work / "src.pw").write_text(SECRETS["file-src"] + "\n", encoding="utf-8")
    (work / "dst.pw").write_text(SECRETS["file-dst"] + "\n", encoding="utf-8")
    (work / "users.csv").write_text(
        "id,source_user,source_password,destination_user,destination_password\n"
        f'csv-box,{users["csvsrc"]},"{SECRETS["csv-src"]}",{users["csvdst"]},"{SECRETS["csv-dst"]}"\n',
        encoding="utf-8",
    )
    common = f"host: {dv.host}, ca_file: {dv.cert_path}"
    (work / "plan.yaml").write_text(
        f"""version: 1
name: sec
state: sec.db
endpoints:
  old: {{type: imap, {common}, port: {dv.imap_port}, security: starttls, password_env: SRC_PW}}
  new: {{type: imap, {common}, port: {dv.imaps_port}, security: tls, password_env: DST_PW}}
  oa:
    type: imap
    host: {dv.host}
    port: {dv.imaps_port}
    security: tls
    ca_file: {dv.cert_path}
    oauth:
      flow: client_credentials
      tenant: {TENANT}
      client_id: {CLIENT_ID}
      client_secret_env: CS
      authority: {world.tokens.authority(TENANT)}
      validate_authority: false
source: old
destination: new
mailboxes:
  - id: env-box
    source: {{user: {users["envsrc"]}}}
    destination: {{user: {users["envdst"]}}}
  - id: file-box
    source: {{user: {users["filesrc"]}, password_file: src.pw}}
    destination: {{user: {users["filedst"]}, password_file: dst.pw}}
  - id: oauth-box
    source: {{endpoint: oa, user: {oauth_user}@{DOMAIN}}}
    destination: {{user: {users["oadst"]}}}
  - id: wrong-box
    source: {{user: {users["wrongsrc"]}, password_env: WRONG_PW}}
    destination: {{user: {users["wrongdst"]}}}
mailboxes_csv: users.csv
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in SECRETS.items() if k.isupper()} | {"REQUESTS_CA_BUNDLE": str(world.cert)}
    outputs = [tmp_path / "out" / name for name in ("log.jsonl", "r.json", "r.csv", "r.html", "m.prom")]
    run = run_private(
        [
            "run", "plan.yaml", "-v", "--parallel", "2",
            "--log-json", str(outputs[0]),
            "--report", str(outputs[1]), "--report", str(outputs[2]), "--report", str(outputs[3]),
            "--metrics-file", str(outputs[4]),
        ],
        env,
        work,
    )  # fmt: skip
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr[-3000:]  # wrong-box: login refused
    assert "wrong-box" in run.stdout and "login failed" in run.stdout + run.stderr
    password_of = {users[role]: pw[role] for role in users} | {oauth_user: "unused-password"}

    def look(user: str) -> Snapshot:
        return snapshot_imap(dv.host, dv.imap_port, user, password_of[user])

    for box, src, dst in (
        ("env-box", users["envsrc"], users["envdst"]),
        ("file-box", users["filesrc"], users["filedst"]),
        ("csv-box", users["csvsrc"], users["csvdst"]),
        ("oauth-box", oauth_user, users["oadst"]),
    ):
        assert diff_snapshots(look(src), look(dst)) == [], box
    assert world.tokens.issued(), "no token was issued: the OAuth path was not exercised"
    status = run_private(["status", "plan.yaml"], env, work)
    validate = run_private(["validate", "plan.yaml"], env, work)
    assert status.returncode == 0 and validate.returncode == 0, status.stdout + validate.stdout + validate.stderr
    # --- nothing secret anywhere
    files = sorted(p for p in work.iterdir() if p.name.startswith("sec.db")) + outputs
    assert {p.name for p in files} >= {"sec.db", "sec.db.lock", "log.jsonl", "r.json", "r.csv", "r.html", "m.prom"}
    haystacks = {str(p): p.read_bytes() for p in files}
    for name, proc in (("run", run), ("status", status), ("validate", validate)):
        haystacks[f"{name} stdout"] = proc.stdout.encode()
        haystacks[f"{name} stderr"] = proc.stderr.encode()
    needles = {**SECRETS, **{f"token {i}": t.token for i, t in enumerate(world.tokens.issued())}}
    leaks = [
        f"{what} found in {where}"
        for what, secret in needles.items()
        for form in forms(secret)
        for where, data in haystacks.items()
        if form in data
    ]
    assert leaks == []
    assert b"login failed" in haystacks[str(outputs[0])]  # the JSON log did record the failure
    # --- private files
    for path in (work / "sec.db", work / "sec.db.lock", *outputs[:4]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name}: {oct(path.stat().st_mode)}"
    for extra in ("sec.db-wal", "sec.db-shm"):
        if (work / extra).exists():
            assert stat.S_IMODE((work / extra).stat().st_mode) & 0o077 == 0, extra


# ----------------------------------------------------------------------------- TLS


def _copy(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_private(["copy", *args], env, cwd)


@pytest.mark.parametrize("scheme", ["imaps", "imap"])  # implicit TLS, STARTTLS
def test_self_signed_server_refused_with_a_hint_then_trusted(world, scheme, tmp_path):
    dv = world.dovecot
    user = f"tls{scheme}{os.getpid()}"
    dv.add_user(user, SECRETS["SRC_PW"])
    load_source(dv, user, generate(5, seed=70, max_attachment=10_000))
    port = dv.imaps_port if scheme == "imaps" else dv.imap_port
    base = f"{scheme}://{user}@127.0.0.1:{port}"
    env = {"MIGRATOR_SOURCE_PASSWORD": SECRETS["SRC_PW"]}
    logins_before = dv.log_path.read_text(errors="replace").count(f"user=<{user}>")
    refused = _copy([base, f"maildir:{tmp_path / 'out0'}", "--state", str(tmp_path / "0.db")], env, tmp_path)
    text = refused.stdout + refused.stderr
    assert refused.returncode == 3, text
    assert "certificate verification failed" in text
    assert "ca_file" in text and ("verify=off" in text or "verify_tls: false" in text), text
    assert "Traceback" not in text
    assert not (tmp_path / "out0").exists()
    # the password never went to the refused server (Dovecot logs every login attempt)
    assert dv.log_path.read_text(errors="replace").count(f"user=<{user}>") == logins_before
    for query, out in ((f"?ca_file={dv.cert_path}", "out1"), ("?verify=off", "out2")):
        ok = _copy([base + query, f"maildir:{tmp_path / out}", "--state", str(tmp_path / f"{out}.db")], env, tmp_path)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "copied 5 message(s)" in ok.stdout


def test_plan_endpoint_without_ca_file_is_refused_with_a_hint(world, tmp_path):
    dv = world.dovecot
    user = f"tlsplan{os.getpid()}"
    dv.add_user(user, SECRETS["SRC_PW"])
    plan = tmp_path / "p.yaml"
    plan.write_text(
        f"""version: 1
endpoints:
  old: {{type: imap, host: 127.0.0.1, port: {dv.imaps_port}, security: tls, password_env: SRC_PW}}
  out: {{type: maildir, path: out}}
source: old
destination: out
mailboxes:
  - source: {{user: {user}}}
""",
        encoding="utf-8",
    )
    res = run_private(["run", str(plan)], {"SRC_PW": SECRETS["SRC_PW"]}, tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 3, text
    assert "certificate verification failed" in text and "ca_file" in text and "verify" in text
    assert SECRETS["SRC_PW"] not in text


def test_non_ascii_password_logs_in_and_is_never_quoted(world, tmp_path):
    dv = world.dovecot
    user, password = f"umlaut{os.getpid()}", "Pässwört-Ünïcode-9"
    dv.add_user(user, password)
    load_source(dv, user, generate(3, seed=71, max_attachment=10_000))
    url = f"imap://{user}@127.0.0.1:{dv.imap_port}?tls=off"
    env = {"MIGRATOR_SOURCE_PASSWORD": password}
    res = _copy([url, f"maildir:{tmp_path / 'o'}", "--state", str(tmp_path / "s")], env, tmp_path)
    text = res.stdout + res.stderr
    for fragment in (password, "ä", "\\xe4"):
        assert fragment not in text, f"{fragment!r} shown"
    assert res.returncode == 0, text
    assert snap_count(tmp_path / "o") == 3


def snap_count(maildir: Path) -> int:
    """Messages in the Maildir++ tree: the root (INBOX) and every .folder."""
    folders = [maildir, *(p for p in maildir.glob(".*") if p.is_dir())]
    return sum(1 for f in folders for sub in ("cur", "new") if (f / sub).is_dir() for _ in (f / sub).iterdir())
