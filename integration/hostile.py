"""A corpus of hostile messages: the inputs that break mail tools.

``hostile_messages()`` returns deterministic `HostileMessage`s, each named for what
it breaks (NUL bytes, bare LF, bare CR, 8-bit and malformed encoded-word headers, no
headers at all, a header over 100 KB, lines over 10,000 characters, broken MIME
boundaries, an empty message, mbox ``From `` lines, a 60 MB message, ...) and
carrying flags and an internal date. ``NORMAL`` plain messages are interleaved so
that a test can see the run go on after each hostile one.

Writers place them without any tool in between (the bytes exactly as given):

* ``write_maildir``: Maildir ``cur/`` files named ``<ts>.H<n>_<name>.hostile:2,<flags>``
  (no ``S=``/``W=`` size fields: a reader must measure, nothing can be trusted);
* ``write_mbox``: one mboxrd file (``From `` lines quoted with one more ``>``); a
  message that does not end with a newline gets one before the separating blank line
  (the format cannot say otherwise), see `mbox_content`.
"""

from __future__ import annotations

import base64
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

BIG_BYTES = 61 * 1000 * 1000  # "a 60 MB message": a little over 60,000,000 bytes
DATE0 = datetime(2021, 3, 14, 15, 9, 26, tzinfo=UTC)
_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
_FROM = re.compile(rb"^>*From ")


@dataclass(frozen=True)
class HostileMessage:
    name: str  # [a-z0-9-]+, unique
    raw: bytes
    flags: frozenset[str]
    internal_date: datetime
    hostile: bool = True  # False for the plain messages interleaved between them


def _crlf(*lines: str | bytes) -> bytes:
    return b"".join((line.encode("utf-8") if isinstance(line, str) else line) + b"\r\n" for line in lines)


def _head(name: str, *extra: str | bytes) -> bytes:
    return _crlf(
        "From: Hostile Sender <hostile@example.org>",
        "To: victim@example.net",
        f"Subject: hostile {name}",
        f"Message-ID: <{name}@hostile.example>",
        "Date: Sun, 14 Mar 2021 15:09:26 +0000",
        *extra,
    )


def _plain(i: int) -> bytes:
    return _head(f"plain-{i}", "Content-Type: text/plain; charset=us-ascii") + _crlf(
        "", f"An ordinary message number {i}, after a hostile one.", "Nothing to see."
    )


