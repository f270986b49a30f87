"""Deterministic mail corpus for end-to-end fidelity tests, plus fast loaders.

`generate(count, seed)` yields `CorpusMessage`s whose bytes, flags, keywords, internal
dates and folders are fully determined by ``(seed, index)``: message *i* is built from
``random.Random(f"{seed}:{i}")`` (and a text pool that depends only on the seed), so a
prefix of a bigger corpus equals a smaller corpus with the same seed.

Features (probabilities per message, plus fixed indices that guarantee each feature
exists whenever ``count >= 2000``; see `FORCED`):

* sizes: most 2-60 KB text/plain or multipart/alternative; ~13 % multipart/mixed with a
  15-100 KB attachment; ~2 % with an incompressible attachment of 100 KB up to
  ``max_attachment`` decoded bytes (index 1999 always carries one of about
  ``max_attachment`` bytes, so its raw size is about 1.37 x ``max_attachment``);
* base64, quoted-printable, 7bit and 8bit bodies; RFC 2047 encoded From/Subject;
  ~3 % with raw 8-bit UTF-8 bytes in From/Subject;
* ~0.5 % without Message-ID; ~1 % exact byte duplicates of an earlier message (same or
  another folder); ~0.5 % distinct messages reusing an earlier message's Message-ID;
* flags \\Seen \\Flagged \\Answered \\Draft (\\Draft mostly in Drafts), keywords from
  `KEYWORDS`; internal dates 2010-2025, whole seconds, with assorted UTC offsets;
* every non-empty folder of `FOLDERS` used; `EMPTY_FOLDERS` never receive mail.

Every ``raw`` uses CRLF line endings only (no bare LF, no bare CR).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from imapclient import imap_utf7

if TYPE_CHECKING:
    import imapclient

INBOX: tuple[str, ...] = ("INBOX",)

# Folders that receive mail, with their relative weight.
_FOLDER_WEIGHTS: list[tuple[tuple[str, ...], int]] = [
    (("INBOX",), 40),
    (("Sent",), 12),
    (("Drafts",), 3),
    (("Trash",), 4),
    (("Junk",), 3),
    (("Archive",), 2),
    (("Archive", "2019"), 6),
    (("Archive", "2020"), 6),
    (("Projects", "Alpha", "Specs"), 4),
    (("Reçus",), 4),
    (("Фактуры",), 3),
    (("日本語", "メール"), 3),
    (("Kunden", "Müller GmbH"), 3),
    (("Stuff & Things",), 3),
]
NONEMPTY_FOLDERS: list[tuple[str, ...]] = [f for f, _ in _FOLDER_WEIGHTS]
EMPTY_FOLDERS: list[tuple[str, ...]] = [
    ("Projects",),
    ("Projects", "Alpha"),
    ("日本語",),
    ("Kunden",),
    ("Empty",),
    ("Archive", "Leer ü"),
]
FOLDERS: list[tuple[str, ...]] = sorted(NONEMPTY_FOLDERS + EMPTY_FOLDERS)
"""Every folder the corpus uses, parents included (all are real, selectable folders)."""

SYSTEM_FLAGS: frozenset[str] = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})
KEYWORDS: tuple[str, ...] = ("$Forwarded", "$MDNSent", "Work", "Later")

FORCED: dict[int, str] = {
    5: "no_mid",
    9: "8bit",
    14: "dup",  # byte-identical copy of message 3
    19: "shared_mid",  # distinct message reusing message 2's Message-ID
    23: "keywords",
    1999: "huge",  # attachment of about max_attachment bytes
}
_QUIET_PREFIX = 30  # below this index only FORCED features occur (stable references)

_OFFSETS_MIN = (-480, -300, -240, -180, 0, 0, 60, 120, 180, 330, 540, 600, -210, 345)
_DATE_LO = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp())
_DATE_HI = int(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class CorpusMessage:
    """One message to place: folder path parts, flags + keywords, internal date, bytes."""

    folder: tuple[str, ...]
    flags: frozenset[str]
    internal_date: datetime
    raw: bytes


@dataclass(frozen=True)
class _Plan:
    folder: tuple[str, ...]
    flags: frozenset[str]
    date: datetime
    dup_of: int | None
    mid_from: int | None  # None: no Message-ID header; i: own id; j < i: reuse j's
    eight_bit: bool
    kind: str  # "text" | "attach" | "huge"


@dataclass(frozen=True)
class _Pool:
    ascii_paras: list[str]
    intl_paras: list[str]


_WORDS = [
    "the",
    "project",
    "meeting",
    "budget",
    "review",
    "report",
    "schedule",
    "invoice",
    "customer",
    "order",
    "delivery",
    "server",
    "release",
    "update",
    "security",
    "network",
    "quarter",
    "results",
    "team",
    "manager",
    "design",
    "draft",
    "contract",
    "please",
    "attached",
    "find",
    "regarding",
    "following",
    "next",
    "week",
    "monday",
    "friday",
    "thanks",
    "regards",
    "question",
    "answer",
    "issue",
    "ticket",
    "support",
    "account",
    "payment",
    "data",
    "migration",
    "backup",
    "storage",
    "mailbox",
    "folder",
    "message",
    "archive",
    "sync",
    "performance",
    "test",
    "plan",
    "deadline",
    "office",
]
_INTL_WORDS = [
    "Grüße",
    "Straße",
    "Müller",
    "Köln",
    "café",
    "résumé",
    "déjà",
    "naïve",
    "façade",
    "Zürich",
    "Ångström",
    "smörgåsbord",
    "Привет",
    "спасибо",
    "счёт",
    "договор",
    "встреча",
    "Москва",
    "данные",
    "отчёт",
    "日本語",
    "メール",
    "会議",
    "資料",
    "東京",
    "確認",
    "お願いします",
    "ありがとう",
    "señor",
    "año",
    "niño",
    "crème",
    "brûlée",
    "ŁódźΩμέγα",
]
_FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
_LAST = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Walker", "Wright"]
_INTL_NAMES = ["Jürgen Müller", "François Dupré", "Дмитрий Иванов", "山田 太郎", "Søren Ørsted", "José Núñez"]
_DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example", "müller.example"]
_SUBJECTS = [
    "Re: {w} {w} for Q{q}",
    "Invoice #{n}",
    "Meeting about the {w} {w}",
    "Fwd: {w} report {n}",
    "[{w}] weekly {w} summary",
    "Your {w} order {n} has shipped",
]
_ATTACH_TYPES = [
    ("application/pdf", "report-{n}.pdf"),
    ("image/jpeg", "photo_{n}.jpg"),
    ("application/octet-stream", "data-{n}.bin"),
    ("application/zip", "archive {n}.zip"),
    ("application/pdf", "Rechnung-Müller-{n}.pdf"),
]


def _make_pool(seed: int) -> _Pool:
    """Paragraph pools (LF-terminated, wrapped at 72 columns) built once per seed."""
    rng = random.Random(f"{seed}:pool")

    def para(words: list[str], n: int) -> str:
        line, lines = "", []
        for word in rng.choices(words, k=n):
            if len(line) + len(word) + 1 > 72:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        return "\n".join(lines) + "\n\n"

    ascii_paras = [para(_WORDS, rng.randint(40, 220)) for _ in range(400)]
    intl_paras = [para(_WORDS + _INTL_WORDS * 2, rng.randint(40, 220)) for _ in range(120)]
    return _Pool(ascii_paras, intl_paras)


def _pick_folder(rng: random.Random, i: int) -> tuple[str, ...]:
    if i < len(NONEMPTY_FOLDERS):
        return NONEMPTY_FOLDERS[i]
    return rng.choices(NONEMPTY_FOLDERS, weights=[w for _, w in _FOLDER_WEIGHTS])[0]


def _pick_flags(rng: random.Random, folder: tuple[str, ...], force_kw: bool) -> frozenset[str]:
    name = folder[0]
    seen_p = {"Sent": 0.98, "Drafts": 0.9, "Junk": 0.3}.get(name, 0.7)
    flags = set()
    if rng.random() < seen_p:
        flags.add("\\Seen")
    if rng.random() < 0.08:
        flags.add("\\Flagged")
    if name not in ("Sent", "Drafts") and rng.random() < 0.15:
        flags.add("\\Answered")
    if rng.random() < (0.9 if name == "Drafts" else 0.003):
        flags.add("\\Draft")
    for kw in KEYWORDS:
        if rng.random() < 0.04:
            flags.add(kw)
    if force_kw:
        flags.update(("$Forwarded", "Work"))
    return frozenset(flags)


def _pick_date(rng: random.Random) -> datetime:
    ts = rng.randint(_DATE_LO, _DATE_HI)
    tz = timezone(timedelta(minutes=rng.choice(_OFFSETS_MIN)))
    return datetime.fromtimestamp(ts, tz)


def _plan(seed: int, i: int) -> tuple[_Plan, random.Random]:
    """Decisions for message i, and the RNG positioned to build its content."""
    rng = random.Random(f"{seed}:{i}")
    forced = FORCED.get(i)
    folder = _pick_folder(rng, i)
    flags = _pick_flags(rng, folder, forced == "keywords")
    date = _pick_date(rng)
    r_dup, r_mid, r_8bit, r_kind = rng.random(), rng.random(), rng.random(), rng.random()
    random_ok = i >= _QUIET_PREFIX
    dup_of: int | None = None
    if forced == "dup":
        dup_of = 3
    elif random_ok and r_dup < 0.01:
        dup_of = rng.randrange(max(0, i - 200), i)
        if rng.random() < 0.5:
            folder = _plan(seed, dup_of)[0].folder
    mid_from: int | None = i
    if forced == "no_mid" or (random_ok and r_mid < 0.005):
        mid_from = None
    elif forced == "shared_mid":
        mid_from = 2
    elif random_ok and r_mid < 0.01:
        mid_from = rng.randrange(max(0, i - 500), i)
    eight_bit = forced == "8bit" or (random_ok and r_8bit < 0.03)
    kind = "huge" if forced == "huge" or r_kind < 0.02 else "attach" if r_kind < 0.15 else "text"
    plan = _Plan(folder, flags, date, dup_of, mid_from, eight_bit, kind)
    return plan, rng


def _message_id(seed: int, i: int) -> str | None:
    """The Message-ID that message i's bytes carry (None when it has none)."""
    plan, _ = _plan(seed, i)
    if plan.dup_of is not None:
        return _message_id(seed, plan.dup_of)
    if plan.mid_from is None:
        return None
    if plan.mid_from != i:
        return _message_id(seed, plan.mid_from)
    digest = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=10).hexdigest()
    return f"<{digest}.{i}@{_DOMAINS[i % 4]}>"


