"""Generate Thunderbird profiles for tests, written the way Thunderbird writes them.

What Thunderbird writes for a message it stores (checked against its sources:
``nsPop3Sink::IncorporateBegin``/``GetDummyEnvelope``, ``Pop3Client.sys.mjs`` and
``MboxMsgOutputStream``):

* a From_ line: ``From - <ctime()>`` in local time with LF (<= 115, "old"), or
  ``From - %a %b %d %H:%M:%S %Y`` in UTC with CRLF (128+, "new");
* for POP3 downloads ``X-Mozilla-Account-Key: accountN`` and ``X-UIDL: <uidl>``;
* ``X-Mozilla-Status: %04x``, ``X-Mozilla-Status2: %08x`` and ``X-Mozilla-Keys:``
  padded with spaces to 80 characters (rewritten in place when tags change);
* the message with the platform's line ending (POP3 lines are re-ended: LF on
  Linux, CRLF on Windows), "From " lines escaped (old: mboxo, only "From " gets a
  ">"; new: mboxrd, any ">*From " gets one more), then one blank line.

``.msf`` files get a Mork header only (readers must skip them); side files
(``msgFilterRules.dat``, ``popstate.dat``, ``filterlog.html``, ``folderTree.json``)
are written where Thunderbird keeps them. Nothing here is a real user's data.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Style = Literal["old", "new", "windows"]
MORK = b'// <!-- <mdb:mork:z v="1.4"/> -->\n< <(a=c)> // (f=iso-8859-1)\n'
DEFAULT_DATE = datetime(2023, 5, 6, 7, 8, 9, tzinfo=UTC)


@dataclass
class TbMessage:
    """One stored message: ``raw`` as it was received (CRLF), plus what Thunderbird keeps."""

    raw: bytes
    status: int = 0  # X-Mozilla-Status bits (0x1 read, 0x2 replied, 0x4 flagged, 0x8 expunged, ...)
    status2: int = 0  # X-Mozilla-Status2 (high 16 bits of the flags)
    keys: str = ""  # X-Mozilla-Keys words
    uidl: str | None = None  # POP3 downloads: X-UIDL (with X-Mozilla-Account-Key)
    account_key: str = "account2"
    received: datetime = DEFAULT_DATE


def message(n: int, *, mid: bool = True, body: bytes = b"", extra_headers: bytes = b"") -> bytes:
    """A small CRLF message as a POP3 server would hand it out."""
    head = (
        f"Received: from mx.example.net by pop.example.com; Tue, 2 May 2023 10:{n % 60:02d}:00 +0200\r\n"
        f"From: Sender {n} <s{n}@example.net>\r\nTo: alice@example.com\r\nSubject: message {n}\r\n"
        f"Date: Tue, 2 May 2023 10:{n % 60:02d}:00 +0200\r\n"
    ).encode()
    if mid:
        head += f"Message-ID: <tb-{n}@example.net>\r\n".encode()
    return head + extra_headers + b"\r\n" + (body or f"Body of message {n}.\r\n".encode())


def _from_line(when: datetime, style: Style) -> bytes:
    utc = when.astimezone(UTC)
    if style == "new":
        return b"From - " + utc.strftime("%a %b %d %H:%M:%S %Y").encode() + b"\r\n"
    eol = b"\r\n" if style == "windows" else b"\n"
    return b"From - " + time.asctime(utc.timetuple()).encode() + eol


def _escape(lines: list[bytes], style: Style) -> list[bytes]:
    if style == "new":
        return [b">" + line if re.match(rb">*From ", line) else line for line in lines]
    return [b">" + line if line.startswith(b"From ") else line for line in lines]


def entry(msg: TbMessage, style: Style = "old") -> bytes:
    """The bytes Thunderbird appends to a folder file for ``msg``."""
    eol = b"\r\n" if style == "windows" else b"\n"
    prefix = []
    if msg.uidl is not None:
        prefix += [b"X-Mozilla-Account-Key: " + msg.account_key.encode(), b"X-UIDL: " + msg.uidl.encode()]
    prefix += [
        b"X-Mozilla-Status: %04x" % (msg.status & 0xFFFF),
        b"X-Mozilla-Status2: %08x" % msg.status2,
        b"X-Mozilla-Keys: " + msg.keys.encode().ljust(80),
    ]
    body = msg.raw.replace(b"\r\n", b"\n")
    if body and not body.endswith(b"\n"):
        body += b"\n"
    lines = [line + eol for line in body.split(b"\n")[:-1]]
    end = b"\r\n" if style == "new" else eol  # the blank line after a message
    return _from_line(msg.received, style) + b"".join(p + eol for p in prefix) + b"".join(_escape(lines, style)) + end


def write_folder(directory: Path, relpath: str, msgs: list[TbMessage], style: Style = "old") -> Path:
    """Write folder ``relpath`` ("Archives/2023") under an account directory, with its
    parents' (empty) files, .sbd directories and .msf indexes."""
    parts = relpath.split("/")
    here = directory
    for part in parts[:-1]:
        (here / part).touch(exist_ok=True)
        (here / f"{part}.msf").write_bytes(MORK)
        here = here / f"{part}.sbd"
        here.mkdir(parents=True, exist_ok=True)
    path = here / parts[-1]
    path.write_bytes(b"".join(entry(m, style) for m in msgs))
    (here / f"{parts[-1]}.msf").write_bytes(MORK)
    return path


