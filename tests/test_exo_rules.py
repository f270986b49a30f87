"""Exchange Online's rules that need no server: long-line re-encoding (content unchanged),
reserved folder names, and the engine's adapt hook (a destination that changes a
message reports it; a dry run previews it without writing)."""

from __future__ import annotations

import base64
import email
import email.policy
import os
import random

import pytest

from migrator.connectors.exo import RESERVED_NAMES, adapt_message
from migrator.connectors.longlines import fix_long_lines, longest_line
from migrator.folders import map_folders
from migrator.model import Capabilities, FolderInfo, FolderRules, MessageMeta, crlf_size
from migrator.transfer import DryRunDestination, adapt_items

LIMIT = 1000


def leaves(raw: bytes) -> list[tuple[str, bytes]]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.walk() if not p.is_multipart()]


def headers(raw: bytes) -> list[tuple[str, str]]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [(k, " ".join(v.split())) for k, v in msg.items()]


def long_text(rng: random.Random, n: int) -> bytes:
    words = ["alpha", "beta", "Größe", "naïve", "日本", "x" * 30, "=", "\t", " ", "end."]
    return "".join(rng.choice(words) + " " for _ in range(n)).encode()


CASES = {
    "plain 7bit": lambda rng: b"Subject: s\r\nMessage-ID: <a@b>\r\n\r\n" + long_text(rng, 3000) + b"\r\nbye\r\n",
    "8bit html in alternative": lambda rng: (
        b'Content-Type: multipart/alternative; boundary="=_b"\r\nMIME-Version: 1.0\r\n\r\npre\r\n--=_b\r\n'
        b"Content-Type: text/plain\r\n\r\nhi\r\n--=_b\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n<p>" + long_text(rng, 2500) + b"</p>\r\n--=_b--\r\nepilogue\r\n"
    ),
    "one-line base64 attachment": lambda rng: (
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(os.urandom(5000))
        + b"\r\n--XX--\r\n"
    ),
    "broken quoted-printable": lambda rng: (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"=C3=A4" * 600
        + b"\r\n"
    ),
    "attached message": lambda rng: (
        b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n'
        b"Subject: inner\r\nContent-Type: text/plain\r\n\r\n" + long_text(rng, 2000) + b"\r\n--o--\r\n"
    ),
    "long header": lambda rng: (
        b"To: " + b", ".join(b"user%d@example.test" % i for i in range(300)) + b"\r\nSubject: s\r\n\r\nbody\r\n"
    ),
    "no final line break": lambda rng: b"Subject: s\r\n\r\n" + long_text(rng, 1500),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fixed_messages_have_short_lines_and_the_same_content(name: str, seed: int) -> None:
    raw = CASES[name](random.Random(seed))
    assert longest_line(raw) > LIMIT
    fixed = fix_long_lines(raw, LIMIT)
    assert fixed.notes and not fixed.unfixable
    assert longest_line(fixed.raw) <= LIMIT
    assert leaves(fixed.raw) == leaves(raw)  # decoded content of every part unchanged
    before = [(k, v) for k, v in headers(raw) if k.lower() != "content-transfer-encoding"]
    after = [(k, v) for k, v in headers(fixed.raw) if k.lower() != "content-transfer-encoding"]
    assert after == before
    assert fix_long_lines(fixed.raw, LIMIT).raw == fixed.raw  # idempotent
    if name == "8bit html in alternative":  # untouched parts stay byte for byte
        assert fixed.raw.startswith(raw[: raw.index(b"Content-Type: text/html")])
        assert fixed.raw.endswith(b"\r\n--=_b--\r\nepilogue\r\n")


def test_short_messages_are_left_alone() -> None:
    raw = b"Subject: s\r\n\r\n" + b"x" * LIMIT + b"\r\n"
    assert fix_long_lines(raw, LIMIT).raw is raw
    meta = MessageMeta(id="1", size=crlf_size(raw))
    assert adapt_message(meta, raw, LIMIT) == (raw, None)


def test_unfixable_lines_are_reported_not_hidden() -> None:
    raw = b"X-Blob: " + b"y" * 3000 + b"\r\nSubject: s\r\n\r\nbody\r\n"
    got, note = adapt_message(MessageMeta(id="1", size=crlf_size(raw)), raw, LIMIT)
    assert got == raw and note is not None and "cannot be fixed" in note and "X-Blob" in note


def test_reserved_names_are_renamed_with_a_note() -> None:
    caps = Capabilities(reserved_names=RESERVED_NAMES, forbidden_name_chars="")
    sources = [
        FolderInfo(("INBOX",), validity=1),
        FolderInfo(("Calendar",), validity=1),
        FolderInfo(("calendar", "2019"), validity=1),
        FolderInfo(("Projects", "Contacts"), validity=1),
        FolderInfo(("Sent Items",), "\\Sent", validity=1),
    ]
    plan = map_folders(sources, [], FolderRules(), caps)
    dest = {fm.source.path: (fm.dest_path, fm.notes) for fm in plan.maps}
    assert dest[("Calendar",)][0] == ("Calendar (mail)",)
    assert "keeps 'Calendar' for itself" in dest[("Calendar",)][1][-1]
    assert dest[("calendar", "2019")][0] == ("calendar (mail)", "2019")
    assert dest[("Projects", "Contacts")][0] == ("Projects", "Contacts")  # only top-level names are Exchange's
    assert dest[("INBOX",)][0] == ("INBOX",)
    plain = map_folders(sources, [], FolderRules(), Capabilities())
    assert {fm.dest_path for fm in plain.maps} >= {("Calendar",)}


class Recorder:
    """A destination that re-encodes like Exchange Online and records appends."""

    def __init__(self) -> None:
        self.capabilities = Capabilities(adapts_messages=True, max_line_length=LIMIT)
        self.appended: list[bytes] = []

    def adapt(self, meta: MessageMeta, raw: bytes) -> tuple[bytes, str | None]:
        return adapt_message(meta, raw, LIMIT)


def test_adapt_items_reports_each_change_once() -> None:
    short = b"Subject: a\r\n\r\nok\r\n"
    long = CASES["plain 7bit"](random.Random(5))
    items = [(MessageMeta(id="1", size=crlf_size(short)), short), (MessageMeta(id="2", size=crlf_size(long)), long)]
    seen: list[tuple[str, str]] = []
    dst = Recorder()
    out = adapt_items(dst, items, lambda m, note: seen.append((m.id, note)))  # type: ignore[arg-type]
    assert out[0] == items[0] and out[1][0] == items[1][0] and out[1][1] != long
    assert [i for i, _ in seen] == ["2"] and "quoted-printable" in seen[0][1]
    assert adapt_items(DryRunDestination(dst), items, None)[1][1] == out[1][1]  # type: ignore[arg-type]
    assert dst.appended == []
