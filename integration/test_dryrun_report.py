"""`migrator plan` (a dry run with predictions) over 20 mailboxes on real Dovecots.

Source: the session's Dovecot (slash layout). Destination: a Dovecot with the quota
plugin, Courier layout ("." separator: a "." in a source folder name cannot be held),
a per-message limit it advertises as APPENDLIMIT, and per-user quotas. The mailboxes
carry what the report must predict: oversized messages (m00-m02), a bad folder name
(m03), messages already at the destination (m04), a quota too small (m05), a duplicate
Message-ID (m06), messages without Message-ID (m07) and a wrong password (m19).
All three formats come out, the wrong password is m19's problem, and every destination
is byte-for-byte unchanged.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from integration.corpus import CorpusMessage, load_maildir
from integration.dovecot import DovecotServer
from integration.report_fixtures import QuotaDovecot, make_message, small_corpus
from integration.snapshot import snapshot_imap
from migrator.predict import schedule

PW = "pw-Plan-20"
BAD_PW = "not-the-password-19"
LIMIT = 100_000
N = 20


def migrator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "SRC_PW": PW, "DST_PW": PW, "BAD_PW": BAD_PW, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args], capture_output=True, text=True, env=full, timeout=300
    )


@pytest.fixture(scope="module")
def dest() -> Iterator[QuotaDovecot]:
    server = QuotaDovecot(
        "courier",
        "/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
        max_mail_size=LIMIT,
        storage_kib=50_000,
        advertise_limit=True,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def source_messages(k: int) -> list[CorpusMessage]:
    tag = f"m{k:02d}"
    n = 8 + k % 5
    big = {0: {1}, 1: {1, 6}, 2: {3}}.get(k, set())
    msgs = small_corpus(tag, n, big, 250_000)
    if k == 6:  # an exact duplicate in the same folder: two messages, one Message-ID
        msgs.append(msgs[0])
    if k == 7:  # two messages without Message-ID
        msgs += [
            CorpusMessage(("INBOX",), frozenset(), msgs[0].internal_date, make_message(tag, 100 + i, mid=False))
            for i in range(2)
        ]
    return msgs


@pytest.fixture(scope="module")
def setup(dovecot: DovecotServer, dest: QuotaDovecot, tmp_path_factory, _user_counter) -> dict[str, object]:
    """20 source and 20 destination users, the plan, and m04 already copied (with a
    state DB of its own, so that the plan's dry run matches it at the destination)."""
    tmp = tmp_path_factory.mktemp("plan20")
    tag = f"{next(_user_counter)}p"
    pairs = []
    for k in range(N):
        src, dst = f"s{k:02d}x{tag}", f"d{k:02d}x{tag}"
        dovecot.add_user(src, PW)
        dest.add_user(dst, PW, quota_kib=10 if k == 5 else None)
        load_maildir(
            source_messages(k), dovecot.maildir(src), uid=dovecot.mail_uid, gid=dovecot.mail_gid, folders=[("Sent",)]
        )
        dovecot.force_resync(src)
        pairs.append((f"m{k:02d}", src, dst))
    with IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False) as c:  # m03: a "." in a folder name
        c.login(pairs[3][1], PW)
        c.create_folder("Reports.2024")
        for i in range(2):
            c.append("Reports.2024", make_message("m03r", i))
    boxes = "".join(
        f"  - id: {mid}\n    source: {{user: {s}}}\n    destination: {{user: {d}"
        + (", password_env: BAD_PW" if mid == "m19" else "")
        + "}\n"
        for mid, s, d in pairs
    )
    plan = tmp / "twenty.yaml"
    plan.write_text(
        f"""version: 1
name: twenty
state: state/twenty.db
endpoints:
  old: {{type: imap, host: {dovecot.host}, port: {dovecot.imap_port}, security: none, password_env: SRC_PW}}
  new: {{type: imap, host: {dest.host}, port: {dest.imap_port}, security: none, password_env: DST_PW}}
source: old
destination: new
defaults: {{parallel_mailboxes: 4}}
mailboxes:
{boxes}""",
        encoding="utf-8",
    )
    pre = migrator("run", str(plan), "--mailbox", "m04", "--state", str(tmp / "elsewhere.db"))
    assert pre.returncode == 0, pre.stdout + pre.stderr
    return {"plan": plan, "pairs": pairs, "tmp": tmp}