def _encode_word(text: str, rng: random.Random) -> str:
    """RFC 2047 encode text (B or Q), split into encoded-words of <= 75 chars, folded."""
    use_q = rng.random() < 0.4
    words, chunk = [], ""
    for ch in text:
        if len((chunk + ch).encode()) > 30:
            words.append(chunk)
            chunk = ""
        chunk += ch
    words.append(chunk)
    out = []
    for w in words:
        data = w.encode()
        if use_q:
            enc = "".join(
                chr(b) if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122) else "_" if b == 32 else f"={b:02X}"
                for b in data
            )
            out.append(f"=?UTF-8?Q?{enc}?=")
        else:
            out.append(f"=?UTF-8?B?{base64.b64encode(data).decode()}?=")
    return "\n ".join(out)


def _subject_text(rng: random.Random, intl: bool) -> str:
    words = _INTL_WORDS if intl else _WORDS
    return rng.choice(_SUBJECTS).format(w=rng.choice(words), n=rng.randint(1, 99999), q=rng.randint(1, 4))


def _headers(seed: int, i: int, plan: _Plan, rng: random.Random) -> list[bytes]:
    intl_from = rng.random() < 0.25
    intl_subj = rng.random() < 0.25
    name = rng.choice(_INTL_NAMES) if intl_from else f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    addr = f"{name.split()[0].lower().encode('ascii', 'ignore').decode() or 'user'}{rng.randint(1, 99)}"
    domain = rng.choice(_DOMAINS[:4])
    subject = _subject_text(rng, intl_subj)
    if plan.eight_bit:
        from_b = f'"{name}" <{addr}@{domain}>'.encode()
        subj_b = ("Grüße – " + subject).encode()
    else:
        shown = _encode_word(name, rng) if intl_from else f'"{name}"'
        from_b = f"{shown} <{addr}@{domain}>".encode()
        subj_b = (_encode_word(subject, rng) if intl_subj else subject).encode()
    hdrs = [
        b"Return-Path: <" + f"{addr}@{domain}".encode() + b">",
        b"Received: from mx.example.net (mx.example.net [192.0.2.1])\n\tby mail.example.com with ESMTPS; "
        + format_datetime(plan.date).encode(),
        b"From: " + from_b,
        b"To: user@example.com",
        b"Subject: " + subj_b,
        b"Date: " + format_datetime(plan.date).encode(),
    ]
    mid = _message_id(seed, i)
    if mid is not None:
        hdrs.append(b"Message-ID: " + mid.encode())
    hdrs.append(b"MIME-Version: 1.0")
    return hdrs


