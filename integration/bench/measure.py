"""Measuring one client run: wall time, the client's CPU and peak RSS, the server's CPU.

Client: the process is started with ``subprocess.Popen`` and reaped with
``os.wait4``, whose rusage gives its exact user/system CPU (with that of any children
it waited for). Its peak RSS is sampled every 20 ms from /proc: the sum of VmHWM (each
process's high-water mark) over its process tree. (rusage's maxrss is not used: it
counts the benchmark's own memory, inherited at fork, before the exec.)

Server: Dovecot's master reaps its imap processes, so the master's own CPU plus its
children's (``cutime``/``cstime``) plus that of the children still alive is the
CPU the whole server used. Sampled before and after a run (after a short pause so
that the client's imap processes have exited and been reaped).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.02
SETTLE_SECONDS = 0.3  # for the server's imap processes to exit after the client's LOGOUT
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Measured:
    wall: float  # seconds
    returncode: int
    client_cpu: float  # user + system seconds of the client (and its reaped children)
    peak_rss: int  # bytes
    server_cpu: float  # seconds of the server's whole process tree
    output: str  # stdout + stderr (tail), for failures


def _processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, cpu ticks incl. reaped children, rss pages) of every process."""
    out: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # fields[0] is the state (stat field 3): ppid=4, utime..cstime=14..17, rss=24
        out[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]), int(fields[21]))
    return out


def _tree(procs: dict[int, tuple[int, int, int]], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu, _rss) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, including reaped children."""
    procs = _processes()
    return sum(procs[p][1] for p in _tree(procs, root)) / _TICK


def tree_rss(root: int) -> int:
    """Bytes: the sum over ``root`` and its descendants of each one's peak RSS so far
    (VmHWM; a process that exec'd counts from its exec, not from the fork)."""
    procs = _processes()
    total = 0
    for pid in _tree(procs, root):
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def run_measured(
    argv: Sequence[str],
    *,
    server_pid: int,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
) -> Measured:
    """Run ``argv`` to completion and measure it (see the module docstring)."""
    before = tree_cpu(server_pid)
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    peak = max(peak, tree_rss(proc.pid))
                stop.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
        log.seek(0)
        output = log.read().decode("utf-8", "replace")[-4000:]
    time.sleep(SETTLE_SECONDS)
    server = tree_cpu(server_pid) - before
    return Measured(
        wall=wall,
        returncode=proc.returncode,
        client_cpu=usage.ru_utime + usage.ru_stime,
        peak_rss=peak,
        server_cpu=server,
        output=output,
    )
