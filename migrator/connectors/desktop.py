"""Desktop mail stores as read-only sources: Thunderbird profiles and Outlook PST files.

Thunderbird (type ``thunderbird``)
    ``account.path`` is a profile directory (the one holding ``prefs.js``), its
    ``Mail/`` or ``ImapMail/`` directory, or one account's folder directory (e.g.
    ``Mail/Local Folders``). Each account directory is an mbox tree: one file per
    folder, subfolders in ``<name>.sbd/``. Index and side files (``.msf``, ``.dat``,
    ``.json``, ``.html``, ...) and files that are not mbox files are skipped.

    Which trees: from a profile, every directory under ``Mail/``: "Local Folders" and
    the POP3 accounts' directories. RSS accounts (a ``feeds.json``/``feeds.rdf`` in the
    directory) and "smart mailboxes" are skipped. ``ImapMail/`` is skipped: it is only
    Thunderbird's offline cache of IMAP servers, often partial, and those mailboxes
    are migrated from the IMAP server itself. Point ``path`` at ``ImapMail/`` (or one
    of its server directories) to read a cache anyway.

    Folder names are kept. Trees are read in this order: the default account's
    (or the account its mail is deferred to, Thunderbird's "global inbox"), the other
    POP3 accounts in the account manager's order, then "Local Folders" and any other
    directory (``prefs.js`` gives the order; without it: by name, "Local Folders"
    last). A folder keeps its own path unless an earlier tree already holds a folder
    of that path; only then does it get its tree's name as a top-level prefix
    (``("Local Folders", "Trash")``; the account's name from ``prefs.js`` when there
    is one). So a one-account profile reads as plain ``INBOX``, ``Sent``, ...

    Thunderbird's metadata lines: when it stores a message Thunderbird writes, at the
    top of the header block, ``X-Mozilla-Account-Key`` and ``X-UIDL`` (POP3
    downloads only), then ``X-Mozilla-Status``, ``X-Mozilla-Status2`` and
    ``X-Mozilla-Keys``. Exactly that run of lines is removed from the bytes returned
    (it is not part of the message as it was received); the same names anywhere
    else in a message stay. Messages are stored with the platform's line ending (LF
    on Linux and macOS); a message without any CRLF is returned with LF turned into
    CRLF, as it was on the wire. So a message Thunderbird downloaded is returned
    byte-identical to the same message still on the POP3 server: same Message-ID,
    same size, same content hash, which is what lets a merge of the POP3 INBOX and
    the Thunderbird Inbox copy each message once. The POP3 UIDL, when Thunderbird
    recorded it, is in ``MessageMeta.extra["uidl"]``.

    Flags: ``X-Mozilla-Status`` 0x0001 \\Seen, 0x0002 \\Answered, 0x0004 \\Flagged,
    0x1000 $Forwarded; ``X-Mozilla-Status2`` 0x00200000 \\Deleted (IMAP cache),
    0x00800000 $MDNSent, old labels 1-7 (bits 25-27) ``$label1``..; every word of
    ``X-Mozilla-Keys`` is a keyword (tags: ``$label1``, ``todo``, ...). Not copied:
    0x0008 (expunged: Thunderbird leaves deleted messages in the file until it
    compacts the folder) and 0x0400 (partial: only the headers were downloaded; the
    full message is still on the server; a warning counts them).

    Internal date: the From_ line's date. Thunderbird up to 115 wrote
    ``From - <ctime>`` in the local time of the machine it ran on (``From - Mon Jan
    1 00:00:00 2024``), newer ones write UTC (``From - Mon Jan 01 00:00:00 2024``);
    both are read as UTC, so dates from old profiles may be off by the profile's UTC
    offset. Without a usable From_ line the Date header is used.

    Escaping: Thunderbird 128 and later write mboxrd (">From " gets one more ">") and
    reading removes one ">"; older versions only turned "From " into ">From ", so a
    line that was ">From " in the original comes back as "From " (mboxo is ambiguous).

    Ids are content hashes of the returned bytes (numbered when a folder holds the
    same bytes twice, expunged and partial messages not counted): stable across runs,
    flag changes and compaction.

PST (type ``pst``): see ``PstStore``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from migrator.connectors.base import Role
from migrator.connectors.local import (
    ANSWERED,
    DELETED,
    FLAGGED,
    SEEN,
    MboxReader,
    _folder,
    _from_line_date,
    _header_end,
    _header_name,
    _lines,
    _looks_like_mbox,
    _with_containers,
)
from migrator.errors import ConnectError, FolderError
from migrator.model import Account, Capabilities, FolderInfo, FolderPath, MessageMeta

__all__ = ["PstStore", "ThunderbirdStore", "decode_thunderbird_entry", "open_pst", "open_thunderbird"]

log = logging.getLogger(__name__)

INBOX: FolderPath = ("INBOX",)

# ------------------------------------------------------------------ Thunderbird

SKIP_SUFFIXES = (".msf", ".dat", ".json", ".html", ".htm", ".rdf", ".sqlite", ".log", ".tmp", ".bak", ".mozmsgs")
SKIP_TREES = ("smart mailboxes",)
RSS_MARKERS = ("feeds.json", "feeds.rdf", "feeditems.json", "feeditems.rdf")
# The run of lines Thunderbird writes at the top of a stored message, in its order.
TB_PREFIX = (b"x-mozilla-account-key", b"x-uidl", b"x-mozilla-status", b"x-mozilla-status2", b"x-mozilla-keys")
TB_META = frozenset(TB_PREFIX[2:])
EXPUNGED = 0x0008
PARTIAL = 0x0400
STATUS_FLAGS = {0x0001: SEEN, 0x0002: ANSWERED, 0x0004: FLAGGED, 0x1000: "$Forwarded"}
STATUS2_FLAGS = {0x00200000: DELETED, 0x00800000: "$MDNSent"}
LABEL_SHIFT = 25  # old-style labels 1..7 in bits 25-27 of the combined flags


@dataclass(frozen=True, slots=True)
class TbDecoded:
    """One Thunderbird mbox entry: the message bytes (metadata lines removed) or why
    it is not a live message."""

    raw: bytes
    flags: frozenset[str]
    uidl: str | None = None
    skip: str | None = None  # "expunged" / "partial": not copied


def _header_value(lines: list[bytes], i: int, end: int) -> tuple[bytes, int]:
    """Value of the header at line ``i`` (unfolded) and the index after it."""
    value = lines[i].partition(b":")[2]
    j = i + 1
    while j < end and lines[j][:1] in (b" ", b"\t"):
        value += lines[j]
        j += 1
    return value.strip(), j


def _hex(value: bytes | None) -> int:
    try:
        return int(value, 16) if value else 0
    except ValueError:
        return 0


def decode_thunderbird_entry(content: bytes) -> TbDecoded:
    """Split one entry's content (unquoted, without From_ line and separator) into the
    message as received and Thunderbird's metadata. See the module docstring."""
    lines = _lines(content)
    end = _header_end(lines)
    fields: dict[bytes, bytes] = {}
    i = 0
    for name in TB_PREFIX:
        if i < end and _header_name(lines[i]) == name:
            fields[name], i = _header_value(lines, i, end)
        elif name == b"x-mozilla-status":
            break  # no X-Mozilla-Status where Thunderbird puts it: not its prefix
    if b"x-mozilla-status" in fields:
        body = b"".join(lines[i:])
    else:  # written by something else: read flags wherever they are, keep the bytes
        fields = {}
        i = 0
        while i < end:
            name = _header_name(lines[i])
            if name in TB_META and name not in fields:
                fields[name], i = _header_value(lines, i, end)
            else:
                i += 1
        body = content
    status = _hex(fields.get(b"x-mozilla-status")) & 0xFFFF
    status2 = _hex(fields.get(b"x-mozilla-status2"))
    flags = {flag for bit, flag in STATUS_FLAGS.items() if status & bit}
    flags |= {flag for bit, flag in STATUS2_FLAGS.items() if status2 & bit}
    label = (status2 >> LABEL_SHIFT) & 0x7
    if label:
        flags.add(f"$label{label}")
    keys = fields.get(b"x-mozilla-keys", b"").decode("utf-8", "surrogateescape")
    flags |= set(keys.split())
    if b"\r\n" not in body:
        body = body.replace(b"\n", b"\r\n")
    uidl = fields.get(b"x-uidl")
    skip = "expunged" if status & EXPUNGED else "partial" if status & PARTIAL else None
    return TbDecoded(body, frozenset(flags), uidl.decode("utf-8", "replace") if uidl else None, skip)


