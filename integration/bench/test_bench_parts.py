"""The benchmark's own measuring and comparing parts (the benchmark itself is not run
by the test suite: ``python -m integration.bench``)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from integration.bench.measure import run_measured, tree_cpu
from integration.bench.run import fidelity
from integration.snapshot import MessageFacts


def facts(sha: str, flags: set[str] = frozenset(), keywords: set[str] = frozenset(), day: int = 1) -> MessageFacts:
    return MessageFacts(sha, 10, frozenset(flags), frozenset(keywords), datetime(2020, 1, day, tzinfo=UTC))


def test_fidelity_summary() -> None:
    src = {
        ("INBOX",): [facts("a", {"\\Seen"}), facts("b", keywords={"$Work"}), facts("c"), facts("c")],
        ("Sent",): [facts("d", day=2)],
        ("Gone",): [facts("e")],
    }
    assert fidelity(src, {k: list(v) for k, v in src.items()}) == "exact"
    dst = {
        ("INBOX",): [facts("a"), facts("b"), facts("c"), facts("x")],
        ("Sent",): [facts("d", day=3), facts("z")],
    }
    assert fidelity(src, dst) == (
        "1 missing; 1 extra; 1 bytes changed; 1 flags differ; 1 keywords differ (1 lost); 1 dates differ"
    )


def test_run_measured_sees_cpu_memory_and_exit_code() -> None:
    code = (
        "b = bytearray(60_000_000)\n"
        "for i in range(0, len(b), 4096): b[i] = 1\n"
        "sum(range(3_000_000))\n"
        "raise SystemExit(3)"
    )
    m = run_measured([sys.executable, "-c", code], server_pid=os.getpid(), timeout=60)
    assert m.returncode == 3
    assert m.peak_rss >= 60_000_000
    assert m.client_cpu > 0.01
    assert 0 < m.wall < 60
    assert m.server_cpu >= 0  # this process stands in for the server: it did little meanwhile
    assert tree_cpu(os.getpid()) > 0