def test_plan_of_20_mailboxes_predicts_problems_in_three_formats(setup, dovecot, dest):
    plan, pairs, tmp = Path(setup["plan"]), setup["pairs"], Path(setup["tmp"])  # type: ignore[arg-type]
    before = {d: snapshot_imap(dest.host, dest.imap_port, d, PW) for _, _, d in pairs}  # type: ignore[union-attr]
    out = tmp / "out"
    res = migrator(
        "plan", str(plan), "--throughput", "1MB/s", "--report", str(out / "p.json"), "--report",
        str(out / "p.csv"), "--report", str(out / "p.html"),
    )  # fmt: skip
    # exit 3: one mailbox could not log in; the report of the other 19 still came out
    assert res.returncode == 3, res.stdout + res.stderr
    for name in ("p.json", "p.csv", "p-problems.csv", "p.html"):
        assert (out / name).stat().st_mode & 0o777 == 0o600, name

    # ---- the destination is untouched, and no state was written
    after = {d: snapshot_imap(dest.host, dest.imap_port, d, PW) for _, _, d in pairs}  # type: ignore[union-attr]
    assert after == before
    assert not (plan.parent / "state").exists()
    for _, _, d in pairs:  # type: ignore[union-attr]
        if d != pairs[4][2]:  # type: ignore[index]
            assert dest.doveadm("mailbox", "list", "-u", d).split() == ["INBOX"]

    data = json.loads((out / "p.json").read_text(encoding="utf-8"))
    assert (data["schema"], data["kind"], data["dry_run"], data["plan"]) == (1, "dry-run", True, "twenty")
    boxes = {m["id"]: m for m in data["mailboxes"]}
    assert list(boxes) == [f"m{k:02d}" for k in range(N)]

    def kinds(mid: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for p in boxes[mid]["problems"]:
            out.setdefault(p["kind"], []).append(p)
        return out

    # ---- the wrong password is m19's problem, and only m19's
    m19 = boxes["m19"]
    assert (m19["status"], m19["error_kind"], m19["trouble"]) == ("failed", "auth", "error")
    (login,) = kinds("m19")["login"]
    assert login["severity"] == "error" and "login failed" in login["message"] and pairs[19][2] in login["message"]
    assert all(m["status"] == "ok" for k, m in boxes.items() if k != "m19")
    assert data["totals"]["failed_mailboxes"] == 1

    # ---- counts: every message of the other 19 listed, sizes known
    for k in range(N - 1):
        mb = boxes[f"m{k:02d}"]
        msgs = source_messages(k)
        extra = 2 if k == 3 else 0
        assert mb["source_messages"] == len(msgs) + extra, mb["id"]
        if k != 3:
            assert mb["source_bytes"] == sum(len(m.raw) for m in msgs), mb["id"]
        assert mb["destination_info"]["max_message_bytes"] == LIMIT
        assert "UIDPLUS" in mb["destination_info"]["server_capabilities"]
        assert mb["estimated_seconds"] == pytest.approx(mb["bytes_to_copy"] / 1e6)
    assert data["estimate"]["total_seconds"] == pytest.approx(
        schedule([m["estimated_seconds"] for m in boxes.values() if m["estimated_seconds"] is not None], 4)
    )
    assert data["estimate"]["throughput"]["origin"] == "configured (--throughput 1MB/s)"

    # ---- oversized messages: skipped with the limit named, not to copy
    for mid, n in (("m00", 1), ("m01", 2), ("m02", 1)):
        assert sum(p["count"] for p in kinds(mid)["too-large"]) == n, mid
        assert boxes[mid]["skipped"] == n
        assert all(f"limit of {LIMIT}" in s["reason"] for s in boxes[mid]["skipped_messages"])
        assert boxes[mid]["to_copy"] == boxes[mid]["source_messages"] - n
    assert kinds("m02")["too-large"][0]["folder"] == "Archive"

    # ---- the bad folder name
    (bad,) = kinds("m03")["folder-name"]
    assert bad["severity"] == "warning" and bad["folder"] == "Reports.2024"
    assert "'Reports.2024' -> 'Reports_2024'" in bad["message"]
    folder = next(f for f in boxes["m03"]["folders"] if f["source"] == "Reports.2024")
    assert (folder["destination"], folder["renamed"], folder["to_copy"]) == ("Reports_2024", True, 2)

    # ---- already at the destination
    m04 = boxes["m04"]
    assert (m04["already_there"], m04["to_copy"]) == (len(source_messages(4)), 0)

    # ---- the quota cannot take m05's mail
    (quota,) = kinds("m05")["quota"]
    assert quota["severity"] == "error" and "only" in quota["message"] and "free" in quota["message"]
    assert boxes["m05"]["destination_info"]["quota"]["storage_limit"] == 10 * 1024

    # ---- duplicate Message-ID, messages without one
    (dup,) = kinds("m06")["duplicate-message-id"]
    assert dup["count"] == 2 and "<m06.0@example.org> (x2)" in dup["message"]
    assert boxes["m07"]["no_message_id"] == 2 and kinds("m07")["no-message-id"][0]["count"] == 2
    assert boxes["m06"]["to_copy"] == len(source_messages(6))  # both copies are copied

    # ---- the terminal: trouble first, and the password nowhere
    rows = [ln.split("│")[1].strip() for ln in res.stdout.splitlines() if ln.startswith("│ m")]
    assert set(rows[:2]) == {"m05", "m19"} and len(set(rows)) == N, rows
    assert "login failed" in res.stdout
    for text in (res.stdout + res.stderr, *(p.read_text(encoding="utf-8") for p in out.iterdir())):
        assert PW not in text and BAD_PW not in text

    # ---- CSV: one row per mailbox folder (m19: one row with its error); problems beside it
    with (out / "p.csv").open(encoding="utf-8", newline="") as fh:
        rows_csv = list(csv.DictReader(fh))
    assert len(rows_csv) == sum(len(m["folders"]) for m in data["mailboxes"]) + 1
    (r19,) = [r for r in rows_csv if r["mailbox"] == "m19"]
    assert r19["mailbox_status"] == "failed" and "login failed" in r19["error"] and r19["source_folder"] == ""
    r03 = next(r for r in rows_csv if r["source_folder"] == "Reports.2024")
    assert (r03["destination_folder"], r03["renamed"], r03["to_copy"]) == ("Reports_2024", "yes", "2")
    assert sum(int(r["messages"] or 0) for r in rows_csv) == data["totals"]["listed"]
    with (out / "p-problems.csv").open(encoding="utf-8", newline="") as fh:
        probs = list(csv.DictReader(fh))
    assert len(probs) == len(data["problems"])
    assert probs[0]["severity"] == "error" and {"m05", "m19"} <= {
        p["mailbox"] for p in probs if p["severity"] == "error"
    }

    # ---- HTML: self-contained, every mailbox in it
    page = (out / "p.html").read_text(encoding="utf-8")
    for k in range(N):
        assert f">m{k:02d}<" in page
    lowered = page.lower()
    for external in ("src=", "<link", "@import", "url(", "https://"):
        assert external not in lowered, external
    assert "Reports.2024" in page and "login failed" in page


def test_plan_after_a_run_still_counts_every_source_message(setup, tmp_path):
    plan = Path(setup["plan"])  # type: ignore[arg-type]
    state = tmp_path / "s.db"
    assert migrator("run", str(plan), "--mailbox", "m08", "--state", str(state)).returncode == 0
    res = migrator("plan", str(plan), "--mailbox", "m08", "--state", str(state), "--report", str(tmp_path / "p.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    (m08,) = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["mailboxes"]
    n = len(source_messages(8))
    assert (m08["source_messages"], m08["already_there"], m08["to_copy"]) == (n, n, 0)
