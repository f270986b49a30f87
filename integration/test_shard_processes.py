"""Sharding end to end: 4 real `migrator run --shard i/4` processes over a plan of 40
local mailboxes with a skewed size mix, then `migrator report merge`.

Checks (issue 10): every mailbox migrated exactly once (byte-identical, no duplicate,
each mailbox in exactly one shard's report and state DB); shard byte totals within
20 % of each other; adding a mailbox moves no other mailbox; the merged report (of
the shard reports, and of the shard state DBs) equals the report of a single-process
run of the same plan, timing fields aside.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from migrator.connectors.local import open_maildir
from migrator.model import Account, MessageMeta, crlf_size

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
MAILBOXES = 40
TIMEOUT = 240  # seconds for one migrator process
TIMING_KEYS = {"seconds", "generated", "msgs_per_second", "bytes_per_second", "estimated_seconds"}


# ---------------------------------------------------------------- data
def mailbox_sizes(count: int, seed: int = 10) -> dict[str, tuple[int, int]]:
    """mailbox id -> (messages, body bytes per message): a skewed mix where a few
    mailboxes hold most of the bytes (like real organisations)."""
    rng = random.Random(seed)
    out = {}
    for i in range(1, count + 1):
        if i % 10 == 3:  # 4 big ones
            shape = (rng.randint(6, 9), rng.randint(40_000, 60_000))
        elif i % 5 == 1:  # 8 medium
            shape = (rng.randint(5, 8), rng.randint(10_000, 20_000))
        else:  # 28 small
            shape = (rng.randint(2, 6), rng.randint(800, 4_000))
        out[f"mb{i:02d}"] = shape
    return out


def message(box: str, folder: str, n: int, body_bytes: int) -> bytes:
    head = (
        f"From: {box}@old.example\r\nTo: {box}@new.example\r\nSubject: {folder} {n}\r\n"
        f"Message-ID: <{box}.{folder}.{n}@shard.test>\r\nDate: Mon, 1 Jul 2024 10:{n % 60:02d}:00 +0000\r\n\r\n"
    )
    line = f"{box} {folder} {n} " + "x" * 70
    body = (line + "\r\n") * (body_bytes // (len(line) + 2) + 1)
    return head.encode() + body.encode()


def make_mailbox(root: Path, box: str, messages: int, body_bytes: int) -> None:
    store = open_maildir(Account(type="maildir", path=str(root)), "destination")
    start = datetime(2024, 7, 1, tzinfo=UTC)
    for folder_path in (("INBOX",), ("Archive",)):
        folder = store.ensure_folder(folder_path)
        items = []
        for n in range(messages if folder_path == ("INBOX",) else max(1, messages // 2)):
            raw = message(box, folder_path[0], n, body_bytes)
            meta = MessageMeta(
                id=str(n),
                size=crlf_size(raw),
                flags=frozenset({"\\Seen"} if n % 2 else set()),
                internal_date=start + timedelta(hours=n),
            )
            items.append((meta, raw))
        store.append(folder, items)


def write_plan(tree: Path, boxes: list[str]) -> Path:
    lines = [
        "version: 1",
        "name: sharded",
        "state: state/sharded.db",
        "endpoints:",
        '  src: {type: maildir, path: "src/{id}"}',
        '  out: {type: maildir, path: "out/{id}"}',
        "source: src",
        "destination: out",
        "defaults:",
        "  parallel_mailboxes: 2",
        "mailboxes:",
        *[f"  - id: {b}" for b in boxes],
    ]
    plan = tree / "plan.yaml"
    plan.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return plan


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sources of 41 mailboxes (mb41 is added to the plan later) and the plan of 40."""
    base = tmp_path_factory.mktemp("pristine")
    for box, (msgs, size) in mailbox_sizes(MAILBOXES + 1).items():
        make_mailbox(base / "src" / box, box, msgs, size)
    write_plan(base, [f"mb{i:02d}" for i in range(1, MAILBOXES + 1)])
    return base


# ---------------------------------------------------------------- helpers
def migrator(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MIGRATOR_SHARD_EPOCH", None)
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"migrator did not finish in {TIMEOUT} s: {out[-2000:]}")
    return proc.returncode, out


def run_ok(*args: str, cwd: Path) -> str:
    code, out = finish(migrator(*args, cwd=cwd))
    assert code == 0, out
    return out


def run_shards(tree: Path, *extra: str) -> list[tuple[int, str]]:
    """All shards at once, as an Indexed Job starts them."""
    procs = [
        migrator("run", "plan.yaml", "--shard", f"{i}/{SHARDS}", "--report", f"reports/shard-{i}.json", "-q", *extra,
                 cwd=tree)
        for i in range(1, SHARDS + 1)
    ]  # fmt: skip
    return [finish(p) for p in procs]


def maildir_messages(root: Path) -> Counter[bytes]:
    """Every message file's bytes under a Maildir++ tree (a multiset: duplicates count)."""
    found: Counter[bytes] = Counter()
    for path in root.rglob("*"):
        if path.is_file() and path.parent.name in ("cur", "new"):
            found[path.read_bytes()] += 1
    return found


def strip_timing(data: object) -> object:
    if isinstance(data, dict):
        return {k: strip_timing(v) for k, v in data.items() if k not in TIMING_KEYS}
    if isinstance(data, list):
        return [strip_timing(v) for v in data]
    return data


def db_jobs(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("select distinct job from messages")}
    finally:
        conn.close()


