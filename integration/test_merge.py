"""Leaving POP3 hosting: a person's Thunderbird profile and what is still on the POP3
server land in one destination mailbox, each message once (issue 3, part 4).

"Leave a copy on the server" means most messages are in both places: here 70 % of the
POP3 INBOX is also in the profile's Inbox (stored the way Thunderbird stores it: LF line
endings, X-Mozilla-* and X-UIDL lines added), the profile also holds mail long gone from
the server, and one message without Message-ID is in both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import imapclient

from integration.dovecot import DovecotServer
from tests.data.thunderbird_profile import TbMessage, message, pop_profile

PW = "pw-merge-3"
N_SERVER = 300
OVERLAP = 210  # 70 %
N_LOCAL_ONLY = 50


def norm(raw: bytes) -> str:
    return hashlib.sha256(re.sub(rb"\r*\n", b"\n", raw).rstrip(b"\n")).hexdigest()


def inbox(server: DovecotServer, user: str) -> list[tuple[bytes, frozenset[bytes]]]:
    c = imapclient.IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    c.login(user, PW)
    c.select_folder("INBOX", readonly=True)
    got = c.fetch(c.search("ALL"), ["BODY.PEEK[]", "FLAGS"])
    c.logout()
    return [(v[b"BODY[]"], frozenset(v[b"FLAGS"])) for v in got.values()]


def test_pop3_inbox_and_thunderbird_profile_merge_into_one_mailbox(dovecot, new_user, tmp_path: Path):
    pop_user, dst_user = new_user(dovecot, PW), new_user(dovecot, PW)
    server_msgs = [message(n) for n in range(N_SERVER)]
    server_msgs[7] = message(7, mid=False)  # no Message-ID: merged by content
    c = imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False, timeout=30)
    c.login(pop_user, PW)
    for raw in server_msgs:
        c.append("INBOX", raw)
    c.logout()

    local_only = [message(1000 + n) for n in range(N_LOCAL_ONLY)]
    profile_inbox = [TbMessage(raw, status=0x1, uidl=f"{i:08X}") for i, raw in enumerate(server_msgs[:OVERLAP])]
    profile_inbox += [TbMessage(raw, status=0x1) for raw in local_only]
    profile = pop_profile(tmp_path / "profile", profile_inbox)

    plan = tmp_path / "merge.yaml"
    plan.write_text(
        f"""version: 1
state: merge.db
endpoints:
  desktop: {{type: thunderbird, path: "{profile}"}}
  pop: {{type: pop3, host: {dovecot.host}, port: {dovecot.pop3_port}, security: none, password_env: PW}}
  new: {{type: imap, host: {dovecot.host}, port: {dovecot.imap_port}, security: none, password_env: PW}}
destination: new
mailboxes:
  - id: alice
    sources: [{{endpoint: desktop}}, {{endpoint: pop, user: {pop_user}}}]
    destination: {{user: {dst_user}}}
""",
        encoding="utf-8",
    )
    env = {**os.environ, "PW": PW}
    report = tmp_path / "r.json"
    run = [sys.executable, "-m", "migrator", "run", str(plan), "--report", str(report)]
    out = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr

    got = inbox(dovecot, dst_user)
    counts = Counter(norm(raw) for raw, _ in got)
    expected = {norm(raw) for raw in server_msgs + local_only}
    assert set(counts) == expected  # none lost
    assert all(n == 1 for n in counts.values()), [n for n in counts.values() if n > 1]  # none twice
    assert len(got) == N_SERVER + N_LOCAL_ONLY
    # the copies that came from the profile keep its read state; server-only ones stay unread
    seen = {norm(raw) for raw, flags in got if b"\\Seen" in flags}
    assert seen == {norm(raw) for raw in server_msgs[:OVERLAP] + local_only}
    # the report says how many were merged (already there from the other source)
    data = json.loads(report.read_text())
    pop_folders = [f for m in data["mailboxes"] for f in m["folders"] if f.get("store", "").startswith("pop3")]
    assert sum(f["already_there"] for f in pop_folders) == OVERLAP
    assert sum(f["copied"] for f in pop_folders) == N_SERVER - OVERLAP

    again = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "copied 0 message(s)" in again.stdout
    assert len(inbox(dovecot, dst_user)) == N_SERVER + N_LOCAL_ONLY
