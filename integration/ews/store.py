"""In-memory mailboxes of the EWS test server, with the item semantics Exchange documents.

An item created from MIME gets its MAPI state from the extended properties sent with
it, as Exchange does:

* PR_MESSAGE_FLAGS (0x0E07): absent -> MSGFLAG_UNSENT, i.e. a draft (what exchangelib
  issue #716 shows); present -> exactly those flags. ``IsRead`` sets or clears
  MSGFLAG_READ; ``IsDraft`` is MSGFLAG_UNSENT.
* PR_MESSAGE_DELIVERY_TIME (0x0E06) is ``DateTimeReceived``; absent -> the time of
  creation (a migrated message would look received today).
* Subject, InternetMessageId and DateTimeSent come from the MIME headers.
* ``Size`` is the size of the MAPI item, not of the MIME (larger, and counting the
  properties), so that nobody can mistake one for the other.

Every change to a folder's items gets a sequence number; SyncFolderItems sync states
are positions in that sequence.
"""

from __future__ import annotations

import base64
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from integration.ews import mime

MSGFLAG_READ = 0x1
MSGFLAG_UNMODIFIED = 0x2
MSGFLAG_UNSENT = 0x8

PR_MESSAGE_DELIVERY_TIME = 0x0E06
PR_MESSAGE_FLAGS = 0x0E07
PR_MESSAGE_SIZE = 0x0E08
PR_INTERNET_MESSAGE_ID = 0x1035

# Distinguished property set names -> GUIDs (MS-OXPROPS)
PROPERTY_SETS = {
    "Address": "00062004-0000-0000-c000-000000000046",
    "Appointment": "00062002-0000-0000-c000-000000000046",
    "CalendarAssistant": "11000e07-b51b-40d6-af21-caa85edab1d0",
    "Common": "00062008-0000-0000-c000-000000000046",
    "InternetHeaders": "00020386-0000-0000-c000-000000000046",
    "Meeting": "6ed8da90-450b-101b-98da-00aa003f1305",
    "PublicStrings": "00020329-0000-0000-c000-000000000046",
    "Sharing": "00062040-0000-0000-c000-000000000046",
    "Task": "00062003-0000-0000-c000-000000000046",
    "UnifiedMessaging": "4442858e-a9e3-4e80-b900-317a210cc15b",
}

# (key, MAPI type) -> value as EWS writes it ("Value" text, or a list for arrays)
PropKey = tuple  # ("tag", int) | ("name", guid, str) | ("id", guid, int)


@dataclass(slots=True)
class Item:
    id: str
    change_key: int
    folder_id: str
    mime: bytes
    flags: int
    received: datetime
    created: datetime
    categories: list[str]
    props: dict[PropKey, tuple[str, object]]  # key -> (PropertyType, value)
    parsed: mime.Parsed
    created_seq: int
    seq: int

    @property
    def is_read(self) -> bool:
        return bool(self.flags & MSGFLAG_READ)

    @property
    def is_draft(self) -> bool:
        return bool(self.flags & MSGFLAG_UNSENT)

    @property
    def size(self) -> int:
        """The MAPI item size: not the MIME size (see the module docstring)."""
        extra = sum(len(str(v)) + 32 for _, v in self.props.values())
        return len(self.mime) + 1024 + extra + sum(len(c) for c in self.categories)

    def export_mime(self) -> bytes:
        return mime.export(self.mime)


@dataclass(slots=True)
class Folder:
    id: str
    change_key: int
    parent_id: str | None
    name: str
    folder_class: str | None
    distinguished: str | None = None
    items: dict[str, Item] = field(default_factory=dict)
    tombstones: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (created_seq, deleted_seq)
    seq: int = 0
    generation: int = 1  # a new generation invalidates every sync state


DEFAULT_FOLDERS: tuple[tuple[str | None, str, str | None, str], ...] = (
    # (distinguished id, display name, folder class, parent distinguished id)
    ("inbox", "Inbox", "IPF.Note", "msgfolderroot"),
    ("drafts", "Drafts", "IPF.Note", "msgfolderroot"),
    ("sentitems", "Sent Items", "IPF.Note", "msgfolderroot"),
    ("deleteditems", "Deleted Items", "IPF.Note", "msgfolderroot"),
    ("junkemail", "Junk Email", "IPF.Note", "msgfolderroot"),
    ("outbox", "Outbox", "IPF.Note", "msgfolderroot"),
    ("calendar", "Calendar", "IPF.Appointment", "msgfolderroot"),
    ("contacts", "Contacts", "IPF.Contact", "msgfolderroot"),
    ("tasks", "Tasks", "IPF.Task", "msgfolderroot"),
    ("notes", "Notes", "IPF.StickyNote", "msgfolderroot"),
    ("syncissues", "Sync Issues", "IPF.Note", "msgfolderroot"),
    ("conflicts", "Conflicts", "IPF.Note", "syncissues"),
    ("localfailures", "Local Failures", "IPF.Note", "syncissues"),
    ("serverfailures", "Server Failures", "IPF.Note", "syncissues"),
    ("conversationhistory", "Conversation History", "IPF.Note", "msgfolderroot"),
)


