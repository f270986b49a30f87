"""Test helpers over the EWS test server's store: seed a mailbox the way Exchange would
hold received mail, and take snapshots comparable with ``integration.snapshot``.

The flag <-> MAPI mapping here is written independently of the connector's (tests
must not check the connector with its own code): \\Seen is MSGFLAG_READ, \\Draft is
MSGFLAG_UNSENT, \\Flagged is PR_FLAG_STATUS 2, \\Answered is PR_LAST_VERB_EXECUTED
102/103, $Forwarded is PR_LAST_VERB_EXECUTED 104 (or a category), other keywords are
categories.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC

from integration.corpus import CorpusMessage
from integration.ews.store import (
    MSGFLAG_READ,
    MSGFLAG_UNMODIFIED,
    MSGFLAG_UNSENT,
    PR_MESSAGE_DELIVERY_TIME,
    PR_MESSAGE_FLAGS,
    Folder,
    Item,
    Mailbox,
    format_time,
)
from integration.snapshot import MessageFacts, Snapshot

PR_FLAG_STATUS = 0x1090
PR_LAST_VERB_EXECUTED = 0x1081

# IMAP folder of the corpus -> display-name path in an Exchange mailbox
IMAP_TO_EWS = {
    ("INBOX",): ("Inbox",),
    ("Sent",): ("Sent Items",),
    ("Drafts",): ("Drafts",),
    ("Trash",): ("Deleted Items",),
    ("Junk",): ("Junk Email",),
    ("Archive",): ("Archive",),
}
EWS_TO_IMAP = {v: k for k, v in IMAP_TO_EWS.items()}


def ews_path(imap_path: tuple[str, ...]) -> tuple[str, ...]:
    """Where a corpus folder lives in the Exchange mailbox (children follow their parent)."""
    for n in range(len(imap_path), 0, -1):
        hit = IMAP_TO_EWS.get(imap_path[:n])
        if hit:
            return hit + imap_path[n:]
    return imap_path


def imap_path(path: tuple[str, ...]) -> tuple[str, ...]:
    for n in range(len(path), 0, -1):
        hit = EWS_TO_IMAP.get(path[:n])
        if hit:
            return hit + path[n:]
    return path


def ensure_path(mbx: Mailbox, path: tuple[str, ...]) -> Folder:
    cur = mbx.folders[mbx.distinguished["msgfolderroot"]]
    for part in path:
        kids = [c for c in mbx.children(cur.id) if c.name.casefold() == part.casefold()]
        cur = kids[0] if kids else mbx.create_folder(cur.id, part, "IPF.Note")  # type: ignore[assignment]
    return cur


def seed(mbx: Mailbox, messages: Iterable[CorpusMessage], lock: object) -> int:
    """Store corpus messages as received Exchange items (folders mapped by IMAP_TO_EWS)."""
    n = 0
    with lock:  # type: ignore[attr-defined]
        for msg in messages:
            folder = ensure_path(mbx, ews_path(msg.folder))
            flags = MSGFLAG_UNMODIFIED
            if "\\Seen" in msg.flags:
                flags |= MSGFLAG_READ
            if "\\Draft" in msg.flags:
                flags |= MSGFLAG_UNSENT
            props: dict = {
                ("tag", PR_MESSAGE_FLAGS): ("Integer", str(flags)),
                ("tag", PR_MESSAGE_DELIVERY_TIME): ("SystemTime", format_time(msg.internal_date)),
            }
            if "\\Flagged" in msg.flags:
                props[("tag", PR_FLAG_STATUS)] = ("Integer", "2")
            categories = sorted(k for k in msg.flags if not k.startswith("\\"))
            if "\\Answered" in msg.flags:
                props[("tag", PR_LAST_VERB_EXECUTED)] = ("Integer", "102")
            elif "$Forwarded" in categories:
                props[("tag", PR_LAST_VERB_EXECUTED)] = ("Integer", "104")
                categories.remove("$Forwarded")
            mbx.add_item(folder, msg.raw, props, None, categories, msg.internal_date)
            n += 1
    return n


def item_flags(item: Item) -> tuple[frozenset[str], frozenset[str]]:
    """(system flags, keywords) an IMAP client should see for this Exchange item."""
    system: set[str] = set()
    if item.is_read:
        system.add("\\Seen")
    if item.is_draft:
        system.add("\\Draft")
    status = item.props.get(("tag", PR_FLAG_STATUS))
    if status is not None and str(status[1]) == "2":
        system.add("\\Flagged")
    keywords = set(item.categories)
    verb = item.props.get(("tag", PR_LAST_VERB_EXECUTED))
    if verb is not None and str(verb[1]) in ("102", "103"):
        system.add("\\Answered")
    elif verb is not None and str(verb[1]) == "104":
        keywords.add("$Forwarded")
    return frozenset(system), frozenset(keywords)


def snapshot(mbx: Mailbox, lock: object, *, exported: bool, to_imap: bool = False) -> Snapshot:
    """Facts of every mail folder below msgfolderroot: SHA-256 of the MIME the server
    holds (``exported``: of the MIME it hands out), flags, received time. Folders are
    display-name paths, or IMAP paths with ``to_imap``. Empty folders are left out."""
    out: dict[tuple[str, ...], list[MessageFacts]] = {}
    with lock:  # type: ignore[attr-defined]
        for folder in mbx.folders.values():
            if not folder.items:
                continue
            path = mbx.path_of(folder)
            if to_imap:
                path = imap_path(path)
            facts = []
            for item in folder.items.values():
                raw = item.export_mime() if exported else item.mime
                system, keywords = item_flags(item)
                facts.append(
                    MessageFacts(
                        hashlib.sha256(raw).hexdigest(),
                        len(raw),
                        system,
                        keywords,
                        item.received.astimezone(UTC).replace(microsecond=0),
                    )
                )
            out[path] = sorted(facts, key=MessageFacts.sort_key)
    return dict(sorted(out.items()))
