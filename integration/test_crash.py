"""Crash and resume: SIGKILL at random moments, resume, and nothing is lost or twice.

Each trial copies a corpus into a fresh destination with ``migrator run``, kills the
process one to three times with SIGKILL, then resumes until the run ends cleanly.
Kill moments are drawn at random among three strategies:

* ``delay``: after a random delay since the process started (startup, listing,
  fetching, appending, committing: wherever it happens to be);
* ``commit``: the test polls the state DB and kills right after its message rows
  change (just after a ``pending`` or ``copied`` commit);
* ``pending``: kills right after a new batch is checkpointed pending, i.e. while it is
  being appended (the window where the destination may hold messages the checkpoint
  does not confirm).

After every kill: the state DB passes ``PRAGMA integrity_check`` and the destination
holds nothing the source does not (no duplicate, no altered copy). After the resume:
every source message is at the destination exactly once (bytes, flags, keywords,
internal dates, folders: ``snapshot.diff_snapshots``), no ``pending`` row is left and
the done rows equal the destination's messages per folder.

Trials per case in the normal run: 2 (IMAP -> IMAP, POP3 -> IMAP, Maildir -> IMAP); set
``MIGRATOR_CRASH_TRIALS=200`` for the long mode (and ``MIGRATOR_CRASH_SEED`` to replay
a run: the seed is printed).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from integration.corpus import INBOX, generate, load_maildir
from integration.dovecot import DovecotServer
from integration.faultproxy import FaultProxy
from integration.harness import (
    PW,
    PlanMailbox,
    Users,
    check_state,
    cli_env,
    forget_user,
    load_source,
    migrator,
    migrator_cmd,
    not_more_than_source,
    snap,
    write_plan,
)
from integration.snapshot import Snapshot, diff_snapshots, snapshot_corpus

LONG_TRIALS = int(os.environ.get("MIGRATOR_CRASH_TRIALS", "0"))
SEED = int(os.environ.get("MIGRATOR_CRASH_SEED", str(random.SystemRandom().randrange(1 << 30))))
CORPUS = 240  # messages per source (small attachments: a run takes a few seconds)
MAX_ATTACHMENT = 48 * 1024
DEFAULTS = "{batch_messages: 8, batch_bytes: 128KiB, retries: 3}"  # many commits: many kill points
RUN_TIMEOUT = 120.0
POLL = 0.004
STRATEGIES = ("delay", "commit", "pending")


@dataclass
class Tally:
    """What the kills hit, for the printed summary (the issue's figures)."""

    kills: Counter[str] = field(default_factory=Counter)
    pending_after_kill: int = 0  # kills that left unconfirmed rows (crash inside a send)
    finished_before_kill: int = 0
    trials: int = 0
    resumes: int = 0
    state_problems: list[str] = field(default_factory=list)

    def line(self, case: str) -> str:
        total = sum(self.kills.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items()))
        return (
            f"[crash {case}] seed {SEED}: {self.trials} trial(s), {total} SIGKILL(s) ({by}), "
            f"{self.pending_after_kill} left pending rows, {self.finished_before_kill} run(s) finished first, "
            f"{self.resumes} resume run(s): 0 lost, 0 duplicated"
        )


