"""The lean bulk path of the IMAP connector: literal-aware reading and writing on the
connection imapclient opened.

imapclient keeps the conversation (login, capabilities, namespace, LIST, SELECT,
STATUS, CREATE); this module sends the commands whose cost grows with the number of
messages (UID FETCH of listings and bodies, APPEND / MULTIAPPEND, UID STORE, UID
EXPUNGE) and reads their responses without a generic parser: a FETCH literal is read
straight into one bytes object, an APPEND literal is written straight from the
caller's bytes, and only the few data items we ask for are decoded.

Contract with imaplib (whose socket and read buffer are shared): a ``Wire`` command
is only started when imaplib has no command in flight, and it reads every response
of its own commands up to their tagged completion, so imaplib never sees them. Tags
use a prefix of their own ("W"), distinct from imaplib's.

Errors: socket failures and timeouts propagate as OSError / TimeoutError; a BYE, an
end of stream or an answer that cannot belong to our commands raise ``WireLost``
(an OSError: the caller drops the connection). NO / BAD completions are returned,
never raised: the caller maps them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "AppendEntry",
    "Completion",
    "FetchItem",
    "FetchResult",
    "Wire",
    "WireLost",
    "format_internaldate",
    "parse_internaldate",
]

BIG_WRITE = 256 * 1024  # literals at least this big are written straight from the caller's bytes
LITERAL_MINUS_MAX = 4096  # RFC 7888: non-synchronizing literals up to this size with LITERAL-

_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_MONTH_NUM = {m.upper(): i + 1 for i, m in enumerate(_MONTHS)}
_ZONES: dict[bytes, timezone] = {}
# a FETCH token: "(" / ")", a quoted string, the literal placeholder, or an atom (with a
# [section] and <partial> when it names a body part, e.g. BODY[HEADER.FIELDS (MESSAGE-ID)])
_TOKEN = re.compile(rb'[ ]*(?:([()])|"((?:[^"\\]|\\.)*)"|(\x00)|([^ ()"\x00\[]+(?:\[[^\]]*\])?(?:<\d+>)?))')
_UNQUOTE = re.compile(rb"\\(.)")
# the FETCH answer to our own item lists, in the order we asked for them (Dovecot's,
# Cyrus'): parsed by one match; anything else goes through the general parser
_FAST_FETCH = re.compile(
    rb'\d+ FETCH \(UID (\d+) RFC822\.SIZE (\d+) FLAGS \(([^()"]*)\) INTERNALDATE "([^"]*)" '
    rb"BODY\[(HEADER\.FIELDS \(MESSAGE-ID\))?\] \x00\)",
    re.IGNORECASE,
)
# the answer to the stored-size check after an APPEND batch (UID FETCH ... (UID RFC822.SIZE))
_SIZE_FETCH = re.compile(rb"\d+ FETCH \(UID (\d+) RFC822\.SIZE (\d+)\)", re.IGNORECASE)
_CODE = re.compile(rb"^\[([^\]]*)\]")


class WireLost(ConnectionError):
    """The connection can no longer be used (BYE, end of stream, a desynchronised answer)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """A tagged answer: status "OK" / "NO" / "BAD" and the text after it (with any
    [response code])."""

    status: str
    text: bytes

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def code(self) -> bytes:
        """The response code without brackets (b"APPENDUID 38505 3955"), or b""."""
        m = _CODE.match(self.text)
        return m.group(1) if m else b""

    def describe(self) -> str:
        return f"{self.status} {self.text.decode('utf-8', 'replace')}".strip()


@dataclass(slots=True)
class FetchItem:
    """The data items of one FETCH response we care about (others are ignored)."""

    uid: int = 0
    size: int | None = None
    flags: list[bytes] | None = None
    internal_date: bytes | None = None
    body: bytes | None = None  # BODY[]
    header: bytes | None = None  # BODY[HEADER.FIELDS (...)]
    modseq: int | None = None


@dataclass(slots=True)
class FetchResult:
    items: list[FetchItem]
    completion: Completion
    vanished: list[int] = field(default_factory=list)  # from VANISHED (EARLIER) (QRESYNC)


@dataclass(frozen=True, slots=True)
class AppendEntry:
    """One message of an APPEND: encoded flag list (b"(\\Seen)"), quoted date or b"", bytes."""

    flags: bytes
    date: bytes
    raw: bytes


