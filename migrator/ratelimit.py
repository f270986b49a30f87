"""Throughput controls shared by every mailbox of a run.

* ``TokenBucket``: ``--bwlimit`` (bytes/s) and ``--max-messages-per-second``; applied
  to the byte stream at the point where messages are sent (rclone's accounting layer),
  not inside a connector.
* ``ByteBudget``: a cap on message bytes held in memory at once across all workers,
  so a mailbox of 50 MB attachments or a million messages runs in the same memory.
* ``AdaptiveLimit``: a per-endpoint connection budget shared across mailboxes that
  halves when the server throttles and grows back by one after a run of successes
  (AIMD), never above the configured maximum.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` units per second with a burst of one second's worth (or ``burst``)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, amount: float, sleep: Callable[[float], None] = time.sleep) -> float:
        """Take ``amount`` tokens, sleeping as long as needed; returns the seconds slept.
        An amount above the capacity is allowed (it drives the balance negative)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            sleep(wait)
        return wait


class Limits:
    """The run's rate limits (both optional)."""

    def __init__(self, bytes_per_second: float | None = None, messages_per_second: float | None = None):
        self.bytes = TokenBucket(bytes_per_second) if bytes_per_second else None
        self.messages = TokenBucket(messages_per_second) if messages_per_second else None

    def take(self, messages: int, nbytes: int) -> None:
        if self.messages is not None:
            self.messages.take(messages)
        if self.bytes is not None:
            self.bytes.take(nbytes)


class ByteBudget:
    """At most ``capacity`` bytes reserved at once. A reservation larger than the
    capacity waits until nothing else is reserved, then proceeds alone."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, cancel: threading.Event | None = None) -> int:
        want = min(max(0, int(nbytes)), self.capacity)
        with self._cond:
            while self._used and self._used + want > self.capacity:
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                self._cond.wait(timeout=0.5)
            self._used += want
        return want

    def release(self, reserved: int) -> None:
        with self._cond:
            self._used = max(0, self._used - reserved)
            self._cond.notify_all()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used


class AdaptiveLimit:
    """A counting semaphore whose limit moves: ``throttled()`` halves it (at least 1),
    ``succeeded()`` adds one after ``grow_after`` consecutive successes, up to ``maximum``."""

    def __init__(self, maximum: int, grow_after: int = 20):
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.grow_after = grow_after
        self._in_use = 0
        self._streak = 0
        self._paused_until = 0.0
        self._cond = threading.Condition()

    def acquire(self, cancel: threading.Event | None = None, n: int = 1) -> None:
        """Take ``n`` slots at once (a worker whose source and destination are the same
        server needs two: taking them together cannot deadlock). More slots than the
        limit are granted only when none are in use."""
        with self._cond:
            while self._in_use and self._in_use + n > self.limit:
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                self._cond.wait(timeout=0.5)
            self._in_use += n

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._in_use = max(0, self._in_use - n)
            self._cond.notify_all()

    def throttled(self, pause: float | None = None) -> None:
        """Halve the limit; with ``pause`` (a server's back-off hint, seconds) also hold
        every user of this endpoint back until then, not only the one that was told."""
        with self._cond:
            self.limit = max(1, self.limit // 2)
            self._streak = 0
            if pause:
                self._paused_until = max(self._paused_until, time.monotonic() + pause)

    def wait_if_paused(
        self, cancel: threading.Event | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> float:
        """Sleep until the endpoint's back-off has passed; returns the seconds slept."""
        slept = 0.0
        while True:
            with self._cond:
                left = self._paused_until - time.monotonic()
            if left <= 0:
                return slept
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            step = min(left, 0.5)
            sleep(step)
            slept += step

    def succeeded(self) -> None:
        with self._cond:
            self._streak += 1
            if self._streak >= self.grow_after and self.limit < self.maximum:
                self.limit += 1
                self._streak = 0
                self._cond.notify_all()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use


class Budgets:
    """One AdaptiveLimit per endpoint (host:port, or the local path), created on demand."""

    def __init__(self, default_max: int, overrides: dict[str, int] | None = None):
        self.default_max = max(1, default_max)
        self.overrides = dict(overrides or {})
        self._limits: dict[str, AdaptiveLimit] = {}
        self._lock = threading.Lock()

    def for_key(self, key: str, maximum: int | None = None) -> AdaptiveLimit:
        with self._lock:
            limit = self._limits.get(key)
            if limit is None:
                limit = AdaptiveLimit(self.overrides.get(key) or maximum or self.default_max)
                self._limits[key] = limit
            return limit
