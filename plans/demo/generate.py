#!/usr/bin/env python3
"""Write the demo sample: a Thunderbird-style mbox tree and a Maildir++ tree.

Deterministic (``random.Random(SEED)``, fixed dates) and idempotent: re-running it
rewrites the same bytes and restores the Maildir files' mtimes, which are the
messages' internal dates (Dovecot's rule) and which git does not keep. Run it after
a fresh checkout if internal dates matter:

    python plans/demo/generate.py

Standard library only.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.utils import format_datetime
from pathlib import Path

SEED = 20240501
HERE = Path(__file__).resolve().parent
START = datetime(2019, 2, 1, 9, 30, tzinfo=UTC)
PEOPLE = [
    ("Alice Martin", "alice@example.org"),
    ("Bob Müller", "bob@example.de"),
    ("Chloé Durand", "chloe@example.fr"),
    ("Dai Wei", "dai@example.cn"),
    ("Eve Ng", "eve@example.net"),
]
SUBJECTS = [
    "Quarterly report",
    "Lunch on Friday?",
    "Re: Budget 2021",
    "Grüße aus München",
    "Réunion de lundi",
    "会议记录",
    "Invoice #1042",
    "Photos from the trip",
    "Fwd: Server maintenance window",
    "Ünïcödé everywhere ✓",
]
BODY_LINES = [
    "Thanks for the update, see you soon.",
    "The numbers look fine to me.",
    "From the desk of the treasurer: please review.",
    ">From a quoted mbox line, kept as is.",
    "Können wir das nächste Woche besprechen?",
    "Merci, à bientôt.",
    "谢谢！",
]
KEYWORDS = ["$Forwarded", "Work", "$Label1", "Important"]


@dataclass(frozen=True)
class Mail:
    raw: bytes
    flags: frozenset[str]
    date: datetime


def _encoded(subject: str) -> str:
    return subject if subject.isascii() else Header(subject, "utf-8").encode()


def _address(person: tuple[str, str]) -> str:
    name, addr = person
    return f"{_encoded(name)} <{addr}>"


def make_mail(rng: random.Random, n: int, tag: str, date: datetime) -> Mail:
    """One varied message: plain text, multipart with attachment, or CRLF text."""
    sender, rcpt = rng.sample(PEOPLE, 2)
    subject = rng.choice(SUBJECTS)
    headers = [
        f"From: {_address(sender)}",
        f"To: {_address(rcpt)}",
        f"Subject: {_encoded(subject)}",
        f"Date: {format_datetime(date)}",
    ]
    if n % 11 != 7:  # one in eleven has no Message-ID
        headers.append(f"Message-ID: <{tag}.{n}.{rng.randrange(10**8)}@demo.example>")
    headers.append("MIME-Version: 1.0")
    text = "\n".join(rng.choice(BODY_LINES) for _ in range(rng.randint(1, 5))) + "\n"
    kind = n % 4
    if kind == 1:
        boundary = f"=_demo_{tag}_{n}"
        attachment = bytes(rng.randrange(256) for _ in range(rng.randint(200, 700)))
        b64 = base64.encodebytes(attachment).decode("ascii")
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        body = (
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f'{text}\n--{boundary}\nContent-Type: application/octet-stream; name="data-{n}.bin"\n'
            f'Content-Disposition: attachment; filename="data-{n}.bin"\n'
            f"Content-Transfer-Encoding: base64\n\n{b64}--{boundary}--\n"
        )
        raw = ("\n".join(headers) + "\n\n" + body).encode("utf-8")
    else:
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
        raw = ("\n".join(headers) + "\n\n" + text).encode("utf-8")
        if kind == 3 and n % 8 == 3:
            raw = raw.replace(b"\n", b"\r\n")  # some stores keep CRLF files
    flags = set()
    if rng.random() < 0.7:
        flags.add("\\Seen")
    if rng.random() < 0.2:
        flags.add("\\Answered")
    if rng.random() < 0.15:
        flags.add("\\Flagged")
    if rng.random() < 0.3:
        flags.add(rng.choice(KEYWORDS))
    return Mail(raw, frozenset(flags), date)


def make_mails(rng: random.Random, tag: str, count: int) -> list[Mail]:
    """``count`` messages over several years; the 3rd is an exact copy of the 2nd."""
    mails: list[Mail] = []
    date = START
    for n in range(count):
        date += timedelta(days=rng.randint(20, 90), seconds=rng.randint(0, 86399))
        mails.append(make_mail(rng, n, tag, date))
    mails[2] = mails[1]
    return mails


# -------------------------------------------------------------------------- mbox


def mbox_entry(mail: Mail) -> bytes:
    """mboxrd entry: From_ line (UTC), Status/X-Status/X-Keywords, quoted body, blank line."""
    lines = mail.raw.split(b"\n")
    eol = b"\r" if lines[0].endswith(b"\r") else b""
    end = lines.index(eol)
    meta = []
    if "\\Seen" in mail.flags:
        meta.append(b"Status: RO" + eol)
    xstatus = "".join(c for f, c in (("\\Answered", "A"), ("\\Flagged", "F")) if f in mail.flags)
    if xstatus:
        meta.append(b"X-Status: " + xstatus.encode() + eol)
    keywords = sorted(f for f in mail.flags if not f.startswith("\\"))
    if keywords:
        meta.append(b"X-Keywords: " + " ".join(keywords).encode() + eol)
    lines = lines[:end] + meta + lines[end:]
    quoted = [b">" + ln if ln.lstrip(b">").startswith(b"From ") else ln for ln in lines]
    stamp = time.asctime(mail.date.astimezone(UTC).timetuple()).encode()
    return b"From MAILER-DAEMON " + stamp + b"\n" + b"\n".join(quoted) + b"\n"


def write_mbox(root: Path, rng: random.Random) -> int:
    mails = make_mails(rng, "mbox", 26)
    layout = {"Inbox": mails[:11], "Sent": mails[11:16], "Archive": mails[16:18]}
    layout["Archive.sbd/2023"] = mails[18:22]
    layout["Reçus"] = mails[22:]
    for name, folder_mails in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(mbox_entry(m) for m in folder_mails))
    (root / "Inbox.msf").write_text('// <!-- <mdb:mork:z v="1.4"/> --> (Thunderbird index: ignored)\n')
    return len(mails)


# ----------------------------------------------------------------------- Maildir

MAILDIR_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
# Maildir++ names are IMAP modified UTF-7 (as Dovecot writes them).
MAILDIR_FOLDERS = {
    "": 9,  # INBOX
    ".Sent": 4,
    ".Archive": 2,
    ".Archive.2023": 4,
    ".Entw&APw-rfe": 3,  # "Entwürfe"
    ".Projekte": 1,
    ".Projekte.&ANw-ber uns": 3,  # "Projekte/Über uns"
}


def write_maildir(root: Path, rng: random.Random) -> int:
    mails = make_mails(rng, "maildir", sum(MAILDIR_FOLDERS.values()))
    pos = 0
    for dirname, count in MAILDIR_FOLDERS.items():
        folder = root / dirname if dirname else root
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        if dirname:
            (folder / "maildirfolder").write_bytes(b"")
        keywords: list[str] = []
        for i, mail in enumerate(mails[pos : pos + count]):
            letters = {MAILDIR_LETTERS[f] for f in mail.flags if f in MAILDIR_LETTERS}
            for kw in sorted(f for f in mail.flags if not f.startswith("\\")):
                if kw not in keywords:
                    keywords.append(kw)
                letters.add(chr(ord("a") + keywords.index(kw)))
            stamp = int(mail.date.timestamp())
            size = len(mail.raw)
            vsize = size + mail.raw.count(b"\n") - mail.raw.count(b"\r\n")
            key = f"{stamp}.M{i:06d}P1000.demo,S={size},W={vsize}"
            path = folder / "cur" / f"{key}:2,{''.join(sorted(letters))}"
            path.write_bytes(mail.raw)
            os.utime(path, (stamp, stamp))
        if keywords:
            text = "".join(f"{i} {kw}\n" for i, kw in enumerate(keywords))
            (folder / "dovecot-keywords").write_text(text)
        pos += count
    return pos


def main() -> None:
    """Rewrite plans/demo/mbox and plans/demo/Maildir from scratch (same bytes every time)."""
    for name in ("mbox", "Maildir"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    n_mbox = write_mbox(HERE / "mbox", random.Random(SEED))
    n_maildir = write_maildir(HERE / "Maildir", random.Random(SEED + 1))
    print(f"wrote {n_mbox} mbox messages to {HERE / 'mbox'} and {n_maildir} to {HERE / 'Maildir'}")


if __name__ == "__main__":
    main()