def _date_header(raw: bytes) -> datetime | None:
    lines = _lines(raw[:65536])
    end = _header_end(lines)
    for i in range(end):
        if _header_name(lines[i]) == b"date":
            value, _ = _header_value(lines, i, end)
            try:
                date = parsedate_to_datetime(value.decode("ascii", "replace"))
            except (TypeError, ValueError, IndexError):
                return None
            return date if date.tzinfo else date.replace(tzinfo=UTC)
    return None


@dataclass(frozen=True, slots=True)
class TbTree:
    """One account's folder directory and the label used if its folders need a prefix."""

    label: str
    directory: Path


def _read_prefs(profile: Path) -> dict[str, str]:
    """``user_pref("name", value);`` lines of prefs.js (string values unescaped)."""
    try:
        text = (profile / "prefs.js").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    prefs: dict[str, str] = {}
    for match in re.finditer(r'^\s*user_pref\("((?:[^"\\]|\\.)*)",\s*(.*?)\);\s*$', text, re.M):
        value = match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        prefs[match.group(1)] = value
    return prefs


def _is_tree(directory: Path) -> bool:
    """Holds at least one folder file or .sbd directory (an account's mail directory)."""
    try:
        with os.scandir(directory) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir() and e.name.endswith(".sbd"):
                    return True
                if e.is_file() and _is_folder_file(Path(e.path)):
                    return True
    except OSError:
        return False
    return False


def _is_folder_file(path: Path) -> bool:
    return not path.name.lower().endswith(SKIP_SUFFIXES) and _looks_like_mbox(path)


def _skip_tree(directory: Path) -> bool:
    return directory.name.lower() in SKIP_TREES or any((directory / m).exists() for m in RSS_MARKERS)


