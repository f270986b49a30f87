"""Make a message acceptable to a server that refuses long lines, without changing its content.

Exchange Online refuses an APPEND whose message has a line over about 10,000
octets (``BAD Command Error. 10``). ``fix_long_lines`` rewrites only what is needed:

* a leaf MIME part with a long line is re-encoded: text as quoted-printable, anything
  else as base64 (76-character lines). Decoding the new part gives exactly the bytes
  the old part decoded to (checked before the change is accepted);
* a header line that is too long is folded at whitespace (unfolding gives the same
  header value);
* ``message/rfc822`` parts are walked into (they may not be re-encoded themselves);
* every other byte of the message stays as it was.

Pure functions, no I/O. The parser is byte-based on purpose: the ``email`` package
would re-serialise the whole message and change bytes that did not need changing.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

__all__ = ["Fixed", "fix_long_lines", "longest_line"]

_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)


def longest_line(raw: bytes) -> int:
    """Octets of the longest line of ``raw``, without its line ending."""
    return max((len(line) for line in re.split(rb"\r\n|\n", raw)), default=0)


@dataclass(slots=True)
class Fixed:
    raw: bytes
    notes: list[str] = field(default_factory=list)  # one per changed part or header
    unfixable: list[str] = field(default_factory=list)  # long lines that could not be fixed


def fix_long_lines(raw: bytes, limit: int) -> Fixed:
    """``raw`` with no line over ``limit`` octets where that is possible (see module doc)."""
    out = Fixed(raw)
    if longest_line(raw) <= limit:
        return out
    out.raw = _fix_entity(raw, limit, out, "message")
    return out


# --------------------------------------------------------------------------- parsing
def _split_entity(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block without the blank line, the blank line, body)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = raw.find(sep)
        if idx >= 0:
            half = len(sep) // 2
            return raw[: idx + half], raw[idx + half : idx + len(sep)], raw[idx + len(sep) :]
    return raw, b"", b""


def _header_fields(head: bytes) -> list[bytes]:
    """The header block as a list of fields, each with its continuation lines and endings."""
    lines = re.split(rb"(?<=\n)", head)
    fields: list[bytes] = []
    for line in lines:
        if not line:
            continue
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _header(fields: list[bytes], name: bytes) -> bytes | None:
    prefix = name.lower() + b":"
    for f in fields:
        if f[: len(prefix)].lower() == prefix:
            return b" ".join(f[len(prefix) :].split())
    return None


def _content_type(fields: list[bytes]) -> tuple[bytes, bytes]:
    """(type/subtype lowercased, the whole header value); text/plain by default."""
    value = _header(fields, b"content-type") or b"text/plain"
    return value.split(b";", 1)[0].strip().lower(), value


# --------------------------------------------------------------------------- fixing
def _fix_entity(raw: bytes, limit: int, out: Fixed, where: str) -> bytes:
    head, blank, body = _split_entity(raw)
    fields = _header_fields(head)
    new_fields = [_fold(f, limit, out, where) for f in fields]
    ctype, cvalue = _content_type(fields)
    if not blank:  # no body at all
        return b"".join(new_fields)
    if ctype.startswith(b"multipart/"):
        m = _BOUNDARY.search(cvalue)
        if m:
            boundary = m.group(1) or m.group(2)
            return b"".join(new_fields) + blank + _fix_multipart(body, boundary, limit, out, where)
    if ctype == b"message/rfc822":
        if longest_line(body) > limit:
            body = _fix_entity(body, limit, out, f"{where} (attached message)")
        return b"".join(new_fields) + blank + body
    if longest_line(body) <= limit:
        return b"".join(new_fields) + blank + body
    fixed = _reencode(new_fields, body, ctype, out, where)
    if fixed is None:
        out.unfixable.append(f"{where}: {ctype.decode('ascii', 'replace')} part")
        return b"".join(new_fields) + blank + body
    new_fields, body = fixed
    return b"".join(new_fields) + blank + body


def _fix_multipart(body: bytes, boundary: bytes, limit: int, out: Fixed, where: str) -> bytes:
    """Fix each part between ``--boundary`` delimiter lines; delimiters, preamble and
    epilogue are kept byte for byte."""
    delim = re.compile(rb"(^|\r?\n)(--" + re.escape(boundary) + rb"(--)?[ \t]*)(?=\r?\n|$)")
    pieces: list[bytes] = []
    pos = 0
    part_no = 0
    in_part = False
    for m in delim.finditer(body):
        segment = body[pos : m.start()]
        if in_part:
            part_no += 1
            lead, inner = _strip_lead(segment)
            pieces.append(lead + _fix_entity(inner, limit, out, f"{where} part {part_no}"))
        else:
            pieces.append(segment)  # preamble
        pieces.append(body[m.start() : m.end()])
        pos = m.end()
        in_part = m.group(3) is None  # "--boundary--" closes: the rest is epilogue
        if not in_part:
            break
    rest = body[pos:]
    if in_part and rest:
        # an unterminated last part: its leading line break belongs to the delimiter line
        lead, inner = _strip_lead(rest)
        part_no += 1
        pieces.append(lead + _fix_entity(inner, limit, out, f"{where} part {part_no}"))
    else:
        pieces.append(rest)
    return b"".join(pieces)


def _strip_lead(segment: bytes) -> tuple[bytes, bytes]:
    lead = b"\r\n" if segment.startswith(b"\r\n") else (b"\n" if segment.startswith(b"\n") else b"")
    return lead, segment[len(lead) :]


def _fold(field_bytes: bytes, limit: int, out: Fixed, where: str) -> bytes:
    """Fold a too-long header field at whitespace (the value unfolds to the same)."""
    if longest_line(field_bytes) <= limit:
        return field_bytes
    eol = b"\r\n" if field_bytes.endswith(b"\r\n") else b"\n"
    name = field_bytes.split(b":", 1)[0].decode("ascii", "replace")
    lines = re.split(rb"\r?\n", field_bytes.rstrip(b"\r\n"))
    result: list[bytes] = []
    for line in lines:
        while len(line) > limit:
            cut = max(line.rfind(b" ", 1, limit), line.rfind(b"\t", 1, limit))
            if cut <= 0:
                out.unfixable.append(f"{where}: header {name} has a line of {len(line)} octets without spaces")
                return field_bytes  # folding cannot make it acceptable: leave it as it is
            result.append(line[:cut])
            line = line[cut:]  # keeps the whitespace: folding = inserting a line break before it
        result.append(line)
    out.notes.append(f"{where}: header {name} folded (line over {limit} octets)")
    return eol.join(result) + eol


def _decode(body: bytes, cte: bytes) -> bytes | None:
    if cte in (b"", b"7bit", b"8bit", b"binary"):
        return body
    if cte == b"quoted-printable":
        return binascii.a2b_qp(body)
    if cte == b"base64":
        try:
            return base64.b64decode(b"".join(body.split()), validate=False)
        except (binascii.Error, ValueError):
            return None
    return None  # x-uuencode and friends: leave alone


def _qp(data: bytes) -> bytes | None:
    """Quoted-printable for text with CRLF line breaks kept as line breaks; None if the
    round trip would not give ``data`` back."""
    for istext in (True, False):
        enc = binascii.b2a_qp(data, quotetabs=False, istext=istext, header=False)
        enc = re.sub(rb"(?<!\r)\n", b"\r\n", enc)
        if binascii.a2b_qp(enc) == data or binascii.a2b_qp(enc.replace(b"\r\n", b"\n")) == data:
            return enc
    return None


def _reencode(
    fields: list[bytes], body: bytes, ctype: bytes, out: Fixed, where: str
) -> tuple[list[bytes], bytes] | None:
    cte = (_header(fields, b"content-transfer-encoding") or b"").lower()
    data = _decode(body, cte)
    if data is None:
        return None
    # the part's own content: what decoding the old body gives
    if ctype.startswith(b"text/"):
        new_cte, new_body = b"quoted-printable", _qp(data)
        if new_body is None:
            new_cte, new_body = b"base64", base64.encodebytes(data).replace(b"\n", b"\r\n")
    else:
        new_cte, new_body = b"base64", base64.encodebytes(data).replace(b"\n", b"\r\n")
    if _decode(new_body, new_cte) != data:
        return None
    eol = b"\r\n" if (fields and fields[-1].endswith(b"\r\n")) or b"\r\n" in body else b"\n"
    if eol == b"\n":
        new_body = new_body.replace(b"\r\n", b"\n")
    kept = [f for f in fields if not f.lower().startswith(b"content-transfer-encoding:")]
    kept.append(b"Content-Transfer-Encoding: " + new_cte + eol)
    # keep the body's final line break situation: QP/base64 output ends with a line break
    if not body.endswith((b"\r\n", b"\n")) and new_body.endswith(eol):
        new_body = new_body[: -len(eol)]
    old = cte.decode("ascii", "replace") or "7bit"
    out.notes.append(
        f"{where}: {ctype.decode('ascii', 'replace')} re-encoded from {old} to {new_cte.decode()} "
        f"(line of {longest_line(body)} octets; content unchanged)"
    )
    return kept, new_body