def _text(rng: random.Random, pool: _Pool, size: int, intl: bool) -> str:
    paras = pool.intl_paras if intl else pool.ascii_paras
    parts, total = [], 0
    while total < size:
        p = rng.choice(paras)
        parts.append(p)
        total += len(p)
    return "".join(parts)


def _text_part(rng: random.Random, text: str, subtype: str = "plain") -> bytes:
    """A single text part (headers + body, LF endings) with a random transfer encoding."""
    ascii_only = text.isascii()
    choice = rng.random()
    data = text.encode()
    if ascii_only and choice < 0.6:
        cte, body = "7bit", data
    elif choice < 0.45:
        cte, body = "8bit", data
    elif choice < 0.8:
        cte, body = "quoted-printable", binascii.b2a_qp(data, istext=True)
    else:
        cte, body = "base64", base64.encodebytes(data)
    charset = "us-ascii" if ascii_only else "utf-8"
    head = f"Content-Type: text/{subtype}; charset={charset}\nContent-Transfer-Encoding: {cte}\n\n"
    return head.encode() + body


def _html(text: str) -> str:
    paras = "".join(f"<p>{p}</p>\n" for p in text.split("\n\n") if p)
    return f'<html><head><meta charset="utf-8"></head><body>\n{paras}</body></html>\n'