def _subtrees(container: Path) -> list[Path]:
    try:
        dirs = sorted(p for p in container.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [d for d in dirs if not d.name.endswith(".sbd") and not _skip_tree(d) and _is_tree(d)]


def _server_dir(profile: Path, prefs: dict[str, str], server: str) -> Path | None:
    rel = prefs.get(f"mail.server.{server}.directory-rel", "")
    if rel.startswith("[ProfD]"):
        return profile / rel[len("[ProfD]") :]
    absolute = prefs.get(f"mail.server.{server}.directory")
    if absolute:
        return profile / "Mail" / re.split(r"[\\/]", absolute.rstrip("\\/"))[-1]  # a profile copied from elsewhere
    return None


def _profile_trees(profile: Path) -> list[TbTree]:
    """Mail/ trees of a profile in reading order (see the module docstring)."""
    mail = profile / "Mail"
    found = _subtrees(mail)
    prefs = _read_prefs(profile)
    accounts = [a.strip() for a in prefs.get("mail.accountmanager.accounts", "").split(",") if a.strip()]
    default = prefs.get("mail.accountmanager.defaultaccount", "")
    if default in accounts:
        accounts.remove(default)
        accounts.insert(0, default)
    ordered: list[tuple[int, Path, str]] = []  # (rank, directory, label)
    for account in accounts:
        server = prefs.get(f"mail.account.{account}.server")
        if not server:
            continue
        kind = prefs.get(f"mail.server.{server}.type", "")
        directory = _server_dir(profile, prefs, server)
        label = prefs.get(f"mail.server.{server}.name") or (directory.name if directory else server)
        if directory is None:
            continue
        rank = 1 if kind == "pop3" else 2
        if account == default:
            rank = 0
            target = prefs.get(f"mail.server.{server}.deferred_to_account")
            deferred_server = prefs.get(f"mail.account.{target}.server") if target else None
            deferred_dir = _server_dir(profile, prefs, deferred_server) if deferred_server else None
            if deferred_dir is not None:
                ordered.append((0, deferred_dir, prefs.get(f"mail.server.{deferred_server}.name") or deferred_dir.name))
        ordered.append((rank, directory, label))
    trees: list[TbTree] = []
    seen: set[Path] = set()
    for _, directory, label in sorted(ordered, key=lambda t: t[0]):
        resolved = directory.resolve()
        if resolved in seen or not any(resolved == d.resolve() for d in found):
            continue
        seen.add(resolved)
        trees.append(TbTree(label, directory))
    rest = [d for d in found if d.resolve() not in seen]
    rest.sort(key=lambda d: (d.name == "Local Folders", d.name))
    return trees + [TbTree(d.name, d) for d in rest]


def thunderbird_trees(path: Path) -> list[TbTree]:
    """The account folder trees under ``path`` in reading order (module docstring)."""
    if (path / "prefs.js").is_file() or ((path / "Mail").is_dir() and not _is_tree(path)):
        return _profile_trees(path)
    if _is_tree(path):
        return [TbTree(path.name, path)]
    subtrees = sorted(_subtrees(path), key=lambda d: (d.name == "Local Folders", d.name))  # Mail/ or ImapMail/
    return [TbTree(d.name, d) for d in subtrees]


def _walk(directory: Path, prefix: FolderPath) -> Iterator[tuple[FolderPath, Path]]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        if entry.is_dir():
            if name.endswith(".sbd") and len(name) > 4:
                yield from _walk(Path(entry.path), (*prefix, name[:-4]))
        elif entry.is_file() and _is_folder_file(Path(entry.path)):
            yield (*prefix, name), Path(entry.path)


def _normal(path: FolderPath) -> FolderPath:
    return ("INBOX", *path[1:]) if path[0].upper() == "INBOX" else path


def map_folders(trees: Sequence[TbTree]) -> dict[FolderPath, Path]:
    """Folder path -> mbox file for every folder of ``trees``; a path an earlier tree
    already holds gets the tree's label as a top-level prefix."""
    mapping: dict[FolderPath, Path] = {}
    for tree in trees:
        for found, file in _walk(tree.directory, ()):
            path = _normal(found)
            if path in mapping:
                path = (tree.label, *found)
                n = 2
                while path in mapping:
                    path = (f"{tree.label} ({n})", *path[1:])
                    n += 1
            mapping[path] = file
    return mapping


class ThunderbirdStore:
    """A Thunderbird profile's mail folders as a read-only Source (module docstring)."""

    capabilities = Capabilities()

    def __init__(self, root: Path, trees: list[TbTree]):
        self.root = root
        self.trees = trees
        self._files: dict[FolderPath, Path] | None = None
        self._skipped: dict[FolderPath, dict[str, int]] = {}
        self._counts: dict[str, int] = {}  # entries of the current read that are not live, by reason
        self._reader = MboxReader(self._decode)

    def __repr__(self) -> str:
        return f"ThunderbirdStore({str(self.root)!r})"

    def _decode(
        self, from_line: bytes, content: bytes
    ) -> tuple[bytes, frozenset[str], datetime | None, dict[str, str]] | None:
        entry = decode_thunderbird_entry(content)
        if entry.skip:
            self._counts[entry.skip] = self._counts.get(entry.skip, 0) + 1
            return None
        date = _from_line_date(from_line)
        if date is None or date.year < 1980:
            date = _date_header(entry.raw) or date
        return entry.raw, entry.flags, date, ({"uidl": entry.uidl} if entry.uidl else {})

    def folder_files(self) -> dict[FolderPath, Path]:
        if self._files is None:
            self._files = map_folders(self.trees)
        return self._files

    def list_folders(self) -> list[FolderInfo]:
        """Every folder (and containers for .sbd directories without a file). Read-only."""
        self._files = map_folders(self.trees)
        return _with_containers(self._files)

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        """The folder at ``path`` if it exists, else None. Read-only."""
        return _folder(path) if _normal(path) in self.folder_files() else None

    def _file(self, folder: FolderInfo) -> Path:
        file = self.folder_files().get(_normal(folder.path))
        if file is None:
            raise FolderError(f"folder {'/'.join(folder.path)!r} does not exist in {self.root}")
        return file

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every live message of the folder (expunged and partial ones are skipped and
        counted in a warning). Read-only. FolderError when the folder is gone."""
        self._counts = counts = {}
        metas = [meta for meta, _ in self._reader.entries(self._file(folder), "/".join(folder.path))]
        if counts.get("partial"):
            log.warning(
                "%s: %d message(s) of folder %r were only partly downloaded by Thunderbird (headers only); "
                "they are not copied (the full messages are on the mail server)",
                self.root,
                counts["partial"],
                "/".join(folder.path),
            )
        self._skipped[folder.path] = counts
        return metas

    def skipped(self, folder: FolderInfo) -> dict[str, int]:
        """Entries of the last listing of ``folder`` that are not live messages, by reason."""
        return dict(self._skipped.get(folder.path, {}))

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """Bytes of ``msgs`` (metadata lines removed, CRLF); vanished ones are skipped."""
        self._counts = {}
        yield from self._reader.fetch(self._file(folder), "/".join(folder.path), msgs)

    def close(self) -> None:
        """Nothing to release. Idempotent."""


def _read_only(account: Account, what: str) -> ConnectError:
    return ConnectError(
        f"{account.describe()}: {what} can only be a source (it is read, never written); "
        "use imap, ews, exchange-online, maildir or mbox as the destination",
        retryable=False,
    )


def open_thunderbird(account: Account, role: Role) -> ThunderbirdStore:
    """Open the Thunderbird profile (or Mail/, ImapMail/ or account directory) at
    ``account.path`` as a source. Reads nothing but the directory tree. Raises
    ConnectError (not retryable) for the destination role, a missing or non-directory
    path, or a directory holding no Thunderbird mail folders."""
    if role != "source":
        raise _read_only(account, "a Thunderbird profile")
    if not account.path:
        raise ConnectError(f"{account.describe()}: no path given", retryable=False)
    root = Path(account.path).expanduser()
    if not root.exists():
        raise ConnectError(f"Thunderbird profile {root} does not exist", retryable=False)
    if not root.is_dir():
        raise ConnectError(
            f"{root} is a file; a Thunderbird profile is a directory (for one mbox file use type mbox)",
            retryable=False,
        )
    trees = thunderbird_trees(root)
    if not trees:
        raise ConnectError(
            f"no Thunderbird mail folders under {root} (expected a profile with Mail/, or an account's "
            "folder directory holding mbox files)",
            retryable=False,
        )
    return ThunderbirdStore(root, trees)


# -------------------------------------------------------------------------- PST

PR_MESSAGE_CLASS = 0x001A
PR_INTERNET_MESSAGE_ID = 0x1035
PR_MESSAGE_FLAGS = 0x0E07
PR_LAST_VERB_EXECUTED = 0x1081
PR_FLAG_STATUS = 0x1090
PR_INTERNET_CPID = 0x3FDE
PR_CONTAINER_CLASS = 0x3613
PR_SENDER_NAME = 0x0C1A
PR_SENDER_EMAIL = 0x0C1F
PR_SENDER_SMTP = 0x5D01
PR_SENT_REPR_NAME = 0x0042
PR_SENT_REPR_EMAIL = 0x0065
PR_DISPLAY_NAME = 0x3001
PR_EMAIL_ADDRESS = 0x3003
PR_SMTP_ADDRESS = 0x39FE
PR_RECIPIENT_TYPE = 0x0C15
PR_ATTACH_METHOD = 0x3705
PR_ATTACH_FILENAME = 0x3704
PR_ATTACH_LONG_FILENAME = 0x3707
PR_ATTACH_MIME_TAG = 0x370E
PR_ATTACH_CONTENT_ID = 0x3712
STORE_ENTRY_IDS = {0x35E3: "\\Trash", 0x35E4: "\\Sent"}  # message store: wastebasket, sent items
PST_SPECIAL_NAMES = {
    "sent items": "\\Sent",
    "deleted items": "\\Trash",
    "drafts": "\\Drafts",
    "junk e-mail": "\\Junk",
    "junk email": "\\Junk",
    "archive": "\\Archive",
}
NOT_MAIL_CLASSES = ("ipm.appointment", "ipm.contact", "ipm.distlist", "ipm.task", "ipm.stickynote", "ipm.activity")
MAIL_CONTAINERS = ("", "ipf.note", "ipf.imap")
DROPPED_HEADERS = {"mime-version", "content-type", "content-transfer-encoding", "content-class", "x-mimeole"}
CODEPAGES = {65001: "utf-8", 20127: "us-ascii", 20866: "koi8-r", 21866: "koi8-u", 932: "shift_jis", 936: "gbk"}
CODEPAGES |= {949: "cp949", 950: "big5", 50220: "iso-2022-jp", 51932: "euc-jp", 51949: "euc-kr", 54936: "gb18030"}
CODEPAGES |= {28590 + n: f"iso-8859-{n}" for n in range(1, 16)} | {c: f"cp{c}" for c in range(1250, 1259)}
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


@dataclass(frozen=True, slots=True)
class PstPart:
    """One leaf of a message rebuilt from PST properties."""

    content_type: str  # "text/plain; charset=utf-8"
    data: bytes
    filename: str | None = None
    content_id: str | None = None
    disposition: str | None = None  # "attachment" / "inline" / None


@dataclass(frozen=True, slots=True)
class PstMessage:
    """What a PST holds of one e-mail, enough to rebuild its MIME bytes."""

    headers: bytes  # transport headers as received (CRLF), or b"" for mail composed in Outlook
    subject: str = ""
    sender: str = ""  # "Name <addr>" or ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    date: datetime | None = None
    message_id: str | None = None
    text: bytes | None = None  # UTF-8
    html: bytes | None = None
    html_charset: str = "utf-8"
    attachments: tuple[PstPart, ...] = ()


def _fold_address(name: str, addr: str) -> str:
    from email.errors import HeaderParseError
    from email.headerregistry import Address
    from email.utils import formataddr

    if addr and "@" in addr:
        try:
            Address(addr_spec=addr)
        except (ValueError, IndexError, HeaderParseError):
            return formataddr((name, "")) if name else addr
        return formataddr((name, addr), charset="utf-8")
    return name or addr


def _encode_header(name: str, value: str) -> bytes:
    from email.header import Header

    if value.isascii():
        return f"{name}: {value}\r\n".encode()
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}\r\n".encode()


def _filter_headers(block: bytes) -> bytes:
    """Transport headers without the MIME structure headers of the original (the body
    is rebuilt) and without lines that are not header fields."""
    out: list[bytes] = []
    keep = False
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.strip():
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        keep = (
            bool(_HEADER_LINE.match(line))
            and line.split(b":", 1)[0].strip().lower().decode("ascii", "replace") not in DROPPED_HEADERS
        )
        if keep:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out)


def _leaf(part: PstPart) -> bytes:
    import base64
    import quopri

    head = f"Content-Type: {part.content_type}"
    if part.filename:
        head += f'; name="{part.filename}"' if part.filename.isascii() else ""
    lines = [head.encode("utf-8")]
    text = part.content_type.startswith("text/")
    if (
        text
        and part.data.isascii()
        and all(len(x) <= 998 for x in part.data.split(b"\n"))
        and b"\r" not in part.data.replace(b"\r\n", b"")
    ):
        body, cte = part.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), "7bit"
    elif text:
        body, cte = quopri.encodestring(part.data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n"), "quoted-printable"
    else:
        encoded = base64.encodebytes(part.data)
        body, cte = encoded.replace(b"\n", b"\r\n"), "base64"
    lines.append(f"Content-Transfer-Encoding: {cte}".encode())
    if part.content_id:
        lines.append(f"Content-ID: <{part.content_id.strip('<>')}>".encode())
    if part.disposition or part.filename:
        disposition = part.disposition or "attachment"
        if part.filename:
            from email.utils import encode_rfc2231

            fn = part.filename
            param = f'filename="{fn}"' if fn.isascii() and '"' not in fn else f"filename*={encode_rfc2231(fn, 'utf-8')}"
            disposition += "; " + param
        lines.append(f"Content-Disposition: {disposition}".encode())
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    import hashlib

    boundary = "=_pst_" + hashlib.sha256(b"".join(parts)).hexdigest()[:24]
    body = (
        b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode() + body


def build_pst_mime(msg: PstMessage) -> bytes:
    """RFC 5322 bytes of a message rebuilt from PST properties. Deterministic: the same
    properties give the same bytes (boundaries are content hashes), so sizes and ids
    stay put between runs. The header block is the transport headers as received
    (MIME structure headers dropped; Date, From, Subject and Message-ID added from
    the properties when they lack them) or, for mail composed in Outlook, From/To/Cc/
    Subject/Date/Message-ID made from the properties."""
    from email.utils import format_datetime

    if msg.headers:
        head = _filter_headers(msg.headers)
        have = {line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")}
        # fields the transport headers lack (as readpst adds them), from the properties
        if msg.date is not None and b"date" not in have:
            head += _encode_header("Date", format_datetime(msg.date.astimezone(UTC)))
        if msg.sender and b"from" not in have:
            head += _encode_header("From", msg.sender)
        if msg.subject and b"subject" not in have:
            head += _encode_header("Subject", msg.subject)
        if msg.message_id and b"message-id" not in have:
            head += _encode_header("Message-ID", msg.message_id)
    else:
        head = b""
        if msg.date is not None:
            head += _encode_header("Date", format_datetime(msg.date.astimezone(UTC)))
        if msg.sender:
            head += _encode_header("From", msg.sender)
        if msg.to:
            head += _encode_header("To", ", ".join(msg.to))
        if msg.cc:
            head += _encode_header("Cc", ", ".join(msg.cc))
        head += _encode_header("Subject", msg.subject)
        if msg.message_id:
            head += _encode_header("Message-ID", msg.message_id)
    bodies: list[PstPart] = []
    if msg.text is not None or msg.html is None:
        bodies.append(PstPart("text/plain; charset=utf-8", msg.text or b""))
    if msg.html is not None:
        bodies.append(PstPart(f"text/html; charset={msg.html_charset}", msg.html))
    body = _multipart("alternative", [_leaf(p) for p in bodies]) if len(bodies) > 1 else _leaf(bodies[0])
    if msg.attachments:
        body = _multipart("mixed", [body] + [_leaf(a) for a in msg.attachments])
    return head + b"MIME-Version: 1.0\r\n" + body


def _props(item: object) -> dict[int, object]:
    """entry type -> record entry of a pypff item's first record set."""
    out: dict[int, object] = {}
    try:
        sets = list(item.record_sets)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return out
    for rs in sets[:1]:
        for e in rs.entries:
            out.setdefault(e.entry_type, e)
    return out


def _pstr(props: dict[int, object], key: int) -> str:
    e = props.get(key)
    if e is None:
        return ""
    try:
        return (e.data_as_string or "").strip("\x00")  # type: ignore[attr-defined]
    except (OSError, TypeError, ValueError):
        return ""


def _pint(props: dict[int, object], key: int) -> int:
    e = props.get(key)
    if e is None:
        return 0
    try:
        return int(e.data_as_integer or 0)  # type: ignore[attr-defined]
    except (OSError, TypeError, ValueError):
        return 0


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.year < 1980:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _pst_flags(props: dict[int, object]) -> frozenset[str]:
    """PR_MESSAGE_FLAGS read (0x1) \\Seen, unsent (0x8) \\Draft; PR_FLAG_STATUS 2
    \\Flagged; PR_LAST_VERB_EXECUTED reply (102, 103) \\Answered, forward (104) $Forwarded."""
    flags = set()
    mflags = _pint(props, PR_MESSAGE_FLAGS)
    if mflags & 0x1:
        flags.add(SEEN)
    if mflags & 0x8:
        flags.add("\\Draft")
    if _pint(props, PR_FLAG_STATUS) == 2:
        flags.add(FLAGGED)
    verb = _pint(props, PR_LAST_VERB_EXECUTED)
    if verb in (102, 103):
        flags.add(ANSWERED)
    elif verb == 104:
        flags.add("$Forwarded")
    return frozenset(flags)


def _recipients(message: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    to: list[str] = []
    cc: list[str] = []
    try:
        sets = list(message.recipients.record_sets)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return (), ()
    for rs in sets:
        props = {e.entry_type: e for e in rs.entries}
        addr = _pstr(props, PR_SMTP_ADDRESS) or _pstr(props, PR_EMAIL_ADDRESS)
        who = _fold_address(_pstr(props, PR_DISPLAY_NAME), addr)
        kind = _pint(props, PR_RECIPIENT_TYPE)
        if kind == 1:
            to.append(who)
        elif kind == 2:
            cc.append(who)
    return tuple(to), tuple(cc)


def _text(data: bytes | None, codec: str) -> bytes | None:
    """A body as UTF-8 bytes (libpff hands out Unicode bodies as UTF-8)."""
    if data is None:
        return None
    data = data.rstrip(b"\x00")
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode(codec, "replace").encode("utf-8")


def read_pst_message(message: object, depth: int = 0) -> PstMessage:
    """The properties of one pypff message (embedded messages recursively)."""
    props = _props(message)
    codec = CODEPAGES.get(_pint(props, PR_INTERNET_CPID), "cp1252")

    def get(attr: str) -> object:
        try:
            return getattr(message, attr)
        except (OSError, AttributeError):
            return None

    headers = get("transport_headers") or ""
    head = headers.encode("utf-8", "surrogateescape") if isinstance(headers, str) else bytes(headers or b"")
    if not re.search(rb"(?im)^(from|date|received|subject|message-id):", head):
        head = b""
    attachments: list[PstPart] = []
    for index in range(int(get("number_of_attachments") or 0)):
        try:
            att = message.get_attachment(index)  # type: ignore[attr-defined]
        except OSError:
            log.warning("PST message %s: attachment %d cannot be read; left out", get("identifier"), index)
            continue
        aprops = _props(att)
        name = (
            _pstr(aprops, PR_ATTACH_LONG_FILENAME)
            or _pstr(aprops, PR_ATTACH_FILENAME)
            or _pstr(aprops, PR_DISPLAY_NAME)
        )
        if _pint(aprops, PR_ATTACH_METHOD) == 5:  # an embedded message
            inner = None
            try:
                if att.number_of_sub_items and depth < 8:
                    inner = att.get_sub_item(0)
            except (OSError, AttributeError):
                inner = None
            if inner is None:
                log.warning("PST message %s: embedded message %r cannot be read; left out", get("identifier"), name)
                continue
            data = build_pst_mime(read_pst_message(inner, depth + 1))
            attachments.append(PstPart("message/rfc822", data, None, None, "attachment"))
            continue
        try:
            size = int(att.size or 0)
            data = att.read_buffer(size) if size else b""
        except OSError:
            log.warning("PST message %s: attachment %r cannot be read; left out", get("identifier"), name)
            continue
        mime = _pstr(aprops, PR_ATTACH_MIME_TAG) or "application/octet-stream"
        cid = _pstr(aprops, PR_ATTACH_CONTENT_ID) or None
        attachments.append(PstPart(mime, data, name or None, cid, "inline" if cid and not name else "attachment"))
    text = _text(get("plain_text_body"), codec)  # type: ignore[arg-type]
    html = get("html_body")
    if text is None and html is None:
        rtf = get("rtf_body")
        if rtf:
            attachments.insert(0, PstPart("application/rtf", bytes(rtf), "body.rtf", None, "attachment"))
    sender_addr = _pstr(props, PR_SENDER_SMTP) or _pstr(props, PR_SENT_REPR_EMAIL) or _pstr(props, PR_SENDER_EMAIL)
    sender_name = _pstr(props, PR_SENT_REPR_NAME) or _pstr(props, PR_SENDER_NAME)
    to, cc = _recipients(message) if not head else ((), ())
    date = _utc(get("delivery_time")) or _utc(get("client_submit_time")) or _utc(get("creation_time"))  # type: ignore[arg-type]
    return PstMessage(
        headers=head,
        subject=str(get("subject") or ""),
        sender=_fold_address(sender_name, sender_addr),
        to=to,
        cc=cc,
        date=date,
        message_id=_pstr(props, PR_INTERNET_MESSAGE_ID) or None,
        text=text,
        html=bytes(html).rstrip(b"\x00") if html else None,
        html_charset="utf-8" if codec == "utf-8" else codec,
        attachments=tuple(attachments),
    )


def _entry_nid(props: dict[int, object], key: int) -> int | None:
    e = props.get(key)
    try:
        data = bytes(e.data or b"") if e is not None else b""  # type: ignore[attr-defined]
    except OSError:
        return None
    return int.from_bytes(data[20:24], "little") if len(data) >= 24 else None


class PstStore:
    """An Outlook PST (or OST) file as a read-only Source, read with libpff
    (``pypff`` from the ``libpff-python`` package).

    Why libpff and not pst-utils' ``readpst`` (both tried on the same PST):

    * readpst writes a fresh random MIME boundary on every run (``rand()`` seeded with
      the time), so the bytes and even the size of a message change between runs: a
      re-run could not recognise what it copied. Here the bytes are rebuilt
      deterministically (boundaries are content hashes).
    * readpst keeps only the read state (``Status: RO``); here \\Seen, \\Draft,
      \\Flagged (follow-up flag), \\Answered and $Forwarded come from the properties.
    * readpst turns "/", "\\" and ":" in folder names into "_" and numbers folders of the
      same name; here names are kept exactly (a second sibling of the same name gets
      " (2)").
    * readpst gives no stable item ids (files are numbered per run) and needs a full
      export to a temporary directory (disk space as large as the PST); libpff gives
      each item's node id and reads in place.
    * readpst adds ``X-libpst-forensic-*`` headers and skips "Deleted Items" unless
      ``-D``; neither happens here.
    * Cost: libpff-python installs as a 1.9 MB manylinux wheel (a source build takes
      about a minute); pst-utils is a Debian package. readpst's MIME assembly is more
      mature; neither tool can return the original MIME bytes, because a PST does not
      keep them: Outlook stores the transport headers, the bodies and the attachments
      as properties.

    What a message is made of (``build_pst_mime``): the transport headers as received
    (the original MIME structure headers dropped), or From/To/Cc/Subject/Date/
    Message-ID from the properties for mail composed in Outlook; the plain-text body
    (UTF-8), the HTML body (its Internet code page), both as multipart/alternative;
    attachments in a multipart/mixed (embedded messages as message/rfc822; inline
    images keep their Content-ID); an RTF-only body as a ``body.rtf`` attachment.
    Categories and other named properties are not carried.

    Folders: the tree under the store's IPM subtree ("Top of Personal Folders"),
    without search folders and without calendar, contact, task, note and journal
    folders (their container class is not IPF.Note); only e-mail items (message
    classes other than appointments, contacts, tasks, notes and distribution lists)
    are listed. A top-level "Inbox" is the INBOX; Deleted Items, Sent Items (from the
    store's entry ids, else by name), Drafts, Junk E-mail and Archive get their
    special use. Internal date: delivery time, else submit time, else creation time.
    Ids: the item's node id (stable for the file). Messages that cannot be read are
    left out with a warning (``skipped`` counts them)."""

    capabilities = Capabilities()

    def __init__(self, path: Path, pst: object):
        self.path = path
        self._pst = pst
        self._tree: dict[FolderPath, tuple[tuple[int, ...], str | None]] | None = None
        self._skipped: dict[FolderPath, int] = {}

    def __repr__(self) -> str:
        return f"PstStore({str(self.path)!r})"

    def _walk_tree(self) -> dict[FolderPath, tuple[tuple[int, ...], str | None]]:
        store_props = _props(self._pst.get_message_store())  # type: ignore[attr-defined]
        special_nids = {nid: use for key, use in STORE_ENTRY_IDS.items() if (nid := _entry_nid(store_props, key))}
        root = self._pst.get_root_folder()  # type: ignore[attr-defined]
        ipm_nid = _entry_nid(store_props, 0x35E0)
        top: tuple[int, ...] = ()
        subs = list(root.sub_folders)
        for i, sub in enumerate(subs):
            if sub.identifier == ipm_nid or (ipm_nid is None and (sub.name or "").lower().startswith("top of ")):
                top = (i,)
        tree: dict[FolderPath, tuple[tuple[int, ...], str | None]] = {}
        base = root.get_sub_folder(top[0]) if top else root

        def walk(folder: object, path: FolderPath, index: tuple[int, ...]) -> None:
            names: set[str] = set()
            for i in range(folder.number_of_sub_folders):  # type: ignore[attr-defined]
                sub = folder.get_sub_folder(i)  # type: ignore[attr-defined]
                cls = _pstr(_props(sub), PR_CONTAINER_CLASS).lower()
                if cls not in MAIL_CONTAINERS and not cls.startswith("ipf.note"):
                    continue
                name = sub.name or f"Folder {sub.identifier}"
                unique, n = name, 2
                while unique.lower() in names:
                    unique, n = f"{name} ({n})", n + 1
                names.add(unique.lower())
                sub_path = (*path, unique)
                if len(sub_path) == 1 and unique.lower() == "inbox":
                    sub_path = INBOX
                use = special_nids.get(sub.identifier) or (
                    PST_SPECIAL_NAMES.get(unique.lower()) if len(sub_path) == 1 else None
                )
                tree[sub_path] = ((*index, i), use)
                walk(sub, sub_path, (*index, i))

        walk(base, (), top)
        return tree

    def _folders(self) -> dict[FolderPath, tuple[tuple[int, ...], str | None]]:
        if self._tree is None:
            self._tree = self._walk_tree()
        return self._tree

    def list_folders(self) -> list[FolderInfo]:
        """The mail folders of the PST with their special use. Read-only."""
        return [
            FolderInfo(path, use)
            for path, (_, use) in sorted(self._folders().items(), key=lambda kv: (kv[0] != INBOX, kv[0]))
        ]

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        got = self._folders().get(path)
        return FolderInfo(path, got[1]) if got else None

    def _folder_object(self, folder: FolderInfo) -> object:
        got = self._folders().get(folder.path)
        if got is None:
            raise FolderError(f"folder {'/'.join(folder.path)!r} does not exist in {self.path}")
        item = self._pst.get_root_folder()  # type: ignore[attr-defined]
        for i in got[0]:
            item = item.get_sub_folder(i)
        return item

    def _messages(self, folder: FolderInfo, wanted: set[str] | None) -> Iterator[tuple[MessageMeta, bytes]]:
        from migrator.model import crlf_size, message_id_from_header_block

        obj = self._folder_object(folder)
        bad = 0
        for i in range(obj.number_of_sub_messages):  # type: ignore[attr-defined]
            try:
                message = obj.get_sub_message(i)  # type: ignore[attr-defined]
                msg_id = str(message.identifier)
                if wanted is not None and msg_id not in wanted:
                    continue
                props = _props(message)
                if _pstr(props, PR_MESSAGE_CLASS).lower().startswith(NOT_MAIL_CLASSES):
                    continue
                parsed = read_pst_message(message)
            except OSError as exc:
                bad += 1
                log.warning(
                    "%s: message %d of folder %r cannot be read (%s); left out",
                    self.path,
                    i,
                    "/".join(folder.path),
                    exc,
                )
                continue
            raw = build_pst_mime(parsed)
            meta = MessageMeta(
                id=msg_id,
                size=crlf_size(raw),
                flags=_pst_flags(props),
                internal_date=parsed.date,
                message_id=message_id_from_header_block(raw[:65536]),
            )
            yield meta, raw
        if wanted is None:
            self._skipped[folder.path] = bad

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every e-mail of the folder (each is rebuilt to know its size). Read-only."""
        return [meta for meta, _ in self._messages(folder, None)]

    def skipped(self, folder: FolderInfo) -> int:
        """Messages of the last listing of ``folder`` that could not be read."""
        return self._skipped.get(folder.path, 0)

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """The rebuilt bytes of ``msgs``; ids no longer in the folder are skipped."""
        yield from self._messages(folder, {m.id for m in msgs})

    def close(self) -> None:
        """Close the file. Idempotent."""
        if self._pst is not None:
            with contextlib.suppress(OSError):
                self._pst.close()  # type: ignore[attr-defined]
            self._pst = None


def open_pst(account: Account, role: Role) -> PstStore:
    """Open the PST file at ``account.path`` as a source. Raises ConnectError (not
    retryable) for the destination role, a missing file, a file libpff cannot open,
    or when libpff-python is not installed."""
    if role != "source":
        raise _read_only(account, "a PST file")
    if not account.path:
        raise ConnectError(f"{account.describe()}: no path given", retryable=False)
    path = Path(account.path).expanduser()
    if not path.is_file():
        raise ConnectError(f"PST file {path} does not exist (or is not a file)", retryable=False)
    try:
        import pypff  # type: ignore[import-not-found]
    except ImportError:
        raise ConnectError(
            "reading PST files needs libpff-python: pip install 'migrator[pst]' (or libpff-python)", retryable=False
        ) from None
    pst = pypff.file()
    try:
        pst.open(str(path))
    except (OSError, ValueError) as exc:
        raise ConnectError(f"{path} cannot be opened as a PST/OST file: {exc}", retryable=False) from None
    return PstStore(path, pst)