def _big(seed: int = 60) -> bytes:
    """A multipart message of BIG_BYTES with an incompressible base64 attachment."""
    head = _head("huge-60mb", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b60"')
    intro = _crlf("", "--b60", "Content-Type: text/plain", "", "Sixty megabytes follow.", "--b60")
    part = _crlf(
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="big.bin"',
        "",
    )
    tail = _crlf("--b60--")
    room = BIG_BYTES - len(head) - len(intro) - len(part) - len(tail)
    lines = room // 78 + 1  # 76 base64 characters + CRLF per line
    data = random.Random(seed).randbytes(lines * 57)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return head + intro + part + encoded + tail


def _cases(big: bool) -> list[tuple[str, bytes]]:
    long_line = "".join(random.Random(7).choice("abcdefghij klmnop") for _ in range(20_000))
    folded = "X-Long: start" + "".join(f"\r\n\tfold {i:06d} " + "y" * 60 for i in range(1_600))  # ~120 KB
    cases: list[tuple[str, bytes]] = [
        ("nul-in-body", _head("nul-in-body") + b"\r\nbefore\x00after\r\nline\x00\x00\x00three\r\n"),
        ("nul-in-header", _head("nul-in-header", b"X-Nul: a\x00b") + b"\r\nbody\r\n"),
        ("bare-lf", _head("bare-lf").replace(b"\r\n", b"\n") + b"\nline one\nline two\n"),
        ("bare-cr", _head("bare-cr") + b"\r\nbefore\rafter\r\nonly cr\rline\rend\r\n"),
        ("mixed-eol", _head("mixed-eol") + b"\ncrlf\r\nlf\ncr\rlf again\nend"),
        ("cr-cr-lf", _head("cr-cr-lf") + b"\r\nbroken mailers end lines with CR CR LF\r\r\nlike this\r\r\n"),
        (
            "8bit-headers",
            _head("8bit-headers", "X-Utf8: Grüße aus Köln — 日本語", b"X-Latin1: caf\xe9 na\xefve")
            + _crlf("", "body")
            + b"Subject-in-body: \xff\xfe\r\n",
        ),
        (
            "bad-encoded-words",
            _crlf(
                "From: =?utf-8?B?####not-base64####?= <ew@example.org>",
                "To: =?x-unknown-charset?Q?abc?= <x@example.net>",
                "Subject: =?utf-8?q?unterminated word",
                'Cc: "=?utf-8?B?aW4gcXVvdGVz?=" <q@example.net>, =?utf-8?Q?=E2=82?= <t@example.net>',
                "Message-ID: <bad-encoded-words@hostile.example>",
                "X-Long-Word: =?utf-8?B?" + base64.b64encode(b"z" * 300).decode() + "?=",
                "X-Empty-Word: =??B??=",
                "",
                "body",
            ),
        ),
        ("no-headers", b"This message has no header at all.\r\nJust two lines of text.\r\n"),
        ("blank-first-line", b"\r\nAn empty header block, then this body.\r\n"),
        ("headers-only-no-eol", _head("headers-only-no-eol").rstrip(b"\r\n")),
        ("only-crlf", b"\r\n"),
        ("header-over-100kb", _head("header-over-100kb") + folded.encode() + b"\r\n\r\nbody\r\n"),
        (
            "header-line-150kb",
            _head("header-line-150kb") + b"X-One-Line: " + b"h" * 150_000 + b"\r\n\r\nbody\r\n",
        ),
        ("line-20k", _head("line-20k") + b"\r\n" + long_line.encode() + b"\r\nend\r\n"),
        ("line-1mb", _head("line-1mb") + b"\r\n" + b"m" * 1_000_000 + b"\r\nend\r\n"),
        (
            "mime-boundary-never-used",
            _head("mime-boundary-never-used", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="nope"')
            + _crlf("", "--other", "Content-Type: text/plain", "", "part", "--other--"),
        ),
        (
            "mime-unterminated",
            _head("mime-unterminated", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="u"')
            + _crlf("", "--u", "Content-Type: text/plain", "", "first", "--u", "Content-Type: text/html", "", "<p>"),
        ),
        (
            "mime-nested-same-boundary",
            _head("mime-nested-same-boundary", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="s"')
            + _crlf(
                "",
                "--s",
                'Content-Type: multipart/alternative; boundary="s"',
                "",
                "--s",
                "Content-Type: text/plain",
                "",
                "inner",
                "--s--",
                "--s--",
            ),
        ),
        (
            "mime-no-boundary-param",
            _head("mime-no-boundary-param", "MIME-Version: 1.0", "Content-Type: multipart/mixed")
            + _crlf("", "no parts at all"),
        ),
        (
            "mime-bad-base64",
            _head("mime-bad-base64", "MIME-Version: 1.0", "Content-Transfer-Encoding: base64")
            + _crlf("", "!!!! not base64 at all ====", "QUJD=RA=="),
        ),
        (
            "mbox-from-lines",
            _head("mbox-from-lines")
            + _crlf("", "From the start of a line.", ">From quoted once.", ">>From quoted twice.", "", "From x"),
        ),
        ("no-final-newline", _head("no-final-newline") + b"\r\nthe last line has no end"),
        ("control-chars", _head("control-chars", "X-Ctl: \x01\x02\x07\x1b[31m\x7f") + b"\r\n\x0c page\x0b\r\n"),
        ("dot-lines", _head("dot-lines") + _crlf("", ".", "..", ".end", "")),
        (
            "two-message-ids",
            _crlf("Message-ID: <first@hostile.example>", "Message-ID: <second@hostile.example>", "", "body"),
        ),
        (
            "folded-message-id",
            _crlf("Subject: folded id", "Message-ID:", "  <folded-message-id@hostile.example>", "", "body"),
        ),
        ("10000-headers", _head("10000-headers", *(f"X-H{i}: v{i}" for i in range(10_000))) + _crlf("", "b")),
        ("empty", b""),
    ]
    if big:
        cases.append(("huge-60mb", _big()))
    return cases


def hostile_messages(*, big: bool = True, normal_every: int = 1) -> list[HostileMessage]:
    """The hostile corpus, a plain message after every ``normal_every`` hostile ones
    (so that a test sees the run go on), and one plain message first."""
    out: list[HostileMessage] = [HostileMessage("plain-0", _plain(0), frozenset({"\\Seen"}), DATE0, hostile=False)]
    flag_sets = (frozenset(), frozenset({"\\Seen"}), frozenset({"\\Flagged", "$Label1"}), frozenset({"\\Answered"}))
    for i, (name, raw) in enumerate(_cases(big), start=1):
        date = DATE0 + timedelta(days=i, seconds=i * 37)
        out.append(HostileMessage(name, raw, flag_sets[i % len(flag_sets)], date))
        if normal_every and i % normal_every == 0:
            out.append(HostileMessage(f"plain-{i}", _plain(i), frozenset(), date + timedelta(hours=1), hostile=False))
    return out


# ----------------------------------------------------------------------------- writers


def maildir_key(n: int, msg: HostileMessage) -> str:
    """The unique part of the Maildir file name of the n-th message (its Maildir id)."""
    return f"{int(msg.internal_date.timestamp())}.H{n:04d}_{msg.name}.hostile"


def name_of_maildir_key(key: str) -> str | None:
    match = re.search(r"\.H\d{4}_([a-z0-9-]+)\.hostile", key)
    return match.group(1) if match else None


def write_maildir(messages: Sequence[HostileMessage], root: Path, *, uid: int = -1, gid: int = -1) -> None:
    """An INBOX-only Maildir at ``root`` holding ``messages`` byte for byte: flags as
    info letters, keywords through Dovecot's ``dovecot-keywords`` file, mtime = the
    internal date."""
    for sub in ("", "cur", "new", "tmp"):
        path = root / sub if sub else root
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, gid)
    keywords = sorted({f for m in messages for f in m.flags if not f.startswith("\\")})
    if len(keywords) > 26:
        raise ValueError("a Maildir folder holds at most 26 keywords")
    letter = {kw: chr(ord("a") + i) for i, kw in enumerate(keywords)}
    if keywords:
        table = root / "dovecot-keywords"
        table.write_text("".join(f"{i} {kw}\n" for i, kw in enumerate(keywords)), encoding="utf-8")
        os.chown(table, uid, gid)
    for n, msg in enumerate(messages):
        letters = [_LETTERS[f] for f in msg.flags if f in _LETTERS] + [letter[f] for f in msg.flags if f in letter]
        path = root / "cur" / f"{maildir_key(n, msg)}:2,{''.join(sorted(letters))}"
        path.write_bytes(msg.raw)
        os.chown(path, uid, gid)
        stamp = msg.internal_date.timestamp()
        os.utime(path, (stamp, stamp))


def mbox_content(raw: bytes) -> bytes:
    """What an mbox entry holds for ``raw``: the message, plus a newline if it does
    not end with one (an empty message stays empty)."""
    return raw if not raw or raw.endswith(b"\n") else raw + b"\n"


def mbox_from_line(date: datetime) -> bytes:
    return b"From hostile@example.org " + date.astimezone(UTC).strftime("%a %b %e %H:%M:%S %Y").encode() + b"\n"


def _lf_lines(data: bytes) -> list[bytes]:
    """Lines split after each LF only (a CR, a form feed, ... do not end a line)."""
    parts = data.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def write_mbox(messages: Iterable[HostileMessage], path: Path) -> None:
    """One mboxrd file: From_ line (the internal date, UTC), the quoted content, a blank line."""
    with path.open("wb") as fh:
        for msg in messages:
            content = mbox_content(msg.raw)
            quoted = b"".join(b">" + line if _FROM.match(line) else line for line in _lf_lines(content))
            fh.write(mbox_from_line(msg.internal_date) + quoted + b"\n")
