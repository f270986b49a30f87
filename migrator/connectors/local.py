"""Local stores: Maildir++ (Dovecot compatible) and mbox (mboxrd, Thunderbird layout).

Both stores keep message bytes exactly: ``append(bytes)`` then ``fetch`` returns the
identical bytes, whatever their line endings. Opening a store, listing and fetching
create nothing on disk (dry runs read a destination that may not exist yet); a
destination root is created on the first ``ensure_folder`` or ``append``.

Maildir
    The root is the INBOX; ``("A", "B")`` lives in ``<root>/.A.B`` with each part
    encoded as IMAP modified UTF-7 (as Dovecot does). Flags are the ``:2,`` info
    letters, keywords are lowercase letters mapped by the folder's ``dovecot-keywords``
    file, the internal date is the file's mtime, the id is the file name's unique part.

mbox
    One file per folder. ``account.path`` is either one mbox file (the only folder,
    INBOX) or a directory of folder files with subfolders in ``<name>.sbd/``
    (Thunderbird). Messages are mboxrd-quoted; the ``Status``, ``X-Status`` and
    ``X-Keywords`` header lines are the store's flag metadata and are not part of the
    message bytes. A message whose bytes cannot be written plainly (no final newline,
    or it carries such headers itself) gets an ``X-Migrator-Meta`` line that marks
    where the store's lines begin. The id is a content hash: stable across runs.
    Thunderbird's own ``X-Mozilla-Status``/``-Status2``/``-Keys`` lines are read for
    flags when a message has no ``Status`` lines, but stay in the bytes: an mbox is
    returned as it is in the file. To read a Thunderbird profile as Thunderbird saw
    the messages (those lines removed, expunged messages skipped) use the
    ``thunderbird`` type (``migrator.connectors.desktop``). ``fetch`` seeks to the
    offsets of the last listing while the file is unchanged.
"""

from __future__ import annotations

import calendar
import errno
import hashlib
import io
import logging
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from imapclient import imap_utf7

from migrator.connectors.base import Role
from migrator.errors import ConnectError, FolderError, MessageError, QuotaError
from migrator.model import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    SEEN,
    Account,
    Capabilities,
    FolderInfo,
    FolderPath,
    MessageMeta,
    crlf_size,
    message_id_from_header_block,
)

__all__ = [
    "MaildirStore",
    "MboxStore",
    "decode_mbox_entry",
    "encode_mbox_entry",
    "open_maildir",
    "open_mbox",
]

log = logging.getLogger(__name__)

INBOX: FolderPath = ("INBOX",)
SPECIAL_USE_NAMES = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
    "Archives": "\\Archive",
}
HEADER_PROBE_LIMIT = 256 * 1024  # bytes read at most to find a message's header block
CHUNK = 1024 * 1024


def _special_use(path: FolderPath) -> str | None:
    """Special-use attribute implied by a top-level folder name (None otherwise)."""
    return SPECIAL_USE_NAMES.get(path[0]) if len(path) == 1 else None


def _folder(path: FolderPath, selectable: bool = True) -> FolderInfo:
    if len(path) == 1 and path[0].upper() == "INBOX":
        path = INBOX
    return FolderInfo(path=path, special_use=_special_use(path), selectable=selectable)


def _with_containers(paths: Iterable[FolderPath]) -> list[FolderInfo]:
    """FolderInfos for ``paths`` plus non-selectable containers for missing parents."""
    real = set(paths)
    folders = [_folder(p) for p in real]
    missing = {p[:i] for p in real for i in range(1, len(p))} - real
    folders += [_folder(p, selectable=False) for p in missing]
    return sorted(folders, key=lambda f: (f.path != INBOX, f.path))