def _boundary(rng: random.Random) -> str:
    return f"=_corpus_{rng.getrandbits(64):016x}"


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    b = boundary.encode()
    out = [f'Content-Type: multipart/{subtype};\n boundary="{boundary}"\n\n'.encode()]
    out.append(b"This is a multi-part message in MIME format.\n")
    for p in parts:
        out += [b"\n--" + b + b"\n", p]
    out.append(b"\n--" + b + b"--\n")
    return b"".join(out)


def _body(rng: random.Random, pool: _Pool, size: int) -> bytes:
    intl = rng.random() < 0.3
    text = _text(rng, pool, size, intl)
    if rng.random() < 0.5:
        return _text_part(rng, text)
    return _multipart("alternative", _boundary(rng), [_text_part(rng, text), _text_part(rng, _html(text), "html")])


def _attachment(rng: random.Random, size: int) -> bytes:
    ctype, pattern = rng.choice(_ATTACH_TYPES)
    fname = pattern.format(n=rng.randint(1, 9999))
    if fname.isascii():
        disp = f'attachment; filename="{fname}"'
    else:
        disp = "attachment;\n filename*=utf-8''" + "".join(
            c if (c.isascii() and c.isalnum()) or c in ".-_" else "".join(f"%{b:02X}" for b in c.encode())
            for c in fname
        )
    head = f'Content-Type: {ctype}; name="{fname}"\nContent-Transfer-Encoding: base64\nContent-Disposition: {disp}\n\n'
    return head.encode() + base64.encodebytes(rng.randbytes(size))


def _build(seed: int, i: int, pool: _Pool, max_attachment: int) -> tuple[_Plan, bytes]:
    plan, rng = _plan(seed, i)
    if plan.dup_of is not None:
        return plan, _build(seed, plan.dup_of, pool, max_attachment)[1]
    hdrs = _headers(seed, i, plan, rng)
    text_size = int(2048 * 30 ** rng.random())  # log-uniform 2 KB .. 60 KB
    if plan.kind == "text":
        content = _body(rng, pool, text_size)
    else:
        if FORCED.get(i) == "huge":
            att = max(1, max_attachment - rng.randrange(4096))
        elif plan.kind == "huge":
            lo = min(100 * 1024, max_attachment)
            att = int(lo * (max_attachment / lo) ** rng.random())
        else:
            att = rng.randint(15 * 1024, 100 * 1024)
        body = _body(rng, pool, min(text_size, 8192))
        content = _multipart("mixed", _boundary(rng), [body, _attachment(rng, att)])
    raw = b"\n".join(hdrs) + b"\n" + content
    return plan, raw.replace(b"\n", b"\r\n")


