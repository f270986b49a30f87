"""The benchmark's checkpoint column (integration/bench/statetime.py): migrator's CLI
with the state store's lock timed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from integration.bench.statetime import TimedRLock

ROOT = Path(__file__).resolve().parents[1]


def test_timed_lock_counts_outermost_holds_only_and_stays_reentrant():
    busy = [0.0, 0.0, 0.0]
    lock = TimedRLock(busy)
    with lock, lock:  # reentrant: a nested hold is part of the outer one
        pass
    with lock:
        pass
    assert busy[2] == 2 and busy[0] > 0
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lock:
            entered.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    assert entered.wait(5)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock._lock.acquire(timeout=0.05)))
    waiter.start()
    waiter.join(5)
    assert got == [False]  # excludes another thread while held
    release.set()
    t.join(5)
    assert busy[2] == 3 and busy[0] >= busy[1]  # held at least as long as it worked


def copy_through_wrapper(tmp_path: Path, **env: str) -> tuple[list[str], int]:
    out, state, record = tmp_path / "out", tmp_path / "s.db", tmp_path / "state-seconds"
    src = ROOT / "plans" / "demo" / "mbox"
    env = dict(os.environ, BENCH_STATE_FILE=str(record), PYTHONPATH=str(ROOT), **env)
    argv = [sys.executable, "-m", "integration.bench.statetime", "copy", f"mbox:{src}", f"maildir:{out}"]
    res = subprocess.run([*argv, "--state", str(state)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "copied 26 message(s)" in res.stdout
    assert len(list((out / "cur").iterdir())) + len(list((out / "new").iterdir())) > 0
    with sqlite3.connect(state) as db:
        rows = db.execute("select count(*) from messages where status = 'copied'").fetchone()[0]
    return record.read_text(encoding="ascii").split(), rows


def test_a_copy_through_the_wrapper_reports_its_state_time_and_copies_the_same(tmp_path: Path):
    (held, cpu, holds), rows = copy_through_wrapper(tmp_path)
    assert float(held) >= float(cpu) > 0 and int(holds) >= 3  # the run row, a folder, its checkpoints
    assert rows == 26


def test_the_no_checkpoint_variant_copies_everything_and_writes_no_message_row(tmp_path: Path):
    _record, rows = copy_through_wrapper(tmp_path, BENCH_CHECKPOINTS="off")
    assert rows == 0