def _write_error(exc: OSError, what: str, msg_id: str | None = None) -> Exception:
    """Classify an OSError raised while writing: ENOSPC/EDQUOT -> QuotaError."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return QuotaError(f"{what}: {reason}")
    return MessageError(f"{what}: {reason}", msg_id)


def _stream_crlf_size(fh: BinaryIO) -> int:
    """crlf_size of the rest of ``fh`` without holding it in memory."""
    total = 0
    prev_cr = False
    while chunk := fh.read(CHUNK):
        total += crlf_size(chunk)
        if prev_cr and chunk[:1] == b"\n":
            total -= 1  # a CRLF split across chunks was counted as a bare LF
        prev_cr = chunk[-1:] == b"\r"
    return total


def _read_header_block(fh: BinaryIO) -> bytes:
    """The bytes of ``fh`` up to the end of the header block (bounded read)."""
    data = b""
    while len(data) < HEADER_PROBE_LIMIT:
        chunk = fh.read(8192)
        if not chunk:
            break
        data += chunk
        if b"\n\n" in data or b"\r\n\r\n" in data:
            break
    return data


# ----------------------------------------------------------------------- Maildir

MAILDIR_FLAGS = {"D": DRAFT, "F": FLAGGED, "R": ANSWERED, "S": SEEN, "T": DELETED}
MAILDIR_LETTERS = {flag: letter for letter, flag in MAILDIR_FLAGS.items()}
KEYWORDS_FILE = "dovecot-keywords"
MAX_KEYWORDS = 26
_SIZE_RE = re.compile(r",W=(\d+)")


@dataclass(frozen=True, slots=True)
class _MaildirFile:
    key: str  # unique part of the name: the message id
    path: Path
    letters: str  # info letters after ":2,"


def _split_maildir_name(name: str) -> tuple[str, str]:
    """(unique part, info letters) of a Maildir file name (":2," or "!2," info)."""
    for sep in (":2,", "!2,"):
        idx = name.rfind(sep)
        if idx >= 0:
            return name[:idx], name[idx + 3 :]
    return name, ""


def _encode_maildir_part(part: str) -> str:
    return imap_utf7.encode(part).decode("ascii")


def _decode_maildir_part(part: str) -> str:
    if not part.isascii():  # a store written with UTF-8 names (mailbox_list_utf8)
        return part
    return imap_utf7.decode(part.encode("ascii"))


def _read_keywords(folder_dir: Path) -> dict[int, str]:
    """Dovecot's ``dovecot-keywords``: index -> keyword (missing file: empty)."""
    try:
        text = (folder_dir / KEYWORDS_FILE).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise FolderError(f"cannot read {folder_dir / KEYWORDS_FILE}: {exc.strerror}") from None
    table: dict[int, str] = {}
    for line in text.splitlines():
        idx, _, name = line.partition(" ")
        if idx.isdigit() and name and int(idx) < MAX_KEYWORDS:
            table[int(idx)] = name
    return table


def _write_keywords(folder_dir: Path, table: dict[int, str]) -> None:
    """Replace ``dovecot-keywords`` atomically (Dovecot's format: "<index> <name>")."""
    tmp = folder_dir / f"{KEYWORDS_FILE}.migrator-tmp"
    body = "".join(f"{i} {name}\n" for i, name in sorted(table.items()))
    tmp.write_text(body, encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, folder_dir / KEYWORDS_FILE)


