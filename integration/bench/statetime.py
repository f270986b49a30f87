"""``python -m integration.bench.statetime <migrator arguments>``: migrator's CLI with the
state store's lock timed, for the benchmark's checkpoint column (issue 6: checkpoint
cost under 5 % of run time).

Every read and write of the state DB (checkpoints, folder rows, marks, the run row)
happens while its one connection's lock is held, so the time the lock was held (the
outermost holds only; the lock is reentrant) is the whole time the run spent in its
state store. Other threads keep fetching and appending meanwhile, so this is an upper
bound of what checkpoints cost the wall time; under the GIL a thread holding the lock
also waits for the interpreter, so the CPU time of the holding threads is recorded too.
The seconds held, those CPU seconds and the number of holds are written to the file
named by ``BENCH_STATE_FILE`` when the process exits.

What checkpoints cost the wall time is measured by the difference: with
``BENCH_CHECKPOINTS=off`` no message row is written (the bench's ``migrator-nockpt``,
first copies only; such a run could not resume).

Cost of the timing: two ``perf_counter`` calls and a thread-local per hold (a few
microseconds; a first copy of 10,000 messages holds the lock a few hundred times).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from types import TracebackType


class TimedRLock:
    """A reentrant lock that adds the time of each outermost hold to ``busy``."""

    def __init__(self, busy: list[float]) -> None:
        self._lock = threading.RLock()
        self._local = threading.local()
        self._busy = busy

    def __enter__(self) -> TimedRLock:
        self._lock.acquire()
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.since = time.perf_counter()
            self._local.cpu = time.thread_time()
        self._local.depth = depth + 1
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            self._busy[0] += time.perf_counter() - self._local.since
            self._busy[1] += time.thread_time() - self._local.cpu
            self._busy[2] += 1
        self._lock.release()


def main() -> None:
    from migrator import state

    busy = [0.0, 0.0, 0.0]  # seconds held, CPU seconds of the holding threads, holds
    plain_init = state.State.__init__

    def init(self: state.State, *args: object, **kwargs: object) -> None:
        plain_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self._lock = TimedRLock(busy)  # type: ignore[assignment]

    state.State.__init__ = init  # type: ignore[method-assign]
    if os.environ.get("BENCH_CHECKPOINTS") == "off":  # the bench's migrator-nockpt: rows not written
        state.State._upsert = lambda self, ref, rows, run_id: None  # type: ignore[method-assign]
        state.State.confirm_sent = lambda self, ref, msgs, run_id, reasons=None, ticket=0: None  # type: ignore[method-assign]
        state.State.journal_pending = lambda self, ref, msgs, run_id: 0  # type: ignore[method-assign]
    target = os.environ.get("BENCH_STATE_FILE")
    if target:

        def write() -> None:
            with open(target, "w", encoding="ascii") as fh:
                fh.write(f"{busy[0]:.6f} {busy[1]:.6f} {int(busy[2])}\n")

        atexit.register(write)
    from migrator.cli import main as cli

    sys.argv = ["migrator", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
