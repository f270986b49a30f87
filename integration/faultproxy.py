"""A threaded TCP proxy on 127.0.0.1 that injects network faults, for tests.

Put it in front of a server and point the client at ``proxy.port``; every accepted
connection gets its own upstream connection and two pump threads (client -> server,
"up"; server -> client, "down"). Faults:

* ``drop``: close both sockets (FIN) after a given number of bytes in one direction;
* ``reset``: abort both sockets with RST (SO_LINGER 0), e.g. in the middle of an APPEND
  literal (``pattern=b"APPEND"``, direction "up") or of a FETCH response
  (``pattern=b"BODY[] {"``, direction "down");
* ``stall``: stop forwarding in both directions and keep the sockets open, so that
  only a client timeout can notice (what is sent meanwhile is discarded);
* ``throttle``: forward at most so many bytes per second in a direction;
* ``every``: a periodic fault every N bytes of traffic, counted over all connections
  (both directions unless one is given), cut exactly at the N-byte boundary.

One-shot faults (``add``) fire once, on the first connection that reaches them; what
fired is recorded in ``injected``. The proxy never interprets the protocol beyond
looking for a byte pattern, and it never holds a connection open past ``stop()``.

Usage::

    with FaultProxy(("127.0.0.1", server.imap_port)) as proxy:
        proxy.add(Fault("reset", "up", after=5000, pattern=b"APPEND"))
        ... connect to 127.0.0.1:proxy.port ...
        assert len(proxy.injected) == 1
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["drop", "reset", "stall"]
Direction = Literal["up", "down"]
POLL_SECONDS = 0.2  # how quickly pump threads notice a closed or stalled link
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0
MAX_PATTERN = 256  # longest pattern recognised across read boundaries


@dataclass
class Fault:
    """A one-shot fault: ``action`` once ``after`` bytes have passed in ``direction`` on
    one connection, counted from the connection's start or, with ``pattern``, from the
    end of the first occurrence of ``pattern`` in that direction. ``before_line``: fire
    at the start of the line holding the pattern instead, so that the peer gets none
    of that line (e.g. a tagged OK; the line start must be in the same read as the
    pattern or the one before). ``connection`` limits it to the n-th accepted
    connection (1-based)."""

    action: Action
    direction: Direction
    after: int = 0
    pattern: bytes | None = None
    connection: int | None = None
    before_line: bool = False  # with pattern: fire at the start of the line holding it (``after`` ignored)


@dataclass(frozen=True)
class Injected:
    """A fault that fired: what, where (connection number, direction) and at which
    byte offset of that direction's stream."""

    action: Action
    direction: Direction
    connection: int
    offset: int


@dataclass
class _Periodic:
    every: int
    actions: tuple[Action, ...]
    direction: Direction | None  # None: both directions count
    counted: int = 0
    fired: int = 0

    def next_action(self) -> Action:
        return self.actions[self.fired % len(self.actions)]


@dataclass
class _Link:
    number: int
    client: socket.socket
    upstream: socket.socket
    offsets: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    tails: dict[str, bytes] = field(default_factory=lambda: {"up": b"", "down": b""})
    armed: dict[int, int] = field(default_factory=dict)  # id(fault) -> firing offset
    closed: bool = False
    stalled: bool = False