class MaildirStore:
    """A Maildir++ tree (Dovecot's ``maildir:~/Maildir``) as Source and Destination."""

    capabilities = Capabilities(forbidden_name_chars="./", append_returns_id=True)

    def __init__(self, root: Path, role: Role):
        self.root = root
        self.role = role
        self._seq = 0
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"

    def __repr__(self) -> str:
        return f"MaildirStore({str(self.root)!r}, {self.role})"

    # -- paths
    def _dir(self, path: FolderPath) -> Path:
        """Directory of ``path``; raises FolderError for names Maildir++ cannot hold."""
        if not path:
            raise FolderError("empty folder path")
        if len(path) == 1 and path[0].upper() == "INBOX":
            return self.root
        for part in path:
            if not part or any(c in part for c in self.capabilities.forbidden_name_chars):
                raise FolderError(f"folder name part {part!r} cannot be stored in a Maildir++ tree")
        return self.root / ("." + ".".join(_encode_maildir_part(p) for p in path))

    def _dir_path(self, name: str) -> FolderPath | None:
        """Folder path of a ``.A.B`` directory name (None if it is not a folder)."""
        if not name.startswith(".") or name in (".", ".."):
            return None
        parts = name[1:].split(".")
        if any(not p for p in parts):
            return None
        path = tuple(_decode_maildir_part(p) for p in parts)
        return None if path == INBOX else path

    # -- Source
    def list_folders(self) -> list[FolderInfo]:
        """INBOX (if the root is a Maildir) and every ``.A.B`` directory. Read-only."""
        if not self.root.is_dir():
            return []
        paths: list[FolderPath] = []
        if (self.root / "cur").is_dir() or (self.root / "new").is_dir():
            paths.append(INBOX)
        with os.scandir(self.root) as entries:
            for entry in entries:
                path = self._dir_path(entry.name)
                if path is not None and entry.is_dir():
                    paths.append(path)
        return _with_containers(paths)

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        """The folder at ``path`` if its directory exists, else None. Read-only."""
        try:
            folder_dir = self._dir(path)
        except FolderError:
            return None
        if folder_dir == self.root:
            return _folder(INBOX) if (self.root / "cur").is_dir() else None
        return _folder(path) if folder_dir.is_dir() else None

    def _scan(self, folder: FolderInfo) -> dict[str, _MaildirFile]:
        folder_dir = self._dir(folder.path)
        if not folder_dir.is_dir():
            raise FolderError(f"folder {'/'.join(folder.path)!r} does not exist at {folder_dir}")
        found: dict[str, _MaildirFile] = {}
        for sub in ("new", "cur"):  # cur wins over a stale copy in new
            try:
                names = os.listdir(folder_dir / sub)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith("."):
                    continue
                key, letters = _split_maildir_name(name)
                found[key] = _MaildirFile(key, folder_dir / sub / name, letters)  # Dovecot: new/ may have info
        return found

    def _meta(self, entry: _MaildirFile, keywords: dict[int, str], raw: bytes | None) -> MessageMeta:
        flags = {MAILDIR_FLAGS[c] for c in entry.letters if c in MAILDIR_FLAGS}
        flags |= {keywords[ord(c) - 97] for c in entry.letters if "a" <= c <= "z" and ord(c) - 97 in keywords}
        stat = entry.path.stat()
        if raw is not None:
            size, head = crlf_size(raw), raw
        else:
            with entry.path.open("rb") as fh:
                head = _read_header_block(fh)
                match = _SIZE_RE.search(entry.key)
                if match:
                    size = int(match.group(1))
                else:
                    fh.seek(0)
                    size = _stream_crlf_size(fh)
        return MessageMeta(
            id=entry.key,
            size=size,
            flags=frozenset(flags),
            internal_date=datetime.fromtimestamp(int(stat.st_mtime), UTC),
            message_id=message_id_from_header_block(head),
        )

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every message with flags, keywords, mtime date and size. Read-only.
        Raises FolderError when the folder directory does not exist."""
        keywords = _read_keywords(self._dir(folder.path))
        metas = []
        for entry in self._scan(folder).values():
            try:
                metas.append(self._meta(entry, keywords, None))
            except FileNotFoundError:
                continue  # moved or expunged meanwhile
        return metas

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """Exact bytes of ``msgs`` with fresh metadata; vanished ones are skipped."""
        keywords = _read_keywords(self._dir(folder.path))
        entries = self._scan(folder)
        for msg in msgs:
            for attempt in range(2):
                entry = entries.get(msg.id)
                if entry is None:
                    break
                try:
                    raw = entry.path.read_bytes()
                    yield self._meta(entry, keywords, raw), raw
                    break
                except FileNotFoundError:
                    if attempt == 0:  # renamed by a flag change: look again once
                        entries = self._scan(folder)

    def close(self) -> None:
        """Nothing to release. Idempotent."""

    # -- Destination
    def _make_maildir(self, folder_dir: Path, subfolder: bool) -> None:
        for sub in ("tmp", "new", "cur"):
            (folder_dir / sub).mkdir(parents=True, exist_ok=True)
        if subfolder and not (folder_dir / "maildirfolder").exists():
            (folder_dir / "maildirfolder").touch()

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        """Create the folder (its parents and the root Maildir too) unless it exists.
        Idempotent. Raises FolderError for a name part holding "." or "/", or on an
        OS error. ``special_use`` is not recorded (Maildir++ names carry it)."""
        folder_dir = self._dir(path)
        try:
            self._make_maildir(self.root, subfolder=False)
            for i in range(1, len(path) + 1):
                if path[:i] != INBOX:
                    self._make_maildir(self._dir(path[:i]), subfolder=True)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise QuotaError(f"cannot create {folder_dir}: {exc.strerror}") from None
            raise FolderError(f"cannot create {folder_dir}: {exc.strerror}") from None
        return _folder(path)

    def _new_key(self, raw: bytes) -> str:
        now = time.time()
        self._seq += 1
        usec = int((now % 1) * 1_000_000)
        return f"{int(now)}.M{usec}P{os.getpid()}Q{self._seq}.{self._host},S={len(raw)},W={crlf_size(raw)}"

    def _letters(self, folder_dir: Path, flags: frozenset[str], keywords: dict[int, str]) -> str:
        """Info letters for ``flags``; new keywords are added to ``keywords`` (in place)."""
        letters = {MAILDIR_LETTERS[f] for f in flags if f in MAILDIR_LETTERS}
        by_name = {name: idx for idx, name in keywords.items()}
        for flag in sorted(flags):
            if flag.startswith("\\"):
                continue
            idx = by_name.get(flag)
            if idx is None:
                free = [i for i in range(MAX_KEYWORDS) if i not in keywords]
                if not free:  # refuse rather than lose the keyword: the message is reported as failed
                    raise MessageError(
                        f"{folder_dir}: a Maildir folder holds at most 26 keywords; cannot store {flag!r}"
                    )
                idx = free[0]
                keywords[idx] = flag
                by_name[flag] = idx
            letters.add(chr(97 + idx))
        return "".join(sorted(letters))

    def _deliver(self, folder_dir: Path, meta: MessageMeta, raw: bytes, letters: str) -> str:
        key = self._new_key(raw)
        tmp = folder_dir / "tmp" / key
        while True:
            target = folder_dir / "cur" / f"{key}:2,{letters}"
            if not target.exists():
                break
            key = self._new_key(raw)
        try:
            with tmp.open("xb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            if meta.internal_date is not None:
                stamp = meta.internal_date.timestamp()
                os.utime(tmp, (stamp, stamp))
            os.rename(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return key

    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        """Write each item to tmp/, then rename it into cur/ with its flags; the mtime is
        the internal date. Bytes are written exactly as given. Returns the new keys.
        All or nothing: on an error the items already written are removed again.
        Raises QuotaError when the disk is full, MessageError on other write errors and
        for a 27th keyword (Maildir has 26 keyword letters)."""
        folder_dir = self._dir(folder.path)
        self.ensure_folder(folder.path)
        keywords = _read_keywords(folder_dir)
        before = dict(keywords)
        keys: list[str | None] = []
        try:
            plans = [(meta, raw, self._letters(folder_dir, meta.flags, keywords)) for meta, raw in items]
            if keywords != before:
                _write_keywords(folder_dir, keywords)
            for meta, raw, letters in plans:
                keys.append(self._deliver(folder_dir, meta, raw, letters))
        except OSError as exc:
            # all or nothing: the caller retries a refused batch one by one
            for key in keys:
                for leftover in (folder_dir / "cur").glob(f"{key}*"):
                    leftover.unlink(missing_ok=True)
            raise _write_error(exc, f"cannot write to {folder_dir}", None) from None
        return keys


def open_maildir(account: Account, role: Role) -> MaildirStore:
    """Open the Maildir++ tree at ``account.path``. Creates nothing.

    Raises ConnectError when a source root does not exist or is not a Maildir, or
    when a destination root exists but is neither a Maildir nor an empty directory."""
    if not account.path:
        raise ConnectError(f"{account.describe()}: no path given", retryable=False)
    root = Path(account.path).expanduser()
    if root.exists() and not root.is_dir():
        raise ConnectError(f"{root} is not a directory (a Maildir is a directory)", retryable=False)
    if role == "source" and not root.is_dir():
        raise ConnectError(f"Maildir {root} does not exist", retryable=False)
    if root.is_dir() and not _looks_like_maildir(root):
        if role == "source":
            raise ConnectError(f"{root} is not a Maildir (no cur/ directory, no .folder directories)", retryable=False)
        # another worker may be creating this Maildir right now: only foreign entries count
        if any(not _maildir_entry(e.name) for e in root.iterdir()) and not _looks_like_maildir(root):
            raise ConnectError(f"{root} is not a Maildir and not empty; refusing to write into it", retryable=False)
    return MaildirStore(root, role)


def _maildir_entry(name: str) -> bool:
    """A name that belongs in a Maildir++ root (ours or Dovecot's)."""
    return name in ("cur", "new", "tmp", "maildirfolder", "subscriptions") or name.startswith((".", "dovecot"))


def _looks_like_maildir(root: Path) -> bool:
    """True when ``root`` has cur/, new/ or tmp/ (another worker may be creating it
    right now: tmp/ comes first) or at least one Maildir++ ``.folder/cur`` directory."""
    if any((root / sub).is_dir() for sub in ("cur", "new", "tmp")):
        return True
    with os.scandir(root) as entries:
        return any(e.name.startswith(".") and os.path.isdir(os.path.join(e.path, "cur")) for e in entries)


# -------------------------------------------------------------------------- mbox

META_HEADERS = (b"status", b"x-status", b"x-keywords")
MARKER = b"X-Migrator-Meta"
X_STATUS_FLAGS = {"A": ANSWERED, "F": FLAGGED, "T": DRAFT, "D": DELETED}
X_STATUS_LETTERS = {flag: letter for letter, flag in X_STATUS_FLAGS.items()}
MARKED_HEADERS = (b"x-migrator-meta", b"x-mozilla-status", b"x-mozilla-keys")
MOZILLA_BITS = {0x1: SEEN, 0x2: ANSWERED, 0x4: FLAGGED, 0x8: DELETED}
_FROM_QUOTED = re.compile(rb"^>*From ")
_ASCTIME = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(\d{1,2}) +"
    rb"(\d{1,2}):(\d\d)(?::(\d\d))? +(?:([+-]\d{4}|[A-Z]{1,5}) +)?(\d{4})(?: +([+-]\d{4}))?"
)
_MONTHS = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}


