"""Frozen data shared by connectors, the engine and the state store.

Nothing here does I/O. Folder paths are tuples of decoded Unicode parts: never
modified UTF-7, never joined by a server's separator (encoding lives at the edge,
inside each connector).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from migrator.errors import PlanError

# IMAP system flags as they travel between connectors. Keywords are any other flag
# string (e.g. "$Forwarded", "Work"). "\\Recent" is never carried: servers refuse it.
SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
SYSTEM_FLAGS = frozenset({SEEN, ANSWERED, FLAGGED, DELETED, DRAFT})

# Special-use attributes (RFC 6154) we map between servers.
SPECIAL_USES = ("\\Sent", "\\Trash", "\\Junk", "\\Drafts", "\\Archive")

FolderPath = tuple[str, ...]
MatchKey = tuple[str, str, int]  # ("mid", message_id, size) or ("sha", content_hash, size)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a connector can do, declared as data (rclone's fs.Features).

    The engine reads these; it never probes a connector with hasattr.
    """

    folders: bool = True  # POP3: False (one folder)
    flags: bool = True  # can carry \\Seen etc.
    keywords: bool = True  # can carry arbitrary keywords
    internal_date: bool = True
    append_returns_id: bool = False  # UIDPLUS, EWS
    max_message_bytes: int | None = None
    can_delete: bool = False  # Source.delete works (move mode, POP3 after_copy: delete)
    can_set_flags: bool = False  # Destination.set_flags works (mirror mode)
    can_delete_at_destination: bool = False  # Destination.delete / delete_folder work (mirror with delete)
    incremental: bool = False  # Source.list_pages takes a cursor and returns only changes
    # The size a destination lists is the size it was given (False for a store that
    # rebuilds MIME, like Exchange: there Message-ID alone identifies a message)
    exact_sizes: bool = True
    # Destination.stored_sizes(folder, ids) exists: the sizes the store holds for ids its
    # append returned, to name a message the store altered when it stored it (see
    # connectors/base.py; only asked where exact_sizes is True)
    reports_stored_sizes: bool = False
    # Characters a single folder-name part cannot contain at this store (its
    # hierarchy separator, "/" in Maildir++ names, ...). folders.py renames such
    # parts and reports the rename.
    forbidden_name_chars: str = ""
    max_name_length: int | None = None
    # Top-level folder names the store keeps for itself (compared case-insensitively;
    # Exchange Online: Calendar, Contacts, ...). folders.py renames a mail folder
    # that would land on one, and reports it.
    reserved_names: tuple[str, ...] = ()
    # Longest line (octets, without CRLF) the store accepts in a message; longer ones
    # are re-encoded by Destination.adapt (capabilities.adapts_messages).
    max_line_length: int | None = None
    adapts_messages: bool = False  # Destination.adapt(meta, raw) exists (see connectors/base.py)
    # Connections the service allows per mailbox (Exchange Online throttles beyond a
    # few); the engine uses one source and one destination connection per mailbox.
    max_connections: int | None = None


