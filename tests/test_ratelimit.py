"""Rate limits, memory budget and adaptive connection limits (deterministic clocks)."""

from __future__ import annotations

import threading
import time

import pytest

from migrator.ratelimit import AdaptiveLimit, Budgets, ByteBudget, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_token_bucket_paces_to_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    slept = sum(bucket.take(500, sleep=clock.sleep) for _ in range(10))  # 5000 units at 1000/s
    assert slept == pytest.approx(4.0)  # the first second's burst is free
    assert clock.t == pytest.approx(4.0)


def test_token_bucket_refills_while_idle():
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    assert bucket.take(100, sleep=clock.sleep) == 0
    clock.t += 10  # idle: refills only up to one second's burst
    assert bucket.take(100, sleep=clock.sleep) == 0
    assert bucket.take(100, sleep=clock.sleep) == pytest.approx(1.0)


def test_byte_budget_blocks_until_released_and_lets_a_giant_pass_alone():
    budget = ByteBudget(100)
    a = budget.acquire(60)
    got = []
    t = threading.Thread(target=lambda: got.append(budget.acquire(60)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and got == []  # 60 + 60 > 100: waits
    budget.release(a)
    t.join(2)
    assert got == [60]
    budget.release(60)
    assert budget.acquire(10_000) == 100  # larger than the cap: proceeds when nothing else is held
    assert budget.used == 100


def test_adaptive_limit_halves_on_throttle_and_grows_back():
    limit = AdaptiveLimit(8, grow_after=3)
    limit.throttled()
    assert limit.limit == 4
    limit.throttled()
    limit.throttled()
    limit.throttled()
    assert limit.limit == 1  # never below one
    for _ in range(3 * 7):
        limit.succeeded()
    assert limit.limit == 8  # back to the maximum, not beyond
    limit.succeeded()
    assert limit.limit == 8


def test_adaptive_limit_grants_two_slots_atomically():
    limit = AdaptiveLimit(1)
    limit.acquire(n=2)  # more than the limit: granted because none are in use
    assert limit.in_use == 2
    waiter = threading.Thread(target=limit.acquire)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()
    limit.release(2)
    waiter.join(2)
    assert not waiter.is_alive() and limit.in_use == 1


def test_cancel_interrupts_a_wait():
    limit = AdaptiveLimit(1)
    limit.acquire()
    cancel = threading.Event()
    errors = []

    def wait() -> None:
        try:
            limit.acquire(cancel)
        except KeyboardInterrupt:
            errors.append("interrupted")

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    cancel.set()
    t.join(3)
    assert errors == ["interrupted"]


def test_budgets_are_per_endpoint_with_overrides():
    budgets = Budgets(8, {"imap://a:1": 2})
    assert budgets.for_key("imap://a:1").maximum == 2
    assert budgets.for_key("imap://b:1", 3).maximum == 3
    assert budgets.for_key("imap://c:1").maximum == 8
    assert budgets.for_key("imap://b:1") is budgets.for_key("imap://b:1")


def test_a_back_off_hint_holds_back_every_user_of_the_endpoint():
    limit = AdaptiveLimit(4)
    limit.throttled(pause=0.3)
    slept: list[float] = []
    assert limit.wait_if_paused(sleep=lambda s: (slept.append(s), time.sleep(s))) >= 0.25
    assert sum(slept) >= 0.25
    assert limit.wait_if_paused() == 0  # the pause is over
    assert limit.limit == 2