def _lines(data: bytes) -> list[bytes]:
    """Lines of ``data`` split after each LF only (a lone CR is not a line end)."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _header_name(line: bytes) -> bytes:
    name, colon, _ = line.partition(b":")
    return name.strip().lower() if colon else b""


def _is_blank(line: bytes) -> bool:
    return line in (b"\n", b"\r\n")


def _header_end(lines: list[bytes]) -> int:
    """Index of the first blank line (the end of the header block), or len(lines)."""
    for i, line in enumerate(lines):
        if _is_blank(line):
            return i
    return len(lines)


def _flags_from_meta(lines: list[bytes]) -> set[str]:
    flags: set[str] = set()
    for line in lines:
        name, value = _header_name(line), line.partition(b":")[2].decode("utf-8", "surrogateescape")
        if name == b"status" and "R" in value:
            flags.add(SEEN)
        elif name == b"x-status":
            flags |= {X_STATUS_FLAGS[c] for c in value if c in X_STATUS_FLAGS}
        elif name == b"x-keywords":
            flags |= {k for k in re.split(r"[,\s]+", value) if k}
    return flags


def _mozilla_flags(lines: list[bytes]) -> set[str]:
    """Flags from Thunderbird's X-Mozilla-Status / X-Mozilla-Keys (left in the bytes)."""
    flags: set[str] = set()
    for line in lines:
        name, value = _header_name(line), line.partition(b":")[2].strip()
        if name == b"x-mozilla-status":
            try:
                bits = int(value, 16)
            except ValueError:
                continue
            flags |= {flag for bit, flag in MOZILLA_BITS.items() if bits & bit}
        elif name == b"x-mozilla-keys":
            flags |= {k for k in value.decode("utf-8", "surrogateescape").split() if k}
    return flags


