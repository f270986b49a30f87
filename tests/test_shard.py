"""Sharding (migrator/shard.py), merging (migrator/merge.py) and the journal-mode choice
(migrator/fsinfo.py): assignment rules, persistence, locking, state moves, CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator import fsinfo, shard
from migrator.cli import app
from migrator.errors import PlanError
from migrator.merge import merge_reports
from migrator.model import Account, MailboxJob, Plan
from migrator.shard import (
    Inputs,
    assign,
    assignment_lock,
    assignment_path,
    greedy,
    parse_spec,
    select_shard,
    shard_db_path,
    shard_loads,
)
from migrator.state import FolderRef, State

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def plan_of(ids: list[str], state: Path) -> Plan:
    acc = Account(type="maildir", path="/nonexistent")
    return Plan(name="p", jobs=tuple(MailboxJob(id=i, source=acc, destination=acc) for i in ids), state_path=state)


def report_file(path: Path, weights: dict[str, int], key: str = "source_bytes") -> Path:
    mailboxes = [{"id": j, "folders": [{key: w // 2}, {key: w - w // 2}]} for j, w in weights.items()]
    path.write_text(json.dumps({"schema": 1, "kind": "dry-run", "mailboxes": mailboxes}), encoding="utf-8")
    return path


def seed_db(path: Path, job: str, sizes: list[int]) -> None:
    """A state DB holding ``job`` with copied messages of these sizes."""
    from migrator.model import MessageMeta

    st = State.open(path)
    ref = FolderRef(job, "maildir:/src", ("INBOX",), 1, ("INBOX",))
    st.set_folder(ref)
    st.mark_copied(ref, [(MessageMeta(id=str(i), size=s), f"d{i}", None) for i, s in enumerate(sizes)], 1)
    st.close()


# ---------------------------------------------------------------- spec and paths
@pytest.mark.parametrize(
    ("spec", "expected"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 4 / 4 ", (4, 4)), ("10/12", (10, 12))]
)
def test_parse_spec(spec: str, expected: tuple[int, int]):
    got = parse_spec(spec)
    assert (got.index, got.count) == expected


@pytest.mark.parametrize("spec", ["0/4", "5/4", "1/0", "4", "a/b", "-1/4", "1/4/2", ""])
def test_parse_spec_rejects(spec: str):
    with pytest.raises(PlanError, match="--shard"):
        parse_spec(spec)


def test_paths_beside_the_state():
    st = Path("/x/state/acme.db")
    assert shard_db_path(st, 3) == Path("/x/state/acme.shard-3.db")
    assert assignment_path(st) == Path("/x/state/acme.shards.json")
    assert shard_db_path(Path("/x/custom.sqlite"), 1) == Path("/x/custom.shard-1.sqlite")


# ---------------------------------------------------------------- greedy
def test_greedy_largest_first_onto_lightest():
    weights = {"a": 10, "b": 9, "c": 8, "d": 3, "e": 2, "f": 2}
    got = greedy(weights, 2)
    # a->1, b->2, c->2 (9<10), d->1 (10<17), e->1 (13<17), f->1 (15<17)
    assert got == {"a": 1, "b": 2, "c": 2, "d": 1, "e": 1, "f": 1}
    assert shard_loads(got, weights, 2) == [17, 17]


def test_greedy_is_deterministic_whatever_the_order():
    weights = {f"m{i}": (i * 37) % 11 + 1 for i in range(30)}
    reordered = dict(reversed(list(weights.items())))
    assert greedy(weights, 4) == greedy(reordered, 4)


def test_greedy_keeps_fixed_and_fills_the_lightest():
    weights = {"a": 100, "b": 10, "new": 5}
    got = greedy(weights, 2, fixed={"a": 2, "b": 2})
    assert got == {"a": 2, "b": 2, "new": 1}


def test_equal_weights_spread_by_id():
    got = greedy(dict.fromkeys(["d", "a", "c", "b", "e"], 1), 2)
    assert got == {"a": 1, "b": 2, "c": 1, "d": 2, "e": 1}


# ---------------------------------------------------------------- weights
def test_weights_from_report_source_bytes_and_older_keys(tmp_path: Path):
    new = report_file(tmp_path / "new.json", {"a": 1000, "b": 10})
    assert shard.weights_from_report(new) == {"a": 1000, "b": 10}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"mailboxes": [{"id": "a", "folders": [{"bytes_to_copy": 7, "bytes": 3}]}]}))
    assert shard.weights_from_report(old) == {"a": 10}
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(PlanError, match="not a migrator JSON report"):
        shard.weights_from_report(bad)


def test_unknown_weights_get_the_mean():
    assert shard.complete_weights(["a", "b", "c"], {"a": 10, "b": 30}) == {"a": 10, "b": 30, "c": 20}
    assert shard.complete_weights(["a", "b"], {}) == {"a": 1, "b": 1}


def test_weights_from_state_dbs(tmp_path: Path):
    seed_db(tmp_path / "p.shard-1.db", "a", [100, 200])
    seed_db(tmp_path / "p.shard-2.db", "b", [50])
    assert shard.weights_from_states([tmp_path / "p.shard-1.db", tmp_path / "p.shard-2.db"]) == {"a": 300, "b": 50}


# ---------------------------------------------------------------- the persisted assignment
def test_first_sharding_writes_the_file_and_new_mailboxes_move_nothing(tmp_path: Path):
    state = tmp_path / "state" / "p.db"
    weights = {f"m{i:02d}": (i % 7 + 1) * 1000 for i in range(20)}
    report = report_file(tmp_path / "dry.json", weights)
    first = assign(Inputs(plan_of(list(weights), state), state, 4, weights_report=report))
    saved = json.loads(assignment_path(state).read_text())
    assert {k: v["shard"] for k, v in saved["mailboxes"].items()} == first.shards
    assert saved["weights_from"] == "report" and saved["shards"] == 4
    assert first.shards == greedy(weights, 4)
    assert oct(assignment_path(state).stat().st_mode & 0o777) == "0o600"

    # Two mailboxes join, one of them huge: nobody else moves; each new one goes to the lightest shard.
    more = {**weights, "zbig": 50_000, "zsmall": 10}
    report_file(tmp_path / "dry.json", more)
    second = assign(Inputs(plan_of(list(more), state), state, 4, weights_report=report))
    assert {k: v for k, v in second.shards.items() if k in weights} == first.shards
    loads = shard_loads(first.shards, weights, 4)
    assert second.shards["zbig"] == loads.index(min(loads)) + 1
    loads[second.shards["zbig"] - 1] += 50_000
    assert second.shards["zsmall"] == loads.index(min(loads)) + 1

    # The same inputs again: nothing changes, the file is not rewritten.
    mtime = assignment_path(state).stat().st_mtime_ns
    assert assign(Inputs(plan_of(list(more), state), state, 4, weights_report=report)).shards == second.shards
    assert assignment_path(state).stat().st_mtime_ns == mtime


def test_other_shard_count_needs_rebalance(tmp_path: Path):
    state = tmp_path / "p.db"
    plan = plan_of(["a", "b", "c"], state)
    assign(Inputs(plan, state, 2))
    with pytest.raises(PlanError, match="--rebalance"):
        assign(Inputs(plan, state, 3))
    got = assign(Inputs(plan, state, 3, rebalance=True))
    assert got.count == 3 and sorted(got.shards.values()) == [1, 2, 3]


def test_rebalance_recomputes_and_a_shared_epoch_rebalances_once(tmp_path: Path):
    state = tmp_path / "p.db"
    ids = ["a", "b", "c", "d"]
    plan = plan_of(ids, state)
    equal = assign(Inputs(plan, state, 2))
    assert equal.shards == {"a": 1, "b": 2, "c": 1, "d": 2}
    report = report_file(tmp_path / "w.json", {"a": 100, "b": 1, "c": 90, "d": 2})
    # without --rebalance the weights do not move anyone
    assert assign(Inputs(plan, state, 2, weights_report=report)).shards == equal.shards
    re1 = assign(Inputs(plan, state, 2, rebalance=True, weights_report=report, epoch="job-uid-1"))
    assert re1.shards == {"a": 1, "c": 2, "d": 2, "b": 2}
    # a second shard of the same Job (same epoch) with other weights reuses it ...
    report_file(tmp_path / "w.json", {"a": 1, "b": 100, "c": 1, "d": 90})
    assert assign(Inputs(plan, state, 2, rebalance=True, weights_report=report, epoch="job-uid-1")).shards == re1.shards
    # ... a new epoch recomputes
    re2 = assign(Inputs(plan, state, 2, rebalance=True, weights_report=report, epoch="job-uid-2"))
    assert re2.shards == {"b": 1, "d": 2, "a": 2, "c": 2}


def test_same_epoch_other_shard_count_rebalances(tmp_path: Path):
    state = tmp_path / "p.db"
    plan = plan_of(["a", "b", "c"], state)
    assert assign(Inputs(plan, state, 2, rebalance=True, epoch="e")).count == 2
    got = assign(Inputs(plan, state, 3, rebalance=True, epoch="e"))
    assert got.count == 3 and sorted(got.shards.values()) == [1, 2, 3]


def test_lost_file_mailboxes_stay_with_their_shard_db(tmp_path: Path):
    state = tmp_path / "p.db"
    seed_db(shard_db_path(state, 3), "a", [10])
    seed_db(shard_db_path(state, 3), "b", [10])
    got = assign(Inputs(plan_of(["a", "b", "c", "d"], state), state, 3))
    assert got.shards["a"] == 3 and got.shards["b"] == 3
    assert {got.shards["c"], got.shards["d"]} == {1, 2}


def test_dry_run_writes_nothing(tmp_path: Path):
    state = tmp_path / "state" / "p.db"
    plan = plan_of(["a", "b"], state)
    jobs, db = select_shard(plan, list(plan.jobs), "2/2", dry_run=True)
    assert [j.id for j in jobs] == ["b"] and db == tmp_path / "state" / "p.shard-2.db"
    assert not (tmp_path / "state").exists()


def test_mailbox_subset_is_cut_from_the_whole_plan_assignment(tmp_path: Path):
    state = tmp_path / "p.db"
    plan = plan_of(["a", "b", "c", "d"], state)
    jobs, _ = select_shard(plan, [plan.jobs[2], plan.jobs[1]], "1/2")
    assert [j.id for j in jobs] == ["c"]  # a and c are shard 1; b is not
    assert set(json.loads(assignment_path(state).read_text())["mailboxes"]) == {"a", "b", "c", "d"}


def test_concurrent_starts_wait_for_the_lock_and_adopt_the_first_assignment(tmp_path: Path):
    """While one shard holds the lock and writes the assignment, the others (real
    processes) wait, then read it instead of computing their own."""
    state = tmp_path / "p.db"
    ids = [f"m{i}" for i in range(12)]
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        "version: 1\nname: p\nstate: p.db\nendpoints:\n  s: {type: maildir, path: 'src/{id}'}\n"
        "source: s\ndestination: s\nmailboxes:\n" + "".join(f"  - id: {i}\n" for i in ids),
        encoding="utf-8",
    )
    script = (
        "import sys, json; from pathlib import Path; from migrator.plan import load_plan; "
        "from migrator.shard import select_shard; p = load_plan(Path(sys.argv[1])); "
        "jobs, db = select_shard(p, list(p.jobs), sys.argv[2]); print(json.dumps([j.id for j in jobs]))"
    )
    lock = assignment_path(state).with_name("p.shards.json.lock")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with assignment_lock(lock):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(plan_file), f"{i}/3"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in (1, 2, 3)
        ]
        time.sleep(1.5)  # they have started and are waiting for the lock
        assert all(p.poll() is None for p in procs)
        # the "first shard" decides an unusual assignment: everything on shard 3 but m0
        decided = {i: 3 for i in ids} | {"m0": 1}
        shard.write_assignment(
            assignment_path(state),
            shard.Assignment("p", 3, decided, dict.fromkeys(ids, 1), created="t", updated="t"),
        )
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    got = [json.loads(o) for o, _e in outs]
    assert got == [["m0"], [], [i for i in ids if i != "m0"]]


def test_a_moved_mailbox_takes_its_checkpoints_along(tmp_path: Path):
    state = tmp_path / "p.db"
    plan = plan_of(["a", "b"], state)
    select_shard(plan, list(plan.jobs), "1/2")  # a -> 1, b -> 2
    seed_db(shard_db_path(state, 1), "a", [11, 22, 33])
    report = report_file(tmp_path / "w.json", {"a": 1, "b": 100})
    jobs, db = select_shard(plan, list(plan.jobs), "2/2", rebalance=True, weights_report=report)
    assert [j.id for j in jobs] == ["a"] and db == shard_db_path(state, 2)  # b -> 1 now, a -> 2
    st = State.open(db, readonly=True)
    ref = FolderRef("a", "maildir:/src", ("INBOX",), 1, ("INBOX",))
    assert st.folder_state(ref).done == frozenset({"0", "1", "2"})
    st.close()
    # an unsharded state DB of earlier runs also hands its mailboxes over
    seed_db(state, "b", [5])
    jobs, db1 = select_shard(plan, list(plan.jobs), "1/2")
    assert [j.id for j in jobs] == ["b"]
    st = State.open(db1, readonly=True)
    assert st.folder_state(FolderRef("b", "maildir:/src", ("INBOX",), 1, ("INBOX",))).done == frozenset({"0"})
    st.close()


def test_lock_times_out_with_a_clear_error(tmp_path: Path):
    lock = tmp_path / "x.lock"
    # a child process holds the lock (POSIX locks are per process)
    code = (
        "import sys, time; from pathlib import Path; from migrator.shard import assignment_lock\n"
        "with assignment_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(30)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(PlanError, match="assignment lock"), assignment_lock(lock, timeout=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- CLI
def test_cli_bad_shard_is_a_config_error(tmp_path: Path):
    demo = tmp_path / "plans"
    shutil.copytree(ROOT / "plans" / "demo", demo / "demo")
    shutil.copy(ROOT / "plans" / "demo.yaml", demo / "demo.yaml")
    res = runner.invoke(app, ["run", str(demo / "demo.yaml"), "--shard", "3/2"])
    assert res.exit_code == 2 and "--shard 3/2" in res.output
    assert not (tmp_path / "state").exists()


def test_cli_two_shards_of_the_demo_merge_into_the_single_run(tmp_path: Path):
    plans = tmp_path / "plans"
    shutil.copytree(ROOT / "plans" / "demo", plans / "demo")
    shutil.copy(ROOT / "plans" / "demo.yaml", plans / "demo.yaml")
    subprocess.run([sys.executable, str(plans / "demo" / "generate.py")], check=True, capture_output=True)
    plan = str(plans / "demo.yaml")
    for i in (1, 2):
        res = runner.invoke(app, ["run", plan, "--shard", f"{i}/2", "-q", "--report", str(tmp_path / f"s{i}.json")])
        assert res.exit_code == 0, res.output
    state = tmp_path / "state"
    assert (state / "demo.shard-1.db").exists() and (state / "demo.shard-2.db").exists()
    assert not (state / "demo.db").exists()
    res = runner.invoke(app, ["report", "merge", "--plan", plan, "-o", str(tmp_path / "m.json"),
                              str(tmp_path / "s2.json"), str(tmp_path / "s1.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [m["id"] for m in merged["mailboxes"]] == ["from-mbox", "from-maildir"]  # the plan's order
    assert merged["totals"]["copied"] == 52
    # one shard's report alone: the other mailbox is missing -> exit 1, file still written
    res = runner.invoke(app, ["report", "merge", "--plan", plan, "-o", str(tmp_path / "half.json"),
                              str(tmp_path / "s1.json")])  # fmt: skip
    assert res.exit_code == 1 and "in no input" in res.output
    # the same mailbox twice is refused
    res = runner.invoke(app, ["report", "merge", "-o", str(tmp_path / "x.json"), str(tmp_path / "s1.json"),
                              str(tmp_path / "s1.json")])  # fmt: skip
    assert res.exit_code == 2 and "is in both" in res.output
    # state DBs without the plan are refused
    res = runner.invoke(app, ["report", "merge", "-o", str(tmp_path / "x.json"), str(state / "demo.shard-1.db")])
    assert res.exit_code == 2 and "--plan" in res.output


# ---------------------------------------------------------------- merge rules
def test_merge_reports_sums_sorts_and_refuses_mixtures():
    a = {
        "schema": 1,
        "kind": "run",
        "plan": "p",
        "dry_run": False,
        "seconds": 5.0,
        "totals": {"copied": 2, "x": 1},
        "mailboxes": [{"id": "b"}],
        "problems": [{"severity": "info", "mailbox": "b", "folder": "", "kind": "k"}],
    }
    b = {**a, "seconds": 7.5, "totals": {"copied": 3, "x": 0}, "mailboxes": [{"id": "a"}],
         "problems": [{"severity": "error", "mailbox": "a", "folder": "", "kind": "k"}]}  # fmt: skip
    merged = merge_reports([("a", a), ("b", b)], order=["a", "b"])
    assert [m["id"] for m in merged["mailboxes"]] == ["a", "b"]
    assert merged["totals"] == {"copied": 5, "x": 1}
    assert merged["seconds"] == 7.5
    assert [p["severity"] for p in merged["problems"]] == ["error", "info"]
    with pytest.raises(PlanError, match="dry_run"):
        merge_reports([("a", a), ("c", {**b, "dry_run": True})])
    with pytest.raises(PlanError, match="is in both"):
        merge_reports([("a", a), ("a2", a)])


# ---------------------------------------------------------------- journal mode
MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
nfs.example:/export /mnt/state nfs4 rw,vers=4.2 0 0
//fs/share /mnt/smb\\040share cifs rw 0 0
/dev/vdb /mnt/state/local ext4 rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype", "mode"),
    [
        ("/var/lib/x.db", "ext4", "WAL"),
        ("/mnt/state/p.shard-1.db", "nfs4", "DELETE"),
        ("/mnt/state/deeper/not/yet/made.db", "nfs4", "DELETE"),
        ("/mnt/state/local/p.db", "ext4", "WAL"),
        ("/mnt/smb share/p.db", "cifs", "DELETE"),
        ("/mnt/statefoo/p.db", "ext4", "WAL"),
    ],
)
def test_journal_mode_by_filesystem(path: str, fstype: str, mode: str, monkeypatch: pytest.MonkeyPatch):
    existing = ("/var/lib", "/mnt/state", "/mnt/smb share", "/mnt/state/local", "/mnt")

    def ancestor(p: str | Path) -> str:
        p = str(p)
        while p not in existing and p != "/":
            p = os.path.dirname(p)
        return p

    monkeypatch.setattr(fsinfo, "existing_ancestor", ancestor)
    assert fsinfo.filesystem_type(path, MOUNTS) == fstype
    assert fsinfo.journal_mode(path, env={}, mounts_text=MOUNTS) == mode


def test_journal_mode_env_wins_and_is_checked(tmp_path: Path):
    assert fsinfo.journal_mode(tmp_path / "x.db", env={"MIGRATOR_STATE_JOURNAL": "delete"}) == "DELETE"
    assert fsinfo.journal_mode(tmp_path / "x.db", env={"MIGRATOR_STATE_JOURNAL": "WAL"}, mounts_text=MOUNTS) == "WAL"
    with pytest.raises(ValueError, match="MIGRATOR_STATE_JOURNAL"):
        fsinfo.journal_mode(tmp_path / "x.db", env={"MIGRATOR_STATE_JOURNAL": "off"})


def test_journal_mode_here_is_wal_on_the_local_disk(tmp_path: Path):
    """On this machine's own disk the real /proc/mounts says local: WAL, and SQLite accepts it."""
    mode = fsinfo.journal_mode(tmp_path / "x.db", env={})
    assert mode == "WAL"
    conn = sqlite3.connect(tmp_path / "x.db")
    assert conn.execute(f"pragma journal_mode={mode}").fetchone()[0].upper() == "WAL"
    conn.close()