def generate(count: int, seed: int = 1, *, max_attachment: int = 5 * 1024 * 1024) -> Iterator[CorpusMessage]:
    """Yield `count` deterministic messages (see the module docstring for the mix).

    Same (count, seed, max_attachment) -> same bytes; generate(n) is a prefix of
    generate(m) for n <= m. `max_attachment` bounds the decoded size of attachments.
    """
    pool = _make_pool(seed)
    for i in range(count):
        plan, raw = _build(seed, i, pool, max_attachment)
        yield CorpusMessage(plan.folder, plan.flags, plan.date, raw)


# ----------------------------------------------------------------------------- loaders

_FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}


def folder_label(folder: tuple[str, ...]) -> str:
    """Human-readable folder name ("Archive/2019") used in summaries and diffs."""
    return "/".join(folder)


def maildir_dir_name(folder: tuple[str, ...]) -> str:
    """Maildir++ directory name of a folder ('' for INBOX): '.' + mUTF-7 parts joined by '.'."""
    if folder == INBOX:
        return ""
    parts = []
    for part in folder:
        if not part or "." in part or "/" in part:
            raise ValueError(f"folder part {part!r} cannot be stored in a Maildir++ name")
        parts.append(imap_utf7.encode(part).decode("ascii"))
    return "." + ".".join(parts)


def _mkdirs(path: Path, uid: int, gid: int) -> None:
    for sub in ("", "cur", "new", "tmp"):
        p = path / sub if sub else path
        p.mkdir(mode=0o700, exist_ok=True)
        os.chown(p, uid, gid)


def _write_owned(path: Path, data: bytes, uid: int, gid: int) -> None:
    path.write_bytes(data)
    os.chown(path, uid, gid)


def load_maildir(
    messages: Iterable[CorpusMessage],
    maildir_root: Path,
    *,
    layout: Literal["slash", "courier"] = "slash",
    uid: int = -1,
    gid: int = -1,
    folders: Iterable[tuple[str, ...]] = FOLDERS,
) -> dict[str, object]:
    """Write messages straight into a (new, empty) Dovecot Maildir++ tree; fast path.

    `maildir_root` is the user's Maildir (``mail_location = maildir:~/Maildir``). INBOX is
    the root; folder ("A", "B") is ``<root>/.A.B/`` (parts mUTF-7 encoded) for both
    layouts: "slash" (namespace separator "/", prefix "") and "courier" (separator ".",
    prefix "INBOX.") differ only in the server's namespace config, not on disk; "courier"
    additionally writes Courier's ``courierimapsubscribed`` (Courier keywords are NOT
    written). Files go to cur/ as ``<unique>,S=<size>,W=<size>:2,<letters>`` with bytes
    stored as given (CRLF, so S == W), system flag letters D F R S T and keyword letters
    a..z defined by a per-folder ``dovecot-keywords`` file; mtime = internal date (Dovecot
    reports it as INTERNALDATE, whole seconds, same instant). Every folder in `folders`
    and of the messages is created; a ``subscriptions`` file lists them all. Everything
    created is chowned to uid/gid (-1 keeps the owner).

    Afterwards the caller must run ``doveadm -c CONF force-resync -u USER '*'`` so that
    Dovecot indexes the files before the first IMAP session.

    Returns {"messages": n, "bytes": total raw bytes, "folders": {label: count}}.
    """
    if layout not in ("slash", "courier"):
        raise ValueError(f"unknown layout {layout!r}")
    root = Path(maildir_root)
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, uid, gid)
    counts: Counter[tuple[str, ...]] = Counter({tuple(f): 0 for f in folders})
    keywords: dict[tuple[str, ...], dict[str, str]] = {}
    total = 0
    for n, msg in enumerate(messages):
        box = root / maildir_dir_name(msg.folder)
        if msg.folder not in keywords:
            _mkdirs(box, uid, gid)
            if msg.folder != INBOX:
                _write_owned(box / "maildirfolder", b"", uid, gid)
            keywords[msg.folder] = {}
        kwmap = keywords[msg.folder]
        letters = [_FLAG_LETTERS[f] for f in msg.flags if f in _FLAG_LETTERS]
        for kw in sorted(msg.flags - SYSTEM_FLAGS):
            if kw not in kwmap:
                if len(kwmap) >= 26:
                    raise ValueError(f"more than 26 keywords in {folder_label(msg.folder)}")
                kwmap[kw] = chr(ord("a") + len(kwmap))
            letters.append(kwmap[kw])
        ts = int(msg.internal_date.timestamp())
        size = len(msg.raw)
        name = f"{ts}.M{n:07d}P{os.getpid()}.corpus,S={size},W={size}:2,{''.join(sorted(letters))}"
        path = box / "cur" / name
        _write_owned(path, msg.raw, uid, gid)
        os.utime(path, (ts, ts))
        counts[msg.folder] += 1
        total += size
    for folder in counts:
        if folder not in keywords:
            box = root / maildir_dir_name(folder)
            _mkdirs(box, uid, gid)
            if folder != INBOX:
                _write_owned(box / "maildirfolder", b"", uid, gid)
    for folder, kwmap in keywords.items():
        if kwmap:
            lines = "".join(f"{ord(letter) - ord('a')} {kw}\n" for kw, letter in kwmap.items())
            _write_owned(root / maildir_dir_name(folder) / "dovecot-keywords", lines.encode(), uid, gid)
    _write_subscriptions(root, sorted(counts), layout, uid, gid)
    return {
        "messages": sum(counts.values()),
        "bytes": total,
        "folders": {folder_label(f): c for f, c in sorted(counts.items())},
    }