def decode_mbox_entry(content: bytes) -> tuple[bytes, frozenset[str]]:
    """Message bytes and flags of one entry's content (between the From_ line and the
    store's blank line, already mboxrd-unquoted): strips the store's metadata lines."""
    lines = _lines(content)
    end = _header_end(lines)
    marker = max((i for i in range(end) if _header_name(lines[i]) == MARKER.lower()), default=None)
    trim = 0
    if marker is not None:
        meta_idx = [marker] + [i for i in range(marker + 1, end) if _header_name(lines[i]) in META_HEADERS]
        match = re.search(rb"trim=(\d+)", lines[marker])
        trim = int(match.group(1)) if match else 0
    else:
        meta_idx = []
        for i in range(end):
            if _header_name(lines[i]) in META_HEADERS:
                meta_idx.append(i)
                j = i + 1
                while j < end and lines[j][:1] in (b" ", b"\t"):
                    meta_idx.append(j)
                    j += 1
    flags = _flags_from_meta([lines[i] for i in meta_idx])
    if not meta_idx:
        flags |= _mozilla_flags(lines[:end])
    drop = set(meta_idx)
    kept = [line for i, line in enumerate(lines) if i not in drop]
    raw = b"".join(kept)
    return (raw[:-trim] if trim else raw), frozenset(flags)


def _meta_lines(flags: frozenset[str], eol: bytes) -> list[bytes]:
    out = []
    if SEEN in flags:
        out.append(b"Status: RO" + eol)
    letters = "".join(sorted(X_STATUS_LETTERS[f] for f in flags if f in X_STATUS_LETTERS))
    if letters:
        out.append(b"X-Status: " + letters.encode() + eol)
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    if keywords:
        out.append(b"X-Keywords: " + " ".join(keywords).encode("utf-8", "surrogateescape") + eol)
    return out


def encode_mbox_entry(raw: bytes, flags: frozenset[str]) -> bytes:
    """The content of one mbox entry for ``raw`` (before mboxrd quoting): the message
    with the store's flag lines inserted at the end of its header block, and an
    ``X-Migrator-Meta`` marker when needed to read ``raw`` back exactly. The result
    ends with a newline (or is empty)."""
    lines = _lines(raw)
    end = _header_end(lines)
    eol = b"\r\n" if lines and lines[0].endswith(b"\r\n") else b"\n"
    meta = _meta_lines(flags, eol)
    # Headers the reader would take for the store's: a marker makes it keep them.
    own_meta = any(_header_name(lines[i]) in (*META_HEADERS, *MARKED_HEADERS) for i in range(end))
    tail = b""  # added after the message so that the entry ends with a newline
    trim = 0
    if lines and not lines[-1].endswith(b"\n"):
        if end == len(lines) and lines[-1] != b"\r":  # no body: end the last line, ours follow
            lines[-1] += eol
            trim = len(eol)
        else:
            if end == len(lines):  # a lone CR would become a blank line: ours go before it
                end -= 1
            tail, trim = b"\n", 1
    if own_meta or trim:
        meta.insert(0, MARKER + b": v=1" + (b" trim=%d" % trim if trim else b"") + eol)
    return b"".join(lines[:end] + meta + lines[end:]) + tail


def _quote(content: bytes) -> bytes:
    """mboxrd quoting: one more ">" before any line matching ^>*From ."""
    lines = _lines(content)
    return b"".join(b">" + line if _FROM_QUOTED.match(line) else line for line in lines)


def _unquote_line(line: bytes) -> bytes:
    return line[1:] if line.startswith(b">") and _FROM_QUOTED.match(line) else line