class FaultProxy:
    """See the module docstring. Thread-safe; ``start``/``stop`` or use ``with``."""

    def __init__(self, target: tuple[str, int], *, listen_host: str = "127.0.0.1") -> None:
        self.target = target
        self.listen_host = listen_host
        self.port = 0
        self.injected: list[Injected] = []
        self.connections = 0
        self.bytes = {"up": 0, "down": 0}
        self._faults: list[Fault] = []
        self._periodic: _Periodic | None = None
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ control
    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, 0))
        listener.listen(64)
        listener.settimeout(POLL_SECONDS)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; wait (bounded) for the threads."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._close(link, rst=False)
        deadline = time.monotonic() + 5
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, fault: Fault) -> None:
        """Arm a one-shot fault."""
        with self._lock:
            self._faults.append(fault)

    def every(self, nbytes: int, actions: tuple[Action, ...] = ("drop",), direction: Direction | None = None) -> None:
        """A fault every ``nbytes`` of traffic (over all connections), cycling through
        ``actions``. ``nbytes`` <= 0 turns it off."""
        with self._lock:
            self._periodic = _Periodic(nbytes, actions, direction) if nbytes > 0 else None

    def throttle(self, bytes_per_second: float | None, direction: Direction = "down") -> None:
        """Forward at most this many bytes per second in ``direction`` (None: no limit)."""
        with self._lock:
            if bytes_per_second:
                self._rates[direction] = float(bytes_per_second)
            else:
                self._rates.pop(direction, None)

    def clear(self) -> None:
        """Disarm every fault and limit (connections already stalled stay stalled)."""
        with self._lock:
            self._faults.clear()
            self._periodic = None
            self._rates.clear()

    def pending(self) -> int:
        """One-shot faults not fired yet."""
        with self._lock:
            return len(self._faults)

    def count(self, action: Action | None = None) -> int:
        return sum(1 for i in self.injected if action is None or i.action == action)

    def kill_connections(self) -> int:
        """Drop every open connection now; returns how many there were."""
        with self._lock:
            links = [link for link in self._links if not link.closed]
        for link in links:
            self._close(link, rst=False)
        return len(links)

    # ------------------------------------------------------------------ plumbing
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:
                self._abort_socket(client, rst=True)
                continue
            for sock in (client, upstream):
                sock.settimeout(POLL_SECONDS)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                link = _Link(self.connections, client, upstream)
                self._links.append(link)
            for direction, src, dst in (("up", client, upstream), ("down", upstream, client)):
                thread = threading.Thread(
                    target=self._pump,
                    args=(link, direction, src, dst),
                    name=f"faultproxy-{self.port}-{link.number}-{direction}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
            self._threads = [t for t in self._threads if t.is_alive()]

    def _pump(self, link: _Link, direction: Direction, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not link.closed and not self._stopping.is_set():
                try:
                    data = src.recv(CHUNK)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                if link.stalled:
                    continue  # swallowed: only the client's timeout can notice
                if not self._forward(link, direction, data, dst):
                    break
        finally:
            self._close(link, rst=False)

    def _forward(self, link: _Link, direction: Direction, data: bytes, dst: socket.socket) -> bool:
        """Send ``data`` on, cut at the first fault; False once the link is gone."""
        view = memoryview(data)
        while view:
            if link.stalled:
                return True
            with self._lock:
                cut, action, token = self._peek(link, direction, bytes(view))
                rate = self._rates.get(direction)
                periodic_cut = self._cut_for_periodic(direction)
            n = len(view) if cut is None else cut
            if periodic_cut is not None:
                n = min(n, periodic_cut)
            if rate:
                n = min(n, max(1, int(rate / 20)))
            piece = view[:n]
            if piece and not self._send(link, dst, piece, rate):
                return False
            with self._lock:
                fired = self._count(link, direction, len(piece), bytes(piece[-MAX_PATTERN:]))
                if action is not None and n == cut:
                    fired = self._commit(link, direction, token, action) or fired
            view = view[n:]
            if fired is not None:
                self._fire(link, fired)
                if fired != "stall":
                    return False
        return True

    def _peek(self, link: _Link, direction: Direction, data: bytes) -> tuple[int | None, Action | None, Fault | None]:
        """The nearest one-shot fault within ``data``: (bytes to forward before it, its
        action, the fault), or (None, None, None). Arms pattern faults (by offset)."""
        start = link.offsets[direction]
        tail = link.tails[direction]
        window = tail + data
        best: tuple[int, Action, Fault] | None = None
        for fault in self._faults:
            if fault.direction != direction or fault.connection not in (None, link.number):
                continue
            fire_at = link.armed.get(id(fault))
            if fire_at is None:
                if fault.pattern is None:
                    fire_at = fault.after
                else:
                    idx = window.find(fault.pattern)
                    if idx < 0:
                        continue
                    if fault.before_line:
                        fire_at = start - len(tail) + window.rfind(b"\n", 0, idx) + 1
                    else:
                        fire_at = start - len(tail) + idx + len(fault.pattern) + fault.after
                    link.armed[id(fault)] = fire_at
            cut = max(0, fire_at - start)
            if cut <= len(data) and (best is None or cut < best[0]):
                best = (cut, fault.action, fault)
        if best is None:
            return None, None, None
        return best

    def _commit(self, link: _Link, direction: Direction, fault: Fault | None, action: Action) -> Action | None:
        """Consume a one-shot fault that was reached (unless another link took it)."""
        if fault is None or fault not in self._faults:
            return None
        self._faults.remove(fault)
        link.armed.pop(id(fault), None)
        self.injected.append(Injected(action, direction, link.number, link.offsets[direction]))
        return action

    def _count(self, link: _Link, direction: Direction, n: int, last: bytes) -> Action | None:
        """Account ``n`` forwarded bytes; returns the periodic fault's action when its
        boundary was reached."""
        link.offsets[direction] += n
        self.bytes[direction] += n
        keep = max((MAX_PATTERN if f.before_line else len(f.pattern) - 1 for f in self._faults if f.pattern), default=0)
        link.tails[direction] = (link.tails[direction] + last)[-keep:] if keep else b""
        periodic = self._periodic
        if periodic is None or periodic.direction not in (None, direction):
            return None
        periodic.counted += n
        if periodic.counted < periodic.every:
            return None
        action = periodic.next_action()
        periodic.fired += 1
        periodic.counted = 0
        self.injected.append(Injected(action, direction, link.number, link.offsets[direction]))
        return action

    def _cut_for_periodic(self, direction: Direction) -> int | None:
        periodic = self._periodic
        if periodic is None or periodic.direction not in (None, direction):
            return None
        return max(0, periodic.every - periodic.counted)

    def _send(self, link: _Link, dst: socket.socket, piece: memoryview, rate: float | None) -> bool:
        began = time.monotonic()
        view = piece
        while view:
            if link.closed or self._stopping.is_set():
                return False
            try:
                sent = dst.send(view)
            except TimeoutError:
                continue
            except OSError:
                self._close(link, rst=False)
                return False
            view = view[sent:]
        if rate:
            pause = len(piece) / rate - (time.monotonic() - began)
            if pause > 0:
                time.sleep(pause)
        return True

    def _fire(self, link: _Link, action: Action) -> None:
        if action == "stall":
            link.stalled = True
        else:
            self._close(link, rst=action == "reset")

    def _close(self, link: _Link, rst: bool) -> None:
        with self._lock:
            if link.closed:
                return
            link.closed = True
            if link in self._links:
                self._links.remove(link)
        for sock in (link.client, link.upstream):
            self._abort_socket(sock, rst)

    @staticmethod
    def _abort_socket(sock: socket.socket, rst: bool) -> None:
        with contextlib.suppress(OSError):
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