@dataclass(frozen=True, slots=True)
class FolderInfo:
    path: FolderPath  # decoded Unicode parts, () is never valid; ("INBOX",) is the inbox
    special_use: str | None = None  # "\\Sent", "\\Trash", ... or None
    validity: int | None = None  # UIDVALIDITY or equivalent; a change invalidates ids
    selectable: bool = True  # \\Noselect containers are listed but hold no messages

    @property
    def is_inbox(self) -> bool:
        return len(self.path) == 1 and self.path[0].upper() == "INBOX"


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """One message as listed by a connector, without its body.

    ``size`` is the RFC 822 size: octets of the message with CRLF line endings
    (what IMAP's RFC822.SIZE reports). Local stores holding LF files report the
    CRLF-normalised size so that sizes compare across store types.
    """

    id: str  # native id: IMAP UID, POP3 UIDL, EWS ItemId, Maildir key, mbox offset key
    size: int
    flags: frozenset[str] = frozenset()  # system flags and keywords, never \\Recent
    internal_date: datetime | None = None  # timezone-aware
    message_id: str | None = None  # normalised: folding whitespace removed, None if absent
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def normalise_message_id(raw: str | bytes | None) -> str | None:
    """Message-ID header value without folding whitespace; None when empty or absent."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "surrogateescape")
    value = "".join(raw.split())
    return value or None


def message_id_from_header_block(block: bytes) -> str | None:
    """Extract the first Message-ID from a raw header block (handles folding, any case)."""
    lines = block.replace(b"\r\n", b"\n").split(b"\n")
    for i, line in enumerate(lines):
        if line[:11].lower() == b"message-id:":
            value = line[11:]
            for cont in lines[i + 1 :]:
                if cont[:1] in (b" ", b"\t"):
                    value += cont
                else:
                    break
            return normalise_message_id(value)
        if line == b"":
            break
    return None


def header_block(raw: bytes) -> bytes:
    """The header part of a raw message (up to the first empty line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = raw.find(sep)
        if idx >= 0:
            return raw[: idx + len(sep)]
    return raw


def crlf_size(raw: bytes) -> int:
    """Size of ``raw`` with every bare LF counted as CRLF (IMAP's RFC822.SIZE)."""
    return len(raw) + raw.count(b"\n") - raw.count(b"\r\n")


@dataclass(frozen=True, slots=True)
class Secret:
    """A password reference, resolved only when a connection is made.

    Never printed: ``repr`` and ``str`` show where it comes from, not the value.
    """

    env: str | None = None
    file: str | None = None
    value: str | None = field(default=None, repr=False)  # from a mailbox CSV or a prompt
    origin: str = ""  # "users.csv:4" etc., for error messages

    def get(self) -> str:
        if self.value is not None:
            return self.value
        if self.env is not None:
            got = os.environ.get(self.env)
            if got is None:
                where = self.origin or "password_env"
                raise PlanError(f"{where}: environment variable {self.env} is not set")
            return got
        if self.file is not None:
            try:
                return Path(self.file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise PlanError(f"{self.origin or 'password_file'}: cannot read {self.file}: {exc.strerror}") from None
        raise PlanError(f"{self.origin or 'credentials'}: no password given")

    def __str__(self) -> str:
        if self.env:
            return f"<secret from ${self.env}>"
        if self.file:
            return f"<secret from {self.file}>"
        return "<secret>"


@dataclass(frozen=True, slots=True)
class OAuth:
    """OAuth2 settings of an endpoint (Microsoft identity platform by default).

    ``flow``: "client_credentials" (app-only; ``client_secret`` required),
    "device_code" (delegated, one admin account; tokens cached in ``cache_file``) or
    "token_file" (an access token issued elsewhere, re-read on every connect)."""

    flow: Literal["client_credentials", "device_code", "token_file"]
    tenant: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    token_file: str | None = None
    authority: str | None = None  # default: https://login.microsoftonline.com/<tenant>
    scopes: tuple[str, ...] = ()  # default per protocol (IMAP, POP, EWS)
    cache_file: str | None = None
    validate_authority: bool = True  # tests point msal at a local endpoint


@dataclass(frozen=True, slots=True)
class Account:
    """One side of one mailbox job: which store, where, and as whom."""

    type: str  # "imap", "maildir", "mbox" (later "pop3", "ews", ...)
    host: str | None = None
    port: int | None = None
    security: Literal["tls", "starttls", "none"] = "tls"
    verify_tls: bool = True
    ca_file: str | None = None
    user: str | None = None
    secret: Secret | None = None
    path: str | None = None  # local stores
    timeout: float = 60.0  # seconds for any single network read or write
    options: Mapping[str, Any] = field(default_factory=dict)  # connector-specific
    oauth: OAuth | None = None  # when set, XOAUTH2 / bearer tokens instead of the password

    def describe(self) -> str:
        """A human label without secrets: ``imap://alice@host:993`` or ``maildir:/path``."""
        if self.path is not None and self.host is None:
            return f"{self.type}:{self.path}"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.type}://{user}{self.host}{port}"


@dataclass(frozen=True, slots=True)
class FolderRules:
    """Which source folders are copied and where they go (applied by folders.py).

    Patterns match the source path joined with "/" (e.g. "Archive/2019"), and are
    full-string matches (``re.fullmatch``)."""

    include: tuple[re.Pattern[str], ...] = ()  # empty: every folder
    exclude: tuple[re.Pattern[str], ...] = ()
    renames: tuple[tuple[re.Pattern[str], str], ...] = ()  # (pattern, replacement) on the joined path
    special_use_automap: bool = True  # map Sent/Trash/... to the destination's own


@dataclass(frozen=True, slots=True)
class Filters:
    """Which messages are copied. A message filtered out is counted as skipped with a reason."""

    since: datetime | None = None  # internal date >= since (timezone-aware)
    before: datetime | None = None  # internal date < before
    min_size: int | None = None
    max_size: int | None = None


@dataclass(frozen=True, slots=True)
class Options:
    folders: FolderRules = FolderRules()
    filters: Filters = Filters()
    parallel_mailboxes: int = 4  # 20 mailboxes of 500: 4 at once copy 1.7-2.0x mbsync, 2 at once 1.2x
    batch_bytes: int = 4 * 1024 * 1024  # FETCH/APPEND batches are cut at this many bytes
    batch_messages: int = 500  # ... or at this many messages
    retries: int = 5  # reconnect-and-resume attempts per folder on retryable errors
    folder_workers: int = 2  # folders of one mailbox synced at once, each with its own connections
    mode: Literal["copy", "mirror", "move"] = "copy"
    # after a confirmed copy: "keep" the source message, or "delete" it (POP3 hosting
    # moves; the same as mode "move" for sources that can delete)
    after_copy: Literal["keep", "delete"] = "keep"
    delete: bool = False  # mirror: also propagate deletions of messages and folders
    max_delete_share: float = 0.10  # mirror: refuse to delete more than this share of a folder in one run
    force_delete: bool = False  # ... unless forced
    pop3_folder: str = "INBOX"  # destination folder of POP3 messages ("/"-separated path)
    pop3_seen: bool = False  # mark messages from POP3 \\Seen at the destination


Mode = Literal["copy", "mirror", "move"]


@dataclass(frozen=True, slots=True)
class MailboxJob:
    id: str  # unique within a plan; the state DB keys rows by it
    source: Account
    destination: Account
    options: Options = Options()
    origin: str = ""  # "plans/acme.yaml:12" or "users.csv:4", for messages
    # More sources merged into the same destination mailbox, after ``source`` (e.g. a
    # Thunderbird profile, then the POP3 INBOX): nothing already there is copied again.
    extra_sources: tuple[Account, ...] = ()

    @property
    def sources(self) -> tuple[Account, ...]:
        return (self.source, *self.extra_sources)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    jobs: tuple[MailboxJob, ...]
    state_path: Path  # state/<name>.db unless the plan or CLI says otherwise
    source_file: Path | None = None
    inputs: tuple[Path, ...] = ()  # the other files the plan was read from (its mailbox CSV)


def match_key(message_id: str | None, size: int, content_hash: str | None) -> MatchKey | None:
    """The identity used to recognise a message at the destination, or None."""
    if message_id:
        return ("mid", message_id, size)
    if content_hash:
        return ("sha", content_hash, size)
    return None