@dataclass
class TbAccount:
    key: str  # "account1"
    server: str  # "server1"
    type: str  # "pop3", "none" (Local Folders), "imap", "rss"
    directory: str  # "Mail/pop.example.com"
    name: str  # pretty name
    folders: dict[str, list[TbMessage]] = field(default_factory=dict)
    deferred_to: str | None = None


def write_profile(root: Path, accounts: list[TbAccount], default: str, style: Style = "old") -> Path:
    """A profile directory: prefs.js, the accounts' folder trees and side files."""
    root.mkdir(parents=True, exist_ok=True)
    prefs = [
        "// Mozilla User Preferences",
        "",
        f'user_pref("mail.accountmanager.accounts", "{",".join(a.key for a in accounts)}");',
        f'user_pref("mail.accountmanager.defaultaccount", "{default}");',
    ]
    for a in accounts:
        prefs += [
            f'user_pref("mail.account.{a.key}.server", "{a.server}");',
            f'user_pref("mail.server.{a.server}.directory-rel", "[ProfD]{a.directory}");',
            f'user_pref("mail.server.{a.server}.directory", "/home/alice/.thunderbird/x.default/{a.directory}");',
            f'user_pref("mail.server.{a.server}.name", "{a.name}");',
            f'user_pref("mail.server.{a.server}.type", "{a.type}");',
        ]
        if a.deferred_to:
            prefs.append(f'user_pref("mail.server.{a.server}.deferred_to_account", "{a.deferred_to}");')
        directory = root / a.directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "msgFilterRules.dat").write_text('version="9"\nlogging="no"\n')
        (directory / "filterlog.html").write_text("")
        if a.type == "pop3":
            (directory / "popstate.dat").write_text("# POP3 State File\n")
        if a.type == "rss":
            (directory / "feeds.json").write_text("[]")
        for relpath, msgs in a.folders.items():
            write_folder(directory, relpath, msgs, style)
    (root / "prefs.js").write_text("\n".join(prefs) + "\n")
    (root / "folderTree.json").write_text("{}")
    (root / "session.json").write_text("{}")
    return root


def pop_profile(root: Path, inbox: list[TbMessage], style: Style = "old") -> Path:
    """The usual POP3 user's profile: one POP3 account (default) plus Local Folders."""
    return write_profile(
        root,
        [
            TbAccount("account1", "server1", "none", "Mail/Local Folders", "Local Folders", {"Trash": []}),
            TbAccount("account2", "server2", "pop3", "Mail/pop.example.com", "alice@example.com", {"Inbox": inbox}),
        ],
        default="account2",
        style=style,
    )