def _write_subscriptions(root: Path, folders: list[tuple[str, ...]], layout: str, uid: int, gid: int) -> None:
    """Dovecot 2.3 subscriptions (v2: hierarchy parts separated by TAB, mUTF-7)."""
    enc = [[imap_utf7.encode(p).decode("ascii") for p in f] for f in folders]
    lines = "".join("\t".join(parts) + "\n" for parts in enc)
    _write_owned(root / "subscriptions", f"V\t2\n\n{lines}".encode(), uid, gid)
    if layout == "courier":
        courier = "".join(("INBOX" if parts == ["INBOX"] else "INBOX." + ".".join(parts)) + "\n" for parts in enc)
        _write_owned(root / "courierimapsubscribed", courier.encode(), uid, gid)


def imap_folder_name(folder: tuple[str, ...], separator: str = "/", prefix: str = "") -> str:
    """IMAP (unencoded) name of a folder under a personal namespace prefix/separator."""
    if folder == INBOX:
        return "INBOX"
    return prefix + separator.join(folder)


def deliver_imap(
    messages: Iterable[CorpusMessage], host: str, port: int, user: str, password: str, *,
    separator: str = "/", prefix: str = "", timeout: float = 60,
) -> dict[str, object]:  # fmt: skip
    """``load_imap`` on a connection of its own (log in, APPEND, log out): new mail
    arriving at ``user`` between two runs. Creates only the messages' own folders."""
    import imapclient

    client = imapclient.IMAPClient(host, port=port, ssl=False, timeout=timeout)
    try:
        client.login(user, password)
        return load_imap(messages, client, separator=separator, prefix=prefix, folders=[])
    finally:
        client.logout()


def load_imap(
    messages: Iterable[CorpusMessage],
    client: imapclient.IMAPClient,
    *,
    separator: str = "/",
    prefix: str = "",
    folders: Iterable[tuple[str, ...]] = FOLDERS,
) -> dict[str, object]:
    """Place messages through an already logged-in IMAPClient by APPEND (slow path).

    Creates (and subscribes) every folder of `folders` and of the messages, parents
    first, ignoring "already exists"; appends each message with its flags, keywords and
    internal date. Returns the same summary as `load_maildir`.
    """
    counts: Counter[tuple[str, ...]] = Counter({tuple(f): 0 for f in folders})
    created: set[tuple[str, ...]] = set()

    def ensure(folder: tuple[str, ...]) -> None:
        if folder in created:
            return
        for depth in range(1, len(folder) + 1):
            part = folder[:depth]
            if part in created or part == INBOX:
                created.add(part)
                continue
            name = imap_folder_name(part, separator, prefix)
            if not client.folder_exists(name):
                client.create_folder(name)
            client.subscribe_folder(name)
            created.add(part)

    for folder in list(counts):
        ensure(folder)
    total = 0
    for msg in messages:
        ensure(msg.folder)
        flags = sorted(msg.flags)
        client.append(imap_folder_name(msg.folder, separator, prefix), msg.raw, flags, msg.internal_date)
        counts[msg.folder] += 1
        total += len(msg.raw)
    return {
        "messages": sum(counts.values()),
        "bytes": total,
        "folders": {folder_label(f): c for f, c in sorted(counts.items())},
    }
