"""The thread that writes a copy's confirmations off the sending thread
(migrator.transfer._Deferred): in order, all of them, and a failed write surfaces."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from migrator.transfer import _Deferred


def test_writes_happen_in_order_off_the_calling_thread_and_drain_waits_for_them():
    done: list[tuple[int, str]] = []
    gate = threading.Event()
    writer = _Deferred("test")
    writer.submit(lambda: gate.wait(5))  # the writer is busy: submit must not wait for it
    for i in range(50):
        writer.submit(lambda i=i: done.append((i, threading.current_thread().name)))
    assert done == []
    gate.set()
    writer.drain()
    assert [i for i, _ in done] == list(range(50))
    assert {name for _, name in done} == {"test"}
    writer.close()


def test_a_failed_write_is_raised_to_the_sender_and_later_writes_are_skipped():
    done: list[int] = []
    writer = _Deferred("test")

    def fail() -> None:
        raise sqlite3.OperationalError("database is locked")

    writer.submit(lambda: done.append(1))
    writer.submit(fail)
    writer.submit(lambda: done.append(3))  # its batch stays pending (journaled)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        writer.drain()
    assert done == [1]
    with pytest.raises(sqlite3.OperationalError):
        writer.submit(lambda: done.append(4))
    writer.close()


def test_close_writes_what_is_queued():
    done: list[int] = []
    gate = threading.Event()
    writer = _Deferred("test")
    writer.submit(lambda: gate.wait(5))
    writer.submit(lambda: done.append(1))
    threading.Timer(0.05, gate.set).start()
    writer.close()
    assert done == [1]