def _from_line_date(line: bytes) -> datetime | None:
    """Internal date from a From_ line (asctime, UTC unless an offset is given)."""
    match = _ASCTIME.search(line)
    if not match:
        return None
    mon, day, hour, minute, sec, zone1, year, zone2 = match.groups()
    try:
        stamp = calendar.timegm((int(year), _MONTHS[mon], int(day), int(hour), int(minute), int(sec or 0), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    for zone in (zone1, zone2):
        if zone and zone[:1] in (b"+", b"-"):
            offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
            stamp -= offset if zone[:1] == b"+" else -offset
    return datetime.fromtimestamp(stamp, UTC)


def _from_line(date: datetime | None) -> bytes:
    when = (date or datetime.now(UTC)).astimezone(UTC)
    return b"From MAILER-DAEMON " + time.asctime(when.timetuple()).encode("ascii") + b"\n"


def scan_mbox(fh: BinaryIO, start: int = 0) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(From_ line, unquoted content, start offset, end offset) of every entry of an
    mbox file read from ``fh`` (positioned at ``start``), streaming. ``end`` is where
    the next entry's From_ line begins (or the end of the file), so reading the bytes
    ``[start, end)`` and scanning them again yields exactly that one entry."""
    from_line: bytes | None = None
    content: list[bytes] = []
    entry_start = pos = start
    prev_blank = True  # the start of the file counts as "after a blank line"
    for line in fh:
        if prev_blank and line.startswith(b"From "):
            if from_line is not None:
                yield from_line, _strip_separator(content), entry_start, pos
            from_line, content, entry_start = line, [], pos
            pos += len(line)
            prev_blank = False
            continue
        pos += len(line)
        prev_blank = _is_blank(line)
        if from_line is not None:
            content.append(_unquote_line(line))
    if from_line is not None:
        yield from_line, _strip_separator(content), entry_start, pos


def read_mbox_entry(fh: BinaryIO, start: int, end: int) -> tuple[bytes, bytes] | None:
    """(From_ line, unquoted content) of the entry at ``[start, end)`` of an mbox
    file (offsets from ``scan_mbox``), or None when no entry begins there any more."""
    fh.seek(start)
    data = fh.read(end - start)
    if not data.startswith(b"From "):
        return None
    entries = list(scan_mbox(io.BytesIO(data)))
    if len(entries) != 1:
        return None
    from_line, content, _, _ = entries[0]
    return from_line, content


def _iter_entries(fh: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(From_ line, unquoted content) of every entry of an mbox file, streaming."""
    for from_line, content, _, _ in scan_mbox(fh):
        yield from_line, content


def file_signature(fh: BinaryIO) -> tuple[int, int]:
    """(size, mtime in ns) of an open file: an offset index is valid while it holds."""
    st = os.fstat(fh.fileno())
    return st.st_size, st.st_mtime_ns


def _strip_separator(content: list[bytes]) -> bytes:
    """Drop the store's blank line before the next From_ (or at the end of the file);
    a last message that ends without one (foreign files) is kept as it is."""
    if content and _is_blank(content[-1]):
        content = content[:-1]
    return b"".join(content)


def _mbox_key(raw: bytes, seen: Counter[str]) -> str:
    digest = hashlib.sha256(raw).hexdigest()[:24]
    seen[digest] += 1
    return f"{digest}-{seen[digest]}"


EntryDecoder = Callable[[bytes, bytes], tuple[bytes, frozenset[str], datetime | None, dict[str, str]] | None]


def _decode_plain(from_line: bytes, content: bytes) -> tuple[bytes, frozenset[str], datetime | None, dict[str, str]]:
    raw, flags = decode_mbox_entry(content)
    return raw, flags, _from_line_date(from_line), {}


class MboxReader:
    """Reads the messages of mbox folder files through a decoder, with content-hash ids
    (stable across runs and flag changes) and an offset index so that ``fetch`` seeks
    instead of reading a large file through once per batch.

    The decoder turns (From_ line, unquoted content) into (message bytes, flags,
    internal date, extra) or None for an entry that is not a live message (it then
    takes no id). One instance per store; used by one thread at a time."""

    def __init__(self, decode: EntryDecoder):
        self._decode = decode
        # file -> (signature, id -> (start, end), hash counts)
        self._index: dict[Path, tuple[tuple[int, int], dict[str, tuple[int, int]], Counter[str]]] = {}

    def state(self, target: Path) -> tuple[int, dict[str, tuple[int, int]], Counter[str]]:
        """(file size, offsets, hash counts) of the last complete read of ``target``."""
        sig, offsets, seen = self._index[target]
        return sig[0], offsets, seen

    @staticmethod
    def _open(target: Path, label: str) -> BinaryIO:
        try:
            return target.open("rb")
        except (FileNotFoundError, NotADirectoryError):
            raise FolderError(f"folder {label!r} does not exist at {target}") from None
        except OSError as exc:
            raise FolderError(f"cannot read {target}: {exc.strerror}") from None

    def _meta(
        self, decoded: tuple[bytes, frozenset[str], datetime | None, dict[str, str]], seen: Counter[str]
    ) -> tuple[MessageMeta, bytes]:
        raw, flags, date, extra = decoded
        meta = MessageMeta(
            id=_mbox_key(raw, seen),
            size=crlf_size(raw),
            flags=flags,
            internal_date=date,
            message_id=message_id_from_header_block(raw[:HEADER_PROBE_LIMIT]),
            extra=extra,
        )
        return meta, raw

    def entries(self, target: Path, label: str) -> Iterator[tuple[MessageMeta, bytes]]:
        """Every live message of ``target`` in file order; records the offset index
        once the file has been read to its end. FolderError when it cannot be read."""
        seen: Counter[str] = Counter()
        offsets: dict[str, tuple[int, int]] = {}
        with self._open(target, label) as fh:
            sig = file_signature(fh)
            for from_line, content, start, end in scan_mbox(fh):
                decoded = self._decode(from_line, content)
                if decoded is None:
                    continue
                meta, raw = self._meta(decoded, seen)
                offsets[meta.id] = (start, end)
                yield meta, raw
        self._index[target] = (sig, offsets, seen)

    def fetch(self, target: Path, label: str, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """The messages of ``msgs`` still in ``target`` (vanished ids are skipped)."""
        wanted = {m.id for m in msgs}
        cached = self._index.get(target)
        if cached is not None:
            sig, offsets, _ = cached
            with self._open(target, label) as fh:
                if file_signature(fh) == sig and all(i in offsets for i in wanted):
                    got = list(self._fetch_at(fh, offsets, sorted(wanted, key=lambda i: offsets[i])))
                    if all(g is not None for g in got):
                        yield from (g for g in got if g is not None)
                        return
        for meta, raw in self.entries(target, label):
            if meta.id in wanted:
                yield meta, raw

    def _fetch_at(
        self, fh: BinaryIO, offsets: dict[str, tuple[int, int]], ids: list[str]
    ) -> Iterator[tuple[MessageMeta, bytes] | None]:
        """Entries at the indexed offsets; None for one that no longer matches its id."""
        for msg_id in ids:
            start, end = offsets[msg_id]
            entry = read_mbox_entry(fh, start, end)
            decoded = self._decode(*entry) if entry is not None else None
            if decoded is None:
                yield None
                continue
            seq = int(msg_id.rsplit("-", 1)[1])
            meta, raw = self._meta(decoded, Counter({msg_id.rsplit("-", 1)[0]: seq - 1}))
            yield (meta, raw) if meta.id == msg_id else None


class MboxStore:
    """mbox files: one file (INBOX only) or a Thunderbird directory tree."""

    capabilities = Capabilities(forbidden_name_chars="/", append_returns_id=True)

    def __init__(self, root: Path, role: Role, single_file: bool):
        self.root = root
        self.role = role
        self.single_file = single_file
        self._counts: dict[Path, tuple[int, Counter[str]]] = {}  # file -> (size, hash counts)
        self._reader = MboxReader(_decode_plain)

    def __repr__(self) -> str:
        return f"MboxStore({str(self.root)!r}, {self.role})"

    # -- paths
    def _existing_inbox(self) -> Path | None:
        if not self.root.is_dir():
            return None
        for entry in sorted(os.listdir(self.root)):
            if entry.upper() == "INBOX" and (self.root / entry).is_file():
                return self.root / entry
        return None

    def _file(self, path: FolderPath) -> Path:
        """File of ``path``; raises FolderError for names that cannot be file names."""
        if not path:
            raise FolderError("empty folder path")
        if self.single_file:
            if path != INBOX and not (len(path) == 1 and path[0].upper() == "INBOX"):
                raise FolderError(f"{self.root} is a single mbox file: it holds only INBOX")
            return self.root
        for part in path:
            if (
                not part
                or part.startswith(".")
                or "/" in part
                or "\0" in part
                or part.lower().endswith((".msf", ".sbd"))
            ):
                raise FolderError(f"folder name part {part!r} cannot be stored as an mbox file name")
        if len(path) == 1 and path[0].upper() == "INBOX":
            return self._existing_inbox() or self.root / "Inbox"
        top = "Inbox" if path[0].upper() == "INBOX" else path[0]
        if path[0].upper() == "INBOX" and (inbox := self._existing_inbox()):
            top = inbox.name
        parts = (top, *path[1:])
        return self.root.joinpath(*[p + ".sbd" for p in parts[:-1]], parts[-1])

    def _walk(self, directory: Path, prefix: FolderPath) -> Iterator[FolderPath]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.lower().endswith(".msf"):
                continue
            if entry.is_dir() and name.endswith(".sbd") and len(name) > 4:
                yield from self._walk(Path(entry.path), (*prefix, name[:-4]))
            elif entry.is_file() and _looks_like_mbox(Path(entry.path)):
                yield (*prefix, name)

    # -- Source
    def list_folders(self) -> list[FolderInfo]:
        """Every folder file (and containers for .sbd directories without one). Read-only."""
        if self.single_file:
            return [_folder(INBOX)] if self.root.is_file() else []
        paths = [(("INBOX", *p[1:]) if p[0].upper() == "INBOX" else p) for p in self._walk(self.root, ())]
        return _with_containers(paths)

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        """The folder at ``path`` if its file exists, else None. Read-only."""
        try:
            target = self._file(path)
        except FolderError:
            return None
        return _folder(path) if target.is_file() else None

    def _entries(self, folder: FolderInfo) -> Iterator[tuple[MessageMeta, bytes]]:
        target = self._file(folder.path)
        yield from self._reader.entries(target, "/".join(folder.path))
        size, _, seen = self._reader.state(target)
        self._counts[target] = (size, seen)

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every message of the folder file. Read-only. FolderError if the file is gone."""
        return [meta for meta, _ in self._entries(folder)]

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """Exact bytes of ``msgs``; vanished ones are skipped. Read-only. Seeks to the
        offsets the last listing saw while the file is unchanged, else reads it through."""
        target = self._file(folder.path)
        yield from self._reader.fetch(target, "/".join(folder.path), msgs)

    def close(self) -> None:
        """Nothing to release. Idempotent."""

    # -- Destination
    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        """Create the folder file (and parent files and .sbd directories) unless it
        exists. Idempotent. FolderError for unstorable names or OS errors."""
        target = self._file(path)
        try:
            if not self.single_file:
                self.root.mkdir(parents=True, exist_ok=True)
                for i in range(1, len(path)):
                    parent = self._file(path[:i])
                    parent.touch(exist_ok=True)
                    parent.with_name(parent.name + ".sbd").mkdir(exist_ok=True)
            if not target.exists():
                target.touch()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise QuotaError(f"cannot create {target}: {exc.strerror}") from None
            raise FolderError(f"cannot create {target}: {exc.strerror}") from None
        return _folder(path)

    def _hash_counts(self, target: Path, folder: FolderInfo) -> Counter[str]:
        size = target.stat().st_size
        cached = self._counts.get(target)
        if cached is None or cached[0] != size:
            for _ in self._entries(folder):
                pass
        return self._counts[target][1]

    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        """Append ``items`` at the end of the folder file (mboxrd-quoted, flags in
        Status/X-Status/X-Keywords, internal date in the From_ line, UTC), then fsync.
        Returns the content-hash ids. QuotaError when the disk is full, MessageError on
        other write errors (the file is truncated back to its previous end)."""
        self.ensure_folder(folder.path)
        target = self._file(folder.path)
        counts = Counter(self._hash_counts(target, folder))
        ids: list[str | None] = []
        chunks: list[bytes] = []
        for meta, raw in items:
            chunks.append(_from_line(meta.internal_date) + _quote(encode_mbox_entry(raw, meta.flags)) + b"\n")
            ids.append(_mbox_key(raw, counts))
        try:
            with target.open("r+b") as fh:
                fh.seek(0, os.SEEK_END)
                start = fh.tell()
                lead = _separator_needed(fh, start)
                try:
                    fh.write(lead + b"".join(chunks))
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError:
                    fh.truncate(start)
                    raise
                end = fh.tell()
        except OSError as exc:
            raise _write_error(exc, f"cannot append to {target}") from None
        self._counts[target] = (end, counts)
        return ids


def _separator_needed(fh: BinaryIO, size: int) -> bytes:
    """Bytes to write before a new From_ line so that it follows a blank line."""
    if size == 0:
        return b""
    fh.seek(max(0, size - 2))
    tail = fh.read()
    fh.seek(size)
    if tail.endswith(b"\n\n") or (size == 1 and tail == b"\n"):
        return b""
    return b"\n" if tail.endswith(b"\n") else b"\n\n"


def _looks_like_mbox(path: Path) -> bool:
    """An empty file or one starting with "From " (skips Thunderbird's .dat/.html files)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(5)
    except OSError:
        return False
    return head in (b"", b"From ")


def open_mbox(account: Account, role: Role) -> MboxStore:
    """Open the mbox file or Thunderbird directory at ``account.path``. Creates nothing.
    Raises ConnectError when a source path does not exist. A destination path that
    does not exist becomes a directory of folder files on the first write."""
    if not account.path:
        raise ConnectError(f"{account.describe()}: no path given", retryable=False)
    root = Path(account.path).expanduser()
    if role == "source" and not root.exists():
        raise ConnectError(f"mbox {root} does not exist", retryable=False)
    if root.exists() and not (root.is_file() or root.is_dir()):
        raise ConnectError(f"{root} is neither an mbox file nor a directory", retryable=False)
    return MboxStore(root, role, single_file=root.is_file())