def _signature(db: Path) -> tuple[int, int, int] | None:
    """(rows, copied or matched, pending) of the messages table, None while unreadable."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
        try:
            row = conn.execute(
                "select count(*), total(status in ('copied', 'matched')),"
                " total(status = 'pending') + (select coalesce(sum(json_array_length(rows)), 0) from inflight)"
                " from messages"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0]), int(row[1]), int(row[2])


def _kill_at_random(
    proc: subprocess.Popen[bytes], db: Path, rng: random.Random, strategy: str, run_seconds: float
) -> bool:
    """Wait for the chosen moment, then SIGKILL. False if the run ended first."""
    deadline = time.monotonic() + RUN_TIMEOUT
    if strategy == "delay":
        wait_until = time.monotonic() + rng.uniform(0.05, max(0.2, run_seconds))
        while time.monotonic() < wait_until and proc.poll() is None:
            time.sleep(POLL)
    else:
        changes_wanted = rng.randint(1, 12)
        last = _signature(db)
        seen = 0
        while proc.poll() is None and time.monotonic() < deadline:
            now = _signature(db)
            if now is not None and now != last:
                grew_pending = last is None or now[2] > last[2]
                last = now
                if strategy == "commit" or grew_pending:
                    seen += 1
                    if seen >= changes_wanted:
                        break
            time.sleep(POLL)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return True


Compare = Callable[[Snapshot, Snapshot], list[str]]


def _after_kill(db: Path, src: Snapshot, dst: Snapshot, extra: Compare) -> int:
    """Checks that hold at any moment; returns the number of pending rows."""
    assert extra(src, dst) == [], "the destination holds something twice (or altered) after a kill"
    if not db.exists():
        return 0
    st = check_state(db)
    assert st.integrity == "ok", st.integrity
    return st.pending


def crash_trials(
    case: str,
    plan: Callable[[str, Path], Path],
    new_dest: Users,
    src: Snapshot,
    dst_snap: Callable[[str], Snapshot],
    compare: Compare,
    extra: Compare,
    tmp_path: Path,
    trials: int,
) -> Tally:
    """Run ``trials`` kill-and-resume trials; assert exactly-once after each."""
    rng = random.Random(f"{SEED}:{case}")
    tally = Tally()
    run_seconds = 1.0  # a whole run's duration as last seen: delays are drawn below it
    for trial in range(trials):
        dest = new_dest()
        work = tmp_path / f"t{trial}"
        work.mkdir()
        plan_file = plan(dest, work)
        db = work / "robust.db"
        for _kill in range(rng.randint(1, 3)):
            strategy = rng.choice(STRATEGIES)
            began = time.monotonic()
            proc = subprocess.Popen(
                migrator_cmd("run", str(plan_file), "-q"),
                env=cli_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                killed = _kill_at_random(proc, db, rng, strategy, run_seconds)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)
            if not killed:
                tally.finished_before_kill += 1
                run_seconds = max(0.3, 0.8 * (time.monotonic() - began))
                assert proc.returncode == 0, f"trial {trial}: run ended with {proc.returncode} before the kill"
                continue
            tally.kills[strategy] += 1
            pending = _after_kill(db, src, dst_snap(dest), extra)
            tally.pending_after_kill += bool(pending)
        try:
            resumed = migrator("run", str(plan_file), "-v", timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stderr or b"")[-4000:]
            hung = f"trial {trial} (seed {SEED}): the resume hung; its log ends with:\n{tail!r}"
            raise AssertionError(hung) from None
        tally.resumes += 1
        assert resumed.returncode == 0, f"trial {trial} (seed {SEED}): {resumed.stdout}{resumed.stderr}"
        got = dst_snap(dest)
        assert compare(src, got) == [], f"trial {trial} (seed {SEED})"
        st = check_state(db)
        assert st.integrity == "ok"
        held = {folder: len(msgs) for folder, msgs in got.items() if msgs}
        assert st.done_by_folder == held, f"trial {trial}: state {st.done_by_folder} != destination {held}"
        if st.pending:
            problem = f"trial {trial}: {st.pending} pending row(s) after a clean resume {st.statuses}"
            tally.state_problems.append(problem)
        tally.trials += 1
        new_dest.forget()
    return tally


class StateInconsistent(AssertionError):
    """The destination is exact but the state DB keeps rows it should not."""


def assert_state_clean(tally: Tally) -> None:
    if tally.state_problems:
        raise StateInconsistent("; ".join(tally.state_problems[:3]))


# ----------------------------------------------------------------------------- IMAP -> IMAP


@pytest.fixture(scope="module")
def imap_source(dovecot: DovecotServer, _user_counter) -> Iterator[tuple[str, Snapshot]]:
    user = f"crash{next(_user_counter)}src"
    dovecot.add_user(user, PW)
    load_source(dovecot, user, generate(CORPUS, seed=11, max_attachment=MAX_ATTACHMENT))
    snapshot = snap(dovecot, user)
    assert sum(len(v) for v in snapshot.values()) == CORPUS
    yield user, snapshot
    forget_user(dovecot, user)


def test_imap_to_imap_survives_random_sigkills(dovecot, imap_source, new_user, tmp_path):
    src_user, src_snap = imap_source

    def plan(dest: str, work: Path) -> Path:
        return write_plan(work / "plan.yaml", dovecot, [PlanMailbox("box", src_user, dest)], defaults=DEFAULTS)

    tally = crash_trials(
        "imap",
        plan,
        Users(dovecot, new_user),
        src_snap,
        lambda dest: snap(dovecot, dest),
        diff_snapshots,
        not_more_than_source,
        tmp_path,
        LONG_TRIALS or 2,
    )
    print(tally.line("IMAP -> IMAP"))
    assert sum(tally.kills.values()) >= 1, "no kill landed: the harness tests nothing"
    assert_state_clean(tally)


# ----------------------------------------------------------------------------- POP3 -> IMAP


def _bytes_only(src: Snapshot, dst: Snapshot) -> list[str]:
    """POP3 carries neither flags nor internal dates: compare the INBOX's bytes as a
    multiset (and that nothing went anywhere else)."""
    want = Counter(f.sha256 for f in src.get(INBOX, []))
    got = Counter(f.sha256 for f in dst.get(INBOX, []))
    lines = [f"INBOX: missing sha256={h[:12]}.. x{n}" for h, n in (want - got).items()]
    lines += [f"INBOX: extra sha256={h[:12]}.. x{n}" for h, n in (got - want).items()]
    lines += [f"{'/'.join(k)}: unexpected folder with {len(v)}" for k, v in dst.items() if k != INBOX and v]
    return lines


def _no_extra_bytes(src: Snapshot, dst: Snapshot) -> list[str]:
    return [line for line in _bytes_only(src, dst) if "missing" not in line]


def test_pop3_to_imap_survives_random_sigkills(dovecot, new_user, tmp_path):
    src_user = new_user(dovecot, PW)
    messages = list(generate(CORPUS, seed=12, max_attachment=MAX_ATTACHMENT))
    inbox_only = [type(m)(INBOX, m.flags, m.internal_date, m.raw) for m in messages[:150]]
    load_source(dovecot, src_user, inbox_only, folders=[INBOX])
    src_snap = snap(dovecot, src_user)
    assert len(src_snap[INBOX]) == 150

    def plan(dest: str, work: Path) -> Path:
        return write_plan(
            work / "plan.yaml", dovecot, [PlanMailbox("box", src_user, dest)], defaults=DEFAULTS, src_type="pop3"
        )

    tally = crash_trials(
        "pop3",
        plan,
        Users(dovecot, new_user),
        src_snap,
        lambda dest: snap(dovecot, dest),
        _bytes_only,
        _no_extra_bytes,
        tmp_path,
        LONG_TRIALS or 2,
    )
    print(tally.line("POP3 -> IMAP"))
    assert sum(tally.kills.values()) >= 1
    # the source keeps every message (after_copy: keep)
    assert Counter(f.sha256 for f in snap(dovecot, src_user)[INBOX]) == Counter(f.sha256 for f in src_snap[INBOX])
    assert_state_clean(tally)


# ----------------------------------------------------------------------------- Maildir -> IMAP


def test_maildir_to_imap_survives_random_sigkills(dovecot, new_user, tmp_path):
    messages = list(generate(CORPUS, seed=13, max_attachment=MAX_ATTACHMENT))
    source = tmp_path / "src" / "Maildir"
    load_maildir(messages, source)
    expected = snapshot_corpus(messages)

    def plan(dest: str, work: Path) -> Path:
        return write_plan(
            work / "plan.yaml",
            dovecot,
            [PlanMailbox("box", "local", dest)],
            defaults=DEFAULTS,
            src_type="maildir",
            src_path=source,
        )

    tally = crash_trials(
        "maildir",
        plan,
        Users(dovecot, new_user),
        expected,
        lambda dest: snap(dovecot, dest),
        diff_snapshots,
        not_more_than_source,
        tmp_path,
        LONG_TRIALS or 2,
    )
    print(tally.line("Maildir -> IMAP"))
    assert sum(tally.kills.values()) >= 1
    assert_state_clean(tally)


# ----------------------------------------------------------------------------- two runs at once


def test_second_run_refused_while_first_runs_then_stale_lock_recognised(dovecot, imap_source, new_user, tmp_path):
    """Two processes on the same plan: the second refuses at once (exit 4, names the
    lock and the holder's pid) and touches nothing; after the first is killed with
    SIGKILL its lock file stays behind, and the next run takes it and completes."""
    src_user, src_snap = imap_source
    dest = new_user(dovecot, PW)
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxy.throttle(300_000)  # keeps the first run busy for a while
        plan_file = write_plan(
            tmp_path / "plan.yaml",
            dovecot,
            [PlanMailbox("box", src_user, dest)],
            defaults=DEFAULTS,
            src_port=proxy.port,
        )
        db, lock = tmp_path / "robust.db", tmp_path / "robust.db.lock"
        first = subprocess.Popen(
            migrator_cmd("run", str(plan_file), "-q"), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 60
            while (_signature(db) or (0, 0, 0))[1] < 8 and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.poll() is None, "the first run ended before the second could start"
            before = _signature(db)
            second = migrator("run", str(plan_file), timeout=60)
            assert second.returncode == 4, second.stdout + second.stderr
            message = second.stdout + second.stderr
            assert "another run" in message and str(lock) in message and f"pid {first.pid}" in message
            assert first.poll() is None
            after = _signature(db)
            assert after is not None and before is not None and after[0] >= before[0]  # the first one goes on
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        assert lock.exists() and lock.read_text().strip() == str(first.pid)  # what a killed run leaves
        proxy.throttle(None)
        third = migrator("run", str(plan_file), timeout=RUN_TIMEOUT)
    assert third.returncode == 0, third.stdout + third.stderr
    assert diff_snapshots(src_snap, snap(dovecot, dest)) == []
    st = check_state(db)
    assert (st.integrity, st.pending) == ("ok", 0)
