"""What the EWS test server reads from a message's MIME, and how it exports MIME.

Exchange does not keep the MIME it was given: it converts the message to MAPI
properties and generates MIME again on export. ``export`` imitates that in a
deterministic way (CRLF line endings and two headers Exchange adds), so that
nothing in the tests can rely on byte-identical round trips, while the parsed
fields (Message-ID, Subject, Date, body) survive.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header

ADDED_HEADERS = b"X-MS-Has-Attach: \r\nX-MS-TNEF-Correlator: \r\n"


@dataclass(frozen=True, slots=True)
class Parsed:
    subject: str
    message_id: str | None
    date_sent: datetime | None
    sender: str | None


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header block without the blank line, body) of a CRLF message."""
    idx = raw.find(b"\r\n\r\n")
    if idx < 0:
        return raw, b""
    return raw[: idx + 2], raw[idx + 4 :]


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def headers(raw: bytes) -> dict[str, str]:
    """Unfolded header fields (first occurrence of each name, lower-cased names)."""
    block, _ = split(crlf(raw))
    out: dict[str, str] = {}
    name: str | None = None
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and name is not None:
            out[name] += " " + line.strip().decode("utf-8", "replace")
            continue
        if b":" not in line:
            name = None
            continue
        key, value = line.split(b":", 1)
        name = key.strip().decode("ascii", "replace").lower()
        if name in out:
            name = None  # keep the first occurrence
            continue
        out[name] = value.strip().decode("utf-8", "replace")
    return out


def _decode(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def parse(raw: bytes) -> Parsed:
    h = headers(raw)
    date = None
    if "date" in h:
        try:
            date = email.utils.parsedate_to_datetime(h["date"])
            if date.tzinfo is None:
                date = date.replace(tzinfo=UTC)
            date = date.astimezone(UTC)
        except (TypeError, ValueError):
            date = None
    mid = "".join(h["message-id"].split()) if h.get("message-id") else None
    return Parsed(
        subject=_decode(h.get("subject", "")),
        message_id=mid or None,
        date_sent=date,
        sender=_decode(h["from"]) if "from" in h else None,
    )


def export(raw: bytes) -> bytes:
    """The MIME the server hands out for a stored message (see the module docstring)."""
    block, body = split(crlf(raw))
    if not body and not raw.replace(b"\r\n", b"\n").count(b"\n\n"):
        return block + ADDED_HEADERS + b"\r\n"
    return block + ADDED_HEADERS + b"\r\n" + body
