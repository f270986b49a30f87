"""Source and Destination protocols, the Account a connector is opened with, and the
registry of connector types.

Contracts (every implementation keeps them; the conformance suite checks them):

* A connector instance is used by one thread at a time. ``close()`` is idempotent.
* Folder paths are tuples of decoded Unicode parts. Encoding (modified UTF-7,
  separators, Maildir++ dots, namespace prefixes) happens only inside the connector.
* Errors are raised as ``migrator.errors`` types: ``AuthError`` / ``TLSError`` /
  ``ConnectError`` when opening, ``TransientError`` for a dropped connection or
  timeout (the caller reconnects by opening a new instance), ``MessageError`` when
  the server refuses a message, ``QuotaError`` when the mailbox is full,
  ``FolderError`` for a folder that cannot be created or selected.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from migrator.errors import PlanError
from migrator.model import Account, Capabilities, FolderInfo, FolderPath, MessageMeta, Secret

__all__ = ["REGISTRY", "Account", "Destination", "ListingPage", "Role", "Secret", "Source", "open_store"]


@dataclass(frozen=True, slots=True)
class ListingPage:
    """One page of an incremental listing (``Source.list_pages``).

    ``messages``: messages new or changed since the cursor (all of them on a first
    listing), with full metadata; a changed message already copied may come with
    only its id and flags filled in (``size`` 0). ``vanished``: ids gone since the
    cursor. ``cursor``: where the next call resumes; the engine saves it only after
    this page is processed, so a crash replays the page (harmless: copies are
    idempotent). ``complete``: the pages of this call list the whole folder (a first
    or reset listing): ids the state knows that none of the pages listed are gone."""

    messages: list[MessageMeta]
    cursor: str | None
    vanished: list[str] = field(default_factory=list)
    complete: bool = True


@runtime_checkable
class Source(Protocol):
    capabilities: Capabilities

    def list_folders(self) -> list[FolderInfo]:
        """Every folder, with special-use and validity. Read-only. Idempotent."""
        ...

    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """Every message of ``folder`` with size, flags, internal date and Message-ID.
        Read-only: never changes flags (no \\Seen side effect). Raises FolderError
        when the folder is gone."""
        ...

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        """The exact bytes of ``msgs`` (in any order), each with fresh metadata.
        Messages that vanished meanwhile are simply not yielded. Read-only."""
        ...

    def close(self) -> None:
        """Log out. For POP3 this is QUIT, which is when deletions take effect."""
        ...

    # Optional, by capability -------------------------------------------------
    # capabilities.incremental:
    #   def list_pages(self, folder: FolderInfo, cursor: str | None) -> Iterator[ListingPage]
    #       Changes since ``cursor`` (None or a cursor the store no longer accepts: a
    #       complete listing). Unchanged folder: no page, or one empty page.
    #   def known_unchanged(self, folder: FolderInfo, cursor: str | None) -> bool   (optional)
    #       True only when what ``list_folders`` already fetched proves that nothing
    #       changed since ``cursor`` (no round trip). Used for scheduling only: the
    #       engine does not open extra connections for folders known unchanged.
    #   def new_at_most(self, folder: FolderInfo, cursor: str | None) -> int | None   (optional)
    #       An upper bound of the messages added since ``cursor``, from the same data;
    #       None when it cannot tell. Also for scheduling only.
    # capabilities.can_delete:
    #   def delete(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> None
    #       Remove these messages from the source (IMAP: \\Deleted + UID EXPUNGE of
    #       exactly those UIDs; POP3: DELE, effective at QUIT in close(); Maildir:
    #       unlink). Ids already gone are not an error.


@runtime_checkable
class Destination(Source, Protocol):
    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        """The folder at ``path`` if it exists, else None. Read-only (dry runs use it)."""
        ...

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        """Create ``path`` (and its parents) unless it exists; return it. Idempotent:
        an existing folder is success. ``special_use`` is a hint the store may record.
        (A destination's FolderInfo may carry no validity: nothing reads it, and IMAP
        does not ask STATUS for it.)"""
        ...

    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        """Store ``items`` in ``folder`` with their flags, keywords and internal dates.

        Returns one destination id per item (None where the store does not say).
        Returning means the store confirmed every item. Raises MessageError when the
        store refused the batch (the caller retries items one by one to find the
        culprit), QuotaError when full, TransientError when the outcome is unknown
        (the caller must look at the destination before sending again)."""
        ...

    # Optional, by capability -------------------------------------------------
    # capabilities.can_set_flags:
    #   def set_flags(self, folder: FolderInfo, changes: Sequence[tuple[str, frozenset[str]]]) -> None
    #       Give each destination id exactly this flag set (system flags and keywords).
    # capabilities.can_delete_at_destination:
    #   def delete(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> None   (ids are destination ids)
    #   def delete_folder(self, path: FolderPath) -> None      (idempotent: a missing folder is success)
    # capabilities.adapts_messages:
    #   def adapt(self, meta: MessageMeta, raw: bytes) -> tuple[bytes, str | None]
    #       The bytes this store will store for ``raw`` (``raw`` itself when nothing needs
    #       changing) and a note saying what changed (None: unchanged). Pure, no I/O,
    #       idempotent; dry runs call it too. append() applies it again itself, so
    #       calling it first is for reporting (Exchange Online: long lines re-encoded).
    # optional (both or neither): a watermark of what is stored, so that a run can tell
    # whether anyone else wrote into a folder since its last run (another job or
    # plan, a state DB restored from a backup) without listing the folder:
    #   def uid_mark(self, folder: FolderInfo) -> tuple[int, int] | None
    #       (validity, next id): every message stored later gets an id at or above it.
    #   def list_since(self, folder: FolderInfo, uid: int) -> list[MessageMeta]
    #       The messages stored since the mark whose next id was ``uid``.
    #   def created_empty(self, folder: FolderInfo) -> bool   (optional)
    #       This connection's ensure_folder created the folder (it held nothing then).
    # capabilities.reports_stored_sizes (asked only where capabilities.exact_sizes):
    #   def stored_sizes(self, folder: FolderInfo, ids: Sequence[str]) -> dict[str, int]
    #       The RFC 822 size the store holds for each of ``ids`` (destination ids an
    #       append just returned), for one batch in one cheap request (IMAP: one UID
    #       FETCH RFC822.SIZE). Ids it cannot see are left out. Read-only. A size other
    #       than the one sent means the store altered the message when it stored it
    #       (Dovecot stores CR CR LF as CR LF): the copy is kept and reported.


Role = Literal["source", "destination"]

# type -> "module:function"; the function takes (account, role) and returns a store.
REGISTRY: dict[str, str] = {
    "imap": "migrator.connectors.imap:open_imap",
    "pop3": "migrator.connectors.pop3:open_pop3",
    "maildir": "migrator.connectors.local:open_maildir",
    "mbox": "migrator.connectors.local:open_mbox",
    "thunderbird": "migrator.connectors.desktop:open_thunderbird",
    "pst": "migrator.connectors.desktop:open_pst",
    "ews": "migrator.connectors.ews:open_ews",
    "exchange-online": "migrator.connectors.exo:open_exchange_online",
}


def open_store(account: Account, role: Role) -> Destination:
    """Open a connector for ``account``. Raises AuthError/ConnectError/TLSError."""
    try:
        target = REGISTRY[account.type]
    except KeyError:
        raise PlanError(f"unknown endpoint type {account.type!r}") from None
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return func(account, role)