# ---------------------------------------------------------------- the test
def test_four_shards_then_a_new_mailbox_then_merge(pristine: Path, tmp_path: Path):
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    boxes = [f"mb{i:02d}" for i in range(1, MAILBOXES + 1)]

    # A dry run gives the bytes per mailbox the shards are balanced by.
    run_ok("run", "plan.yaml", "--dry-run", "-q", "--report", "reports/dry.json", cwd=tree)
    assert not (tree / "out").exists(), "a dry run wrote to the destination"

    results = run_shards(tree, "--weights", "reports/dry.json")
    for i, (code, out) in enumerate(results, 1):
        assert code == 0, f"shard {i}: {out}"

    # --- every mailbox exactly once: one shard report, one shard DB, byte-identical destination
    reports = [json.loads((tree / f"reports/shard-{i}.json").read_text()) for i in range(1, SHARDS + 1)]
    owners: dict[str, list[int]] = {}
    for i, rep in enumerate(reports, 1):
        for mb in rep["mailboxes"]:
            owners.setdefault(mb["id"], []).append(i)
            assert mb["status"] == "ok", mb
    assert sorted(owners) == boxes
    assert all(len(v) == 1 for v in owners.values()), owners
    db_sets = [db_jobs(tree / f"state/sharded.shard-{i}.db") for i in range(1, SHARDS + 1)]
    for i, jobs in enumerate(db_sets, 1):
        assert jobs == {b for b, o in owners.items() if o == [i]}
    assignment = json.loads((tree / "state/sharded.shards.json").read_text())
    assert assignment["shards"] == SHARDS and assignment["weights_from"] == "report"
    assert {b: v["shard"] for b, v in assignment["mailboxes"].items()} == {b: o[0] for b, o in owners.items()}
    for box in boxes:
        src, dst = maildir_messages(tree / "src" / box), maildir_messages(tree / "out" / box)
        assert dst == src, f"{box}: destination differs from source"
        assert max(dst.values()) == 1

    # --- balanced by bytes: within 20 % of each other
    per_shard = [sum(f["bytes"] for mb in rep["mailboxes"] for f in mb["folders"]) for rep in reports]
    total = sum(sum(len(raw) for raw in maildir_messages(tree / "src" / b)) for b in boxes)
    assert sum(per_shard) >= total * 0.99  # bytes are counted CRLF-normalised (equal here)
    assert (max(per_shard) - min(per_shard)) / max(per_shard) <= 0.20, per_shard
    sizes = sorted(sum(len(r) for r in maildir_messages(tree / "src" / b)) for b in boxes)
    assert sizes[-1] > 10 * sizes[0], "the size mix is not skewed"

    # --- the merged report equals a single-process run's
    run_ok("report", "merge", "--plan", "plan.yaml", *[f"reports/shard-{i}.json" for i in range(1, 5)],
           "-o", "reports/merged.json", cwd=tree)  # fmt: skip
    run_ok("report", "merge", "--plan", "plan.yaml", "-o", "reports/merged-db.json", cwd=tree)
    merged = json.loads((tree / "reports/merged.json").read_text())
    merged_db = json.loads((tree / "reports/merged-db.json").read_text())
    sharded_tree = tmp_path / "sharded"
    tree.rename(sharded_tree)
    shutil.copytree(pristine, tree)  # same absolute paths: reports name the stores
    run_ok("run", "plan.yaml", "-q", "--report", "reports/single.json", cwd=tree)
    single = json.loads((tree / "reports/single.json").read_text())
    assert single["totals"]["copied"] > 0
    assert strip_timing(merged) == strip_timing(single)
    run_ok("report", "merge", "--plan", "plan.yaml", "state/sharded.db", "-o", "reports/single-db.json", cwd=tree)
    single_db = json.loads((tree / "reports/single-db.json").read_text())
    assert strip_timing(merged_db) == strip_timing(single_db)
    assert merged_db["totals"]["copied"] == single["totals"]["copied"]
    shutil.rmtree(tree)
    sharded_tree.rename(tree)

    # --- a new mailbox moves no other mailbox (weights now come from the shard DBs)
    before = assignment["mailboxes"]
    write_plan(tree, [*boxes, "mb41"])
    results = run_shards(tree)
    for i, (code, out) in enumerate(results, 1):
        assert code == 0, f"shard {i}: {out}"
    after = json.loads((tree / "state/sharded.shards.json").read_text())["mailboxes"]
    assert {b: v["shard"] for b, v in after.items() if b != "mb41"} == {b: v["shard"] for b, v in before.items()}
    new_shard = after["mb41"]["shard"]
    lightest = min(range(1, SHARDS + 1), key=lambda k: (per_shard[k - 1], k))
    assert new_shard == lightest
    copied = {}
    for i in range(1, SHARDS + 1):
        rep = json.loads((tree / f"reports/shard-{i}.json").read_text())
        copied.update({mb["id"]: (i, sum(f["copied"] for f in mb["folders"])) for mb in rep["mailboxes"]})
    assert copied["mb41"][0] == new_shard and copied["mb41"][1] > 0
    assert all(n == 0 for b, (_i, n) in copied.items() if b != "mb41"), "a second run copied again"
    assert maildir_messages(tree / "out" / "mb41") == maildir_messages(tree / "src" / "mb41")
    assert db_jobs(tree / f"state/sharded.shard-{new_shard}.db") >= {"mb41"}
