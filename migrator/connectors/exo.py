"""Exchange Online over IMAP (``type: exchange-online``): the IMAP connector with
outlook.office365.com's rules built in, as data the engine and the dry run read.

An ``ExoStore`` wraps an ``ImapStore`` (composition: the IMAP connector keeps the
protocol, this module only adds the service's rules):

* ``capabilities.max_message_bytes``: ``max_message_size`` or 35 MB (Exchange
  Online's default MaxReceiveSize; raisable to 150 MB per mailbox). Larger messages
  are skipped by march with a reason, in dry runs too.
* throttling: ``NO/BAD ... Request is throttled. Suggested Backoff Time: N
  milliseconds`` on any command becomes ``TransientError(backoff_seconds=N/1000)``;
  the engine waits that long, reconnects and resumes (never sooner, never a failure).
* ``capabilities.max_connections``: ``max_connections`` or 4, the per-mailbox cap.
* ``capabilities.max_line_length`` / ``adapts_messages``: lines over 9,900 octets
  (Exchange refuses about 10,000 with ``BAD Command Error. 10``) are fixed by
  ``adapt()``: the offending part re-encoded (quoted-printable for text, base64
  otherwise; decoded content unchanged), over-long header lines folded, and a trace
  header ``X-Migrator-Reencoded: original-size=N`` added so that the destination
  listing still reports the size the source had (matching after a crash works).
* read receipts: with ``mark_mdn_sent`` (default on) a message that asks for one
  (``Disposition-Notification-To``) is stored with ``$MDNSent``, so that clients do
  not send receipts for old mail.
* ``capabilities.reserved_names``: Exchange's own top-level folders (Calendar,
  Contacts, ...); the folder mapper renames a mail folder that would land on one.
* Message-ID rewrites: Exchange Online replaces the Message-ID of some messages and
  keeps the original in ``X-MS-Exchange-Parent-Message-Id``; ``list_messages``
  reports the original, so a message already there is recognised.
* OAuth2 sessions are renewed before their token expires (Exchange ends them with
  ``* BYE Session invalidated - AccessTokenExpired``): before each operation, when
  the session's token is no longer fresh (see migrator.auth.Lease), the store logs
  in again with a new token. A BYE that comes anyway is a TransientError (retried).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

from imapclient.response_parser import parse_fetch_response

from migrator.auth import Lease, access_lease
from migrator.connectors.base import ListingPage
from migrator.connectors.imap import ImapStore, open_imap, throttle_backoff
from migrator.connectors.longlines import fix_long_lines
from migrator.errors import FolderError, MigratorError, TransientError
from migrator.model import Account, FolderInfo, FolderPath, MessageMeta, header_block, normalise_message_id

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "EXO_HOST",
    "MAX_LINE_LENGTH",
    "MDN_SENT",
    "RESERVED_NAMES",
    "ExoStore",
    "adapt_message",
    "open_exchange_online",
    "throttle_seconds",
]

log = logging.getLogger("migrator")

Role = Literal["source", "destination"]
EXO_HOST = "outlook.office365.com"
DEFAULT_MAX_MESSAGE_BYTES = 35 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 4
MAX_LINE_LENGTH = 9_900
MDN_SENT = "$MDNSent"
TRACE_HEADER = "X-Migrator-Reencoded"
# Folders every Exchange mailbox has that are not mail folders (and Outbox, which
# Exchange empties by sending): a source folder of that name must not land there.
RESERVED_NAMES = (
    "Calendar",
    "Contacts",
    "Tasks",
    "Notes",
    "Journal",
    "Outbox",
    "Sync Issues",
    "Conversation History",
    "RSS Feeds",
)
PARENT_HEADERS = b"BODY.PEEK[HEADER.FIELDS (X-MS-EXCHANGE-PARENT-MESSAGE-ID X-MIGRATOR-REENCODED)]"
_TRACE = re.compile(rb"^X-Migrator-Reencoded:[^\r\n]*original-size=(\d+)", re.I | re.M)
_PARENT = re.compile(rb"^X-MS-Exchange-Parent-Message-Id:((?:[^\r\n]|\r?\n[ \t])*)", re.I | re.M)
_DNT = re.compile(rb"^Disposition-Notification-To:", re.I | re.M)


def throttle_seconds(text: str) -> float | None:
    """Seconds from an Exchange Online throttling answer, None for any other text
    (the IMAP connector's parser: one reading of the answer for both)."""
    return throttle_backoff(text)


def adapt_message(meta: MessageMeta, raw: bytes, max_line: int = MAX_LINE_LENGTH) -> tuple[bytes, str | None]:
    """``raw`` as Exchange Online accepts it, and what changed (None: unchanged).

    Idempotent: an adapted message comes back unchanged. The trace header records
    the source's size (``meta.size``) once."""
    fixed = fix_long_lines(raw, max_line)
    if not fixed.notes:
        if fixed.unfixable:
            return raw, "cannot be fixed for Exchange Online: " + "; ".join(fixed.unfixable)
        return raw, None
    eol = b"\r\n" if b"\r\n" in header_block(raw) else b"\n"
    out = fixed.raw
    if not _TRACE.search(header_block(out)):
        out = f"{TRACE_HEADER}: original-size={meta.size}".encode() + eol + out
    note = "; ".join(fixed.notes + [f"still too long: {u}" for u in fixed.unfixable])
    return out, note


def wants_receipt(raw: bytes) -> bool:
    return _DNT.search(header_block(raw)) is not None


def open_exchange_online(account: Account, role: Role) -> ExoStore:
    """Connect to Exchange Online (or a test server at ``account.host``) with IMAP,
    XOAUTH2 when ``account.oauth`` is set (a password otherwise: test servers).
    Raises ConnectError, TLSError or AuthError."""
    if not account.host:
        account = replace(account, host=EXO_HOST, port=account.port or 993)
    return ExoStore(account, role)


class ExoStore:
    """Source and Destination for an Exchange Online mailbox (one thread at a time)."""

    def __init__(self, account: Account, role: Role) -> None:
        self.account = account
        self.role = role
        opts = account.options
        self.mark_mdn_sent = bool(opts.get("mark_mdn_sent", True))
        self._inner: ImapStore | None = None
        self._lease: Lease | None = None
        self.renewals = 0  # sessions renewed before their token expired
        self._open()
        inner = self._inner
        assert inner is not None
        self.capabilities = replace(
            inner.capabilities,
            max_message_bytes=int(opts.get("max_message_size") or DEFAULT_MAX_MESSAGE_BYTES),
            max_connections=int(opts.get("max_connections") or DEFAULT_MAX_CONNECTIONS),
            reserved_names=RESERVED_NAMES,
            max_line_length=MAX_LINE_LENGTH,
            adapts_messages=True,
            # Exchange rebuilds MIME: the size it lists is not the size it was given, so
            # matching at the destination goes by Message-ID alone (still as a multiset)
            exact_sizes=False,
            reports_stored_sizes=False,  # no stored_sizes(): with sizes not exact there is nothing to compare
        )

    def __repr__(self) -> str:
        return f"ExoStore({self.account.describe()}, {self.role})"

    # ------------------------------------------------------------------ sessions
    def _open(self) -> None:
        # the token the login will use, taken first: the provider hands out the same one
        # while it is fresh, so the login uses this one or a newer one (taken after the
        # login, a refresh in between made the session look fresher than its token was)
        self._lease = access_lease(self.account) if self.account.oauth is not None else None
        self._inner = open_imap(self.account, self.role)
        # Exchange rewrites MIME: its sizes are never compared (no size check with appends)
        self._inner.capabilities = replace(self._inner.capabilities, reports_stored_sizes=False)

    def _renew_if_needed(self) -> None:
        lease = self._lease
        if lease is None or lease.fresh(time.time()):
            return
        old, self._inner = self._inner, None
        if old is not None:
            old.close()
        log.info("%s: renewing the session before its OAuth2 token expires", self.account.describe())
        self._open()
        self.renewals += 1

    @property
    def inner(self) -> ImapStore:
        if self._inner is None:
            raise TransientError(f"{self.account.describe()}: connection closed")
        return self._inner

    @contextmanager
    def _rules(self, what: str) -> Iterator[ImapStore]:
        """Renew the session if due, and turn throttling answers into TransientError."""
        self._renew_if_needed()
        try:
            yield self.inner
        except TransientError as exc:
            if exc.backoff_seconds is None:
                wait = throttle_seconds(str(exc))
                if wait is not None:
                    raise TransientError(str(exc), backoff_seconds=wait) from None
            raise
        except MigratorError as exc:
            wait = throttle_seconds(str(exc))
            if wait is None:
                raise
            self.close()  # Exchange may drop the session after a throttle; start clean
            raise TransientError(f"{self.account.describe()}: {what}: throttled: {exc}", backoff_seconds=wait) from None

    # ------------------------------------------------------------------ folders
    def list_folders(self) -> list[FolderInfo]:
        with self._rules("LIST") as s:
            return s.list_folders()

    def find_folder(self, path: FolderPath) -> FolderInfo | None:
        with self._rules("LIST") as s:
            return s.find_folder(path)

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> FolderInfo:
        with self._rules("CREATE") as s:
            return s.ensure_folder(path, special_use)

    def delete_folder(self, path: FolderPath) -> None:
        with self._rules("DELETE") as s:
            s.delete_folder(path)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ messages
    def list_messages(self, folder: FolderInfo) -> list[MessageMeta]:
        """The IMAP listing, with the original Message-ID where Exchange rewrote it and
        the source's size where this tool re-encoded the message."""
        with self._rules("list messages") as s:
            metas = s.list_messages(folder)
            if not metas:
                return metas
            extra = self._parent_headers(s)
        out = []
        for meta in metas:
            block = extra.get(int(meta.id))
            if not block:
                out.append(meta)
                continue
            changes: dict[str, Any] = {}
            parent = _PARENT.search(block)
            if parent:
                original = normalise_message_id(parent.group(1))
                if original:
                    changes["message_id"] = original
                    changes["extra"] = {**meta.extra, "exchange_message_id": meta.message_id or ""}
            trace = _TRACE.search(block)
            if trace:
                changes["size"] = int(trace.group(1))
            out.append(replace(meta, **changes) if changes else meta)
        return out

    @staticmethod
    def _parent_headers(s: ImapStore) -> dict[int, bytes]:
        """UID -> the two headers Exchange / this tool add, for the folder just listed.
        (A second UID FETCH of small header fields; the IMAP connector has no hook
        for extra listing headers yet.)"""
        with s._guard("list headers"):
            imap = s._conn._imap
            imap.untagged_responses.clear()
            typ, data = imap.uid("FETCH", "1:*", "(UID " + PARENT_HEADERS.decode() + ")")
            if typ != "OK":
                raise FolderError(f"{s.account.describe()}: FETCH of listing headers failed: {data!r}")
            parsed = parse_fetch_response(data, normalise_times=False, uid_is_key=True)
        out: dict[int, bytes] = {}
        for uid, item in parsed.items():
            for key, value in item.items():
                header = isinstance(key, bytes) and key.startswith(b"BODY[HEADER.FIELDS")
                if header and isinstance(value, bytes) and value.strip():
                    out[int(uid)] = value
        return out

    def list_pages(self, folder: FolderInfo, cursor: str | None) -> Iterator[ListingPage]:
        with self._rules("list messages") as s:
            yield from s.list_pages(folder, cursor)  # type: ignore[attr-defined]

    def fetch(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> Iterator[tuple[MessageMeta, bytes]]:
        with self._rules("fetch") as s:
            yield from s.fetch(folder, msgs)

    def adapt(self, meta: MessageMeta, raw: bytes) -> tuple[bytes, str | None]:
        """What ``append`` will store for ``raw``, and a note when that differs (pure)."""
        return adapt_message(meta, raw, MAX_LINE_LENGTH)

    def append(self, folder: FolderInfo, items: Sequence[tuple[MessageMeta, bytes]]) -> list[str | None]:
        """Store ``items`` by Exchange Online's rules: long lines fixed (``adapt``;
        the engine normally did it already and reported it), ``$MDNSent`` on messages
        asking for a read receipt (``mark_mdn_sent``). Raises what ImapStore.append
        raises, throttling as TransientError with the server's back-off."""
        ready = []
        for meta, raw in items:
            fixed, note = self.adapt(meta, raw)
            if note and fixed != raw:
                log.warning("%s: message %s: %s", self.account.describe(), meta.id, note)
            if self.mark_mdn_sent and MDN_SENT not in meta.flags and wants_receipt(fixed):
                meta = replace(meta, flags=meta.flags | {MDN_SENT})
            ready.append((meta, fixed))
        with self._rules("APPEND") as s:
            return s.append(folder, ready)

    def set_flags(self, folder: FolderInfo, changes: Sequence[tuple[str, frozenset[str]]]) -> None:
        with self._rules("STORE") as s:
            s.set_flags(folder, changes)  # type: ignore[attr-defined]

    def delete(self, folder: FolderInfo, msgs: Sequence[MessageMeta]) -> None:
        with self._rules("EXPUNGE") as s:
            s.delete(folder, msgs)  # type: ignore[attr-defined]

    def close(self) -> None:
        """LOGOUT; a session whose token has expired is just disconnected (Exchange
        would answer its LOGOUT with "BYE AccessTokenExpired"). Idempotent."""
        inner, self._inner = self._inner, None
        if inner is None:
            return
        lease = self._lease
        if lease is not None and lease.expires is not None and time.time() >= lease.expires - 1.0:
            inner._lost()
            return
        inner.close()