# --------------------------------------------------------------------------- dates
def parse_internaldate(value: bytes) -> datetime | None:
    """b"17-Jul-1996 02:44:25 -0700" (day may start with a space) -> aware datetime in
    a plain stdlib zone; None when malformed."""
    if len(value) == 26 and value[2:3] == b"-" and value[6:7] == b"-":  # the fixed form, fast
        tz = _ZONES.get(value[21:])
        month = _MONTH_NUM.get(value[3:6].upper())
        if tz is not None and month is not None:
            try:
                return datetime(
                    int(value[7:11]),
                    month,
                    int(value[:2]),
                    int(value[12:14]),
                    int(value[15:17]),
                    int(value[18:20]),
                    tzinfo=tz,
                )
            except ValueError:
                return None
    try:
        date, clock, zone = value.split()
        day, mon, year = date.split(b"-")
        hh, mm, ss = clock.split(b":")
        tz = _ZONES.get(zone)
        if tz is None:
            sign = -1 if zone[:1] == b"-" else 1
            minutes = sign * (int(zone[1:3]) * 60 + int(zone[3:5]))
            tz = timezone(timedelta(minutes=minutes))
            _ZONES[zone] = tz
        return datetime(int(year), _MONTH_NUM[mon.upper()], int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except (ValueError, KeyError, IndexError):
        return None


def format_internaldate(value: datetime) -> bytes:
    """Quoted INTERNALDATE of an aware datetime ("UTC" for a naive one), locale-free,
    whole seconds: b'"04-Mar-2019 05:06:07 +0530"'."""
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    month = _MONTHS[value.month - 1].decode()
    text = (
        f'"{value.day:02d}-{month}-{value.year:04d} {value.hour:02d}:{value.minute:02d}:{value.second:02d} '
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


# --------------------------------------------------------------------------- parsing
def _parse_fetch(text: bytes, literals: list[bytes]) -> FetchItem | None:
    """Parse the attribute list of b"<n> FETCH (...)" where literals were replaced by
    NUL placeholders. None when the line is not a FETCH response."""
    if not literals:
        sized = _SIZE_FETCH.fullmatch(text)
        if sized is not None:
            return FetchItem(int(sized.group(1)), int(sized.group(2)))
    fast = _FAST_FETCH.fullmatch(text)
    if fast is not None and len(literals) == 1:
        uid, size, flags, date, header = fast.groups()
        if header is None:
            return FetchItem(int(uid), int(size), flags.split(), date, literals[0], None)
        return FetchItem(int(uid), int(size), flags.split(), date, None, literals[0])
    start = text.find(b"(")
    if start < 0 or text[:start].upper().split()[1:2] != [b"FETCH"]:
        return None
    item = FetchItem()
    lit = iter(literals)
    pos = start + 1
    end = len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            break
        pos = m.end()
        key = m.group(4)
        if key is None:
            if m.group(1) == b")":
                break
            continue
        key = key.upper()
        if key == b"FLAGS":
            open_ = text.index(b"(", pos)
            close = text.index(b")", open_)
            item.flags = text[open_ + 1 : close].split()
            pos = close + 1
            continue
        if key == b"MODSEQ":
            open_ = text.index(b"(", pos)
            close = text.index(b")", open_)
            item.modseq = int(text[open_ + 1 : close])
            pos = close + 1
            continue
        v = match(text, pos)
        if v is None:
            break
        pos = v.end()
        if v.group(3) is not None:
            value: Any = next(lit)
        elif v.group(2) is not None:
            value = _UNQUOTE.sub(rb"\1", v.group(2))
        elif v.group(1) == b"(":  # a list we do not use: skip it, nesting included
            depth = 1
            while depth and pos < end:
                t = match(text, pos)
                if t is None:
                    break
                pos = t.end()
                if t.group(1) == b"(":
                    depth += 1
                elif t.group(1) == b")":
                    depth -= 1
                elif t.group(3) is not None:
                    next(lit)
            continue
        else:
            value = v.group(4)
            if value.upper() == b"NIL":
                value = None
        if key == b"UID":
            item.uid = int(value)
        elif key == b"RFC822.SIZE":
            item.size = int(value)
        elif key == b"INTERNALDATE":
            item.internal_date = value
        elif key == b"BODY[]":
            item.body = value if value is not None else None
        elif key.startswith(b"BODY[HEADER"):
            item.header = value if value is not None else b""
    return item


def _vanished(text: bytes) -> tuple[bool, list[int]]:
    """(earlier, uids) of b"VANISHED (EARLIER) 1:3,7"."""
    rest = text[8:].strip()
    earlier = rest.upper().startswith(b"(EARLIER)")
    if earlier:
        rest = rest[9:].strip()
    return earlier, expand_set(rest.decode("ascii"))


def expand_set(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if ":" in part:
            lo, hi = sorted(int(x) for x in part.split(":", 1))
            out.extend(range(lo, hi + 1))
        elif part.strip():
            out.append(int(part))
    return out


# --------------------------------------------------------------------------- the wire
class Wire:
    """Commands and responses on a connection imaplib already reads and writes.

    ``read(n)`` / ``readline()`` / ``send(data)`` are imaplib's own (they share its
    read buffer); ``counts`` counts every command sent, by name ("UID FETCH", "APPEND")."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        readline: Callable[[], bytes],
        send: Callable[[bytes], None],
        counts: Counter[str],
    ) -> None:
        self._read = read
        self._readline = readline
        self._send = send
        self.counts = counts
        self._tag = 0
        self.exists: int | None = None  # last EXISTS seen (minus EXPUNGEs) while a mailbox is selected
        self.untagged_no: list[bytes] = []  # texts of untagged NO / BAD of the last command
        # when a list: other untagged responses (STATUS, SEARCH, ...) are kept here
        self.collected: list[tuple[bytes, list[bytes]]] | None = None

    def next_tag(self) -> bytes:
        self._tag += 1
        return b"W%d" % self._tag

    # ------------------------------------------------------------------ reading
    def read_response(self) -> tuple[bytes, bytes, list[bytes]]:
        """One response: (tag or b"*" or b"+", rest of the text with NUL where each
        literal was, literals)."""
        line = self._readline()
        if not line.endswith(b"\n"):
            raise WireLost("connection closed by the server" if not line else "connection closed inside a response")
        literals: list[bytes] = []
        if line.endswith(b"}\r\n"):
            parts = []
            while line.endswith(b"}\r\n"):
                brace = line.rfind(b"{")
                try:
                    n = int(line[brace + 1 : -3].rstrip(b"+"))
                except ValueError:
                    break
                parts.append(line[:brace])
                literals.append(self._read_exact(n))
                line = self._readline()
                if not line.endswith(b"\n"):
                    raise WireLost("connection closed inside a response")
            parts.append(line)
            line = b"\x00".join(parts)
        line = line.rstrip(b"\r\n")
        tag, _, rest = line.partition(b" ")
        return tag, rest, literals

    def _read_exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise WireLost(f"connection closed inside a literal ({len(data)} of {n} bytes)")
        return data

    def _untagged(self, rest: bytes, literals: list[bytes], sink: FetchResult | None) -> None:
        """Book-keeping of one untagged response; FETCH/VANISHED go to ``sink``. An
        answer that does not parse is a lost connection (WireLost)."""
        try:
            self._untagged_parse(rest, literals, sink)
        except (ValueError, StopIteration, IndexError) as exc:
            raise WireLost(f"malformed response ({exc}): {rest[:80]!r}") from None

    def _untagged_parse(self, rest: bytes, literals: list[bytes], sink: FetchResult | None) -> None:
        head = rest[:12].upper()
        if head.startswith(b"BYE"):
            raise WireLost(f"server closed the connection: {rest[3:].strip().decode('utf-8', 'replace')}")
        if head.startswith((b"NO ", b"BAD ")):
            self.untagged_no.append(rest)
            return
        if head.startswith(b"VANISHED"):
            earlier, uids = _vanished(rest)
            if sink is not None:
                sink.vanished.extend(uids)
            if not earlier and self.exists is not None:  # expunged now, in this session's view
                self.exists -= len(uids)
            return
        first, _, tail = rest.partition(b" ")
        if not first.isdigit():
            if self.collected is not None:
                self.collected.append((rest, literals))
            return
        kind = tail[:8].upper()
        if kind.startswith(b"FETCH"):
            if sink is not None:
                item = _parse_fetch(rest, literals)
                if item is not None:
                    sink.items.append(item)
        elif kind.startswith(b"EXISTS"):
            self.exists = int(first)
        elif kind.startswith(b"EXPUNGE") and self.exists is not None:
            self.exists -= 1

    def complete(self, tag: bytes, sink: FetchResult | None = None) -> Completion:
        """Read responses up to the completion of ``tag``."""
        while True:
            got, rest, literals = self.read_response()
            if got == b"*":
                self._untagged(rest, literals, sink)
                continue
            if got == tag:
                status, _, text = rest.partition(b" ")
                return Completion(status.decode("ascii", "replace").upper(), text)
            if got == b"+":
                raise WireLost("unexpected continuation request")
            raise WireLost(f"answer for an unknown command tag {got[:20]!r}")

    # ------------------------------------------------------------------ commands
    def command(self, name: str, args: bytes, sink: FetchResult | None = None) -> Completion:
        """Send ``name args`` (no literals) and read to its completion."""
        tag = self.next_tag()
        self.counts[name] += 1
        self.untagged_no = []
        line = b"%s %s %s\r\n" % (tag, name.encode("ascii"), args) if args else b"%s %s\r\n" % (tag, name.encode())
        self._send(line)
        return self.complete(tag, sink)

    def pipeline(self, commands: Sequence[tuple[str, bytes]], sink: FetchResult | None = None) -> list[Completion]:
        """Send every command at once (small, literal-free ones), then read every
        completion, in order. FETCH / VANISHED data of all of them go to ``sink``."""
        tags = []
        out = []
        self.untagged_no = []
        for name, args in commands:
            tag = self.next_tag()
            self.counts[name] += 1
            tags.append(tag)
            out.append(b"%s %s %s\r\n" % (tag, name.encode("ascii"), args))
        self._send(b"".join(out))
        return self._completions(tags, sink)

    def uid_fetch(self, uids: str, items: bytes, modifiers: bytes = b"") -> FetchResult:
        """UID FETCH ``uids`` ``items`` [``modifiers``]: parsed items and VANISHED uids."""
        sink = FetchResult(items=[], completion=Completion("OK", b""))
        args = uids.encode("ascii") + b" " + items + (b" " + modifiers if modifiers else b"")
        sink.completion = self.command("UID FETCH", args, sink)
        return sink

    # ------------------------------------------------------------------ appends
    def _writer(self) -> tuple[Callable[[bytes], None], Callable[[], None]]:
        """(write, flush): small pieces are coalesced, big literals go out as they are."""
        pending: list[bytes] = []
        size = 0

        def flush() -> None:
            nonlocal size
            if pending:
                self._send(b"".join(pending))
                pending.clear()
                size = 0

        def write(data: bytes) -> None:
            nonlocal size
            if len(data) >= BIG_WRITE:
                flush()
                self._send(data)
                return
            pending.append(data)
            size += len(data)
            if size >= BIG_WRITE:
                flush()

        return write, flush

    def _wait_continuation(self, tag: bytes) -> Completion | None:
        """Wait for "+" (None) or the command's early completion (NO/BAD)."""
        while True:
            got, rest, literals = self.read_response()
            if got == b"+":
                return None
            if got == b"*":
                self._untagged(rest, literals, None)
                continue
            if got == tag:
                status, _, text = rest.partition(b" ")
                return Completion(status.decode("ascii", "replace").upper(), text)
            raise WireLost(f"answer for an unknown command tag {got[:20]!r}")

    def append(self, mailbox: bytes, entries: Sequence[AppendEntry], *, plus: bool, minus: bool) -> Completion:
        """One APPEND of every entry (MULTIAPPEND when more than one). ``plus``: every
        literal non-synchronizing (LITERAL+); ``minus``: those up to 4096 bytes
        (LITERAL-); others wait for the server's continuation. A refusal before the
        last literal comes back as the completion (the connection stays in sync)."""
        return self.append_then(mailbox, entries, plus=plus, minus=minus)[0]

    def append_then(
        self,
        mailbox: bytes,
        entries: Sequence[AppendEntry],
        *,
        plus: bool,
        minus: bool,
        then: Sequence[tuple[str, bytes]] = (),
        sink: FetchResult | None = None,
    ) -> tuple[Completion, list[Completion]]:
        """``append`` with small literal-free commands sent behind its last literal,
        in the same round trip: only when nothing waits for a continuation (every
        literal non-synchronizing), else ``then`` is not sent. Returns the APPEND's
        completion and those of ``then`` (empty when not sent); FETCH data go to
        ``sink``."""
        if then and not all(plus or (minus and len(e.raw) <= LITERAL_MINUS_MAX) for e in entries):
            then = ()
        write, flush = self._writer()
        self.untagged_no = []
        tag = self.next_tag()
        self.counts["APPEND"] += 1
        prefix = tag + b" APPEND " + mailbox
        for entry in entries:
            nonsync = plus or (minus and len(entry.raw) <= LITERAL_MINUS_MAX)
            head = b"%s %s%s {%d%s}\r\n" % (
                prefix,
                entry.flags,
                b" " + entry.date if entry.date else b"",
                len(entry.raw),
                b"+" if nonsync else b"",
            )
            write(head)
            if not nonsync:
                flush()
                early = self._wait_continuation(tag)
                if early is not None:
                    return early, []
            write(entry.raw)
            prefix = b""
        write(b"\r\n")
        tags = [tag]
        for name, args in then:
            tags.append(self.next_tag())
            self.counts[name] += 1
            write(b"%s %s %s\r\n" % (tags[-1], name.encode("ascii"), args))
        flush()
        done = self._completions(tags, sink)
        return done[0], done[1:]

    def _completions(self, tags: Sequence[bytes], sink: FetchResult | None) -> list[Completion]:
        """Read responses until every command of ``tags`` (sent, pipelined) is
        complete; their completions in the order of ``tags``."""
        results: dict[bytes, Completion] = {}
        pending = set(tags)
        while pending:
            got, rest, literals = self.read_response()
            if got == b"*":
                self._untagged(rest, literals, sink)
                continue
            if got not in pending:
                raise WireLost(f"answer for an unknown command tag {got[:20]!r}")
            status, _, text = rest.partition(b" ")
            results[got] = Completion(status.decode("ascii", "replace").upper(), text)
            pending.discard(got)
        return [results[t] for t in tags]

    def append_pipelined(
        self, mailbox: bytes, entries: Sequence[AppendEntry], *, plus: bool, minus: bool
    ) -> list[Completion]:
        """One APPEND per entry, sent without waiting for the previous completion.
        With non-synchronizing literals nothing waits; a synchronizing literal waits for
        its continuation (answers of earlier commands are collected meanwhile). One
        completion per entry, in order."""
        tags: list[bytes] = []
        results: dict[bytes, Completion] = {}
        self.untagged_no = []
        write, flush = self._writer()

        def absorb(until_continuation_of: bytes | None) -> bool:
            """Read answers; True when ``until_continuation_of`` may send its literal."""
            while True:
                got, rest, literals = self.read_response()
                if got == b"*":
                    self._untagged(rest, literals, None)
                    continue
                if got == b"+":
                    if until_continuation_of is None:
                        raise WireLost("unexpected continuation request")
                    return True
                if got not in tags or got in results:
                    raise WireLost(f"answer for an unknown command tag {got[:20]!r}")
                status, _, text = rest.partition(b" ")
                results[got] = Completion(status.decode("ascii", "replace").upper(), text)
                if got == until_continuation_of:
                    return False
                if until_continuation_of is None and len(results) == len(tags):
                    return False

        for entry in entries:
            tag = self.next_tag()
            tags.append(tag)
            self.counts["APPEND"] += 1
            nonsync = plus or (minus and len(entry.raw) <= LITERAL_MINUS_MAX)
            write(
                b"%s APPEND %s %s%s {%d%s}\r\n"
                % (
                    tag,
                    mailbox,
                    entry.flags,
                    b" " + entry.date if entry.date else b"",
                    len(entry.raw),
                    b"+" if nonsync else b"",
                )
            )
            if not nonsync:
                flush()
                if not absorb(tag):
                    continue  # refused before its literal: nothing more to send for it
            write(entry.raw)
            write(b"\r\n")
        flush()
        if len(results) < len(tags):
            absorb(None)
        return [results[t] for t in tags]