class Mailbox:
    """One mailbox. All access goes through the server's lock (``Store.lock``)."""

    def __init__(self, smtp: str, ids: Iterator[int], *, archive_folder: bool, quota_bytes: int | None):
        self.smtp = smtp
        self._ids = ids
        self.folders: dict[str, Folder] = {}
        self.distinguished: dict[str, str] = {}
        self.quota_bytes = quota_bytes
        root = self._new_folder(None, "Root", None, "root")
        top = self._new_folder(root.id, "Top of Information Store", "IPF.Note", "msgfolderroot")
        self._new_folder(root.id, "Common Views", None, None)
        for dist, name, cls, parent in DEFAULT_FOLDERS:
            self._new_folder(self.distinguished[parent], name, cls, dist)
        if archive_folder:
            self._new_folder(top.id, "Archive", "IPF.Note", "archive")

    # ------------------------------------------------------------------ ids
    def _next(self) -> int:
        return next(self._ids)

    def new_id(self, kind: str) -> str:
        n = self._next()
        raw = f"{kind}|{self.smtp}|{n}|".encode() + bytes(range(40, 40 + 60))
        return base64.b64encode(raw).decode()

    def _new_folder(self, parent: str | None, name: str, cls: str | None, dist: str | None) -> Folder:
        f = Folder(self.new_id("F"), self._next(), parent, name, cls, dist)
        self.folders[f.id] = f
        if dist:
            self.distinguished[dist] = f.id
        return f

    # ------------------------------------------------------------------ folders
    def children(self, folder_id: str) -> list[Folder]:
        return [f for f in self.folders.values() if f.parent_id == folder_id]

    def descendants(self, folder_id: str) -> list[Folder]:
        out: list[Folder] = []
        for c in self.children(folder_id):
            out.append(c)
            out.extend(self.descendants(c.id))
        return out

    def create_folder(self, parent_id: str, name: str, cls: str | None) -> Folder | None:
        """None when a sibling of that name exists (ErrorFolderExists; case-insensitive)."""
        if any(c.name.casefold() == name.casefold() for c in self.children(parent_id)):
            return None
        return self._new_folder(parent_id, name, cls, None)

    def used_bytes(self) -> int:
        return sum(i.size for f in self.folders.values() for i in f.items.values())

    # ------------------------------------------------------------------ items
    def add_item(
        self,
        folder: Folder,
        raw: bytes,
        props: dict[PropKey, tuple[str, object]],
        is_read: bool | None,
        categories: list[str],
        now: datetime,
    ) -> Item:
        flags_prop = props.pop(("tag", PR_MESSAGE_FLAGS), None)
        flags = int(str(flags_prop[1])) if flags_prop is not None else MSGFLAG_UNSENT
        if is_read is not None:
            flags = (flags | MSGFLAG_READ) if is_read else (flags & ~MSGFLAG_READ)
        delivery = props.pop(("tag", PR_MESSAGE_DELIVERY_TIME), None)
        received = parse_time(str(delivery[1])) if delivery is not None else now
        folder.seq += 1
        item = Item(
            id=self.new_id("I"),
            change_key=self._next(),
            folder_id=folder.id,
            mime=raw,
            flags=flags,
            received=received,
            created=now,
            categories=list(categories),
            props=props,
            parsed=mime.parse(raw),
            created_seq=folder.seq,
            seq=folder.seq,
        )
        folder.items[item.id] = item
        return item

    def touch(self, folder: Folder, item: Item) -> None:
        """Record a change of ``item`` (UpdateItem, a flag change by a test)."""
        folder.seq += 1
        item.seq = folder.seq
        item.change_key = self._next()

    def delete_item(self, folder: Folder, item_id: str) -> None:
        item = folder.items.pop(item_id)
        folder.seq += 1
        folder.tombstones[item_id] = (item.created_seq, folder.seq)

    def find_item(self, item_id: str) -> tuple[Folder, Item] | None:
        for f in self.folders.values():
            it = f.items.get(item_id)
            if it is not None:
                return f, it
        return None

    def path_of(self, folder: Folder) -> tuple[str, ...]:
        """Display-name path below msgfolderroot (for test assertions)."""
        parts: list[str] = []
        top = self.distinguished["msgfolderroot"]
        cur: Folder | None = folder
        while cur is not None and cur.id != top:
            parts.insert(0, cur.name)
            cur = self.folders.get(cur.parent_id) if cur.parent_id else None
        return tuple(parts)

    def folder_by_path(self, path: tuple[str, ...]) -> Folder | None:
        cur = self.folders[self.distinguished["msgfolderroot"]]
        for part in path:
            nxt = [c for c in self.children(cur.id) if c.name.casefold() == part.casefold()]
            if not nxt:
                return None
            cur = nxt[0]
        return cur


class Store:
    """Every mailbox of the server, plus who may log in and whom they may impersonate."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        self.mailboxes: dict[str, Mailbox] = {}
        self.passwords: dict[str, str] = {}  # login -> password
        self.login_mailbox: dict[str, str] = {}  # login -> own mailbox smtp
        self.impersonators: set[str] = set()  # logins with the ApplicationImpersonation role
        self.tokens: dict[str, str] = {}  # bearer token -> login (an app) for OAuth2

    def add_mailbox(
        self,
        smtp: str,
        password: str | None = "pw",
        *,
        login: str | None = None,
        archive_folder: bool = True,
        quota_bytes: int | None = None,
    ) -> Mailbox:
        with self.lock:
            key = smtp.lower()
            mbx = Mailbox(key, self._ids, archive_folder=archive_folder, quota_bytes=quota_bytes)
            self.mailboxes[key] = mbx
            if password is not None:
                name = login or smtp
                self.passwords[name] = password
                self.login_mailbox[name] = key
            return mbx

    def add_impersonator(self, login: str, password: str | None = None, token: str | None = None) -> None:
        with self.lock:
            if password is not None:
                self.passwords[login] = password
            if token is not None:
                self.tokens[token] = login
            self.impersonators.add(login)

    def mailbox(self, smtp: str) -> Mailbox | None:
        return self.mailboxes.get(smtp.lower())


def parse_time(text: str) -> datetime:
    """An xs:dateTime as EWS writes it (``2020-01-02T03:04:05Z`` or with an offset)."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
