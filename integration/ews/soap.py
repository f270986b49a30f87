"""SOAP plumbing of the EWS test server: namespaces, element builders, the schema
validator and fault/error documents.

Every element a request carries in its SOAP Body or Header, and every element a
response sends back, is validated against Microsoft's schemas (``schema/``), by
``SchemaValidator.problems``. The server records what does not validate; tests
assert the record is empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

import xmlschema
from lxml import etree

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NSMAP = {"s": SOAP, "m": M, "t": T}
SCHEMA_DIR = Path(__file__).parent / "schema"


def m(name: str) -> str:
    return f"{{{M}}}{name}"


def t(name: str) -> str:
    return f"{{{T}}}{name}"


def s(name: str) -> str:
    return f"{{{SOAP}}}{name}"


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = text
    return el


def el(tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    e = etree.Element(tag, {k: v for k, v in attrs.items() if v is not None}, nsmap=NSMAP)
    if text is not None:
        e.text = text
    return e


class SchemaValidator:
    """Microsoft's messages.xsd (+ types.xsd), loaded once per instance (about 2 s).
    Validation only reads the schema, so threads may validate at the same time."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR):
        self.schema = xmlschema.XMLSchema10(str(schema_dir / "messages.xsd"))
        self._lock = threading.Lock()
        self._elements = self.schema.maps.elements
        self.seconds = 0.0  # time spent validating (for performance notes)

    def problems(self, elements: Iterable[etree._Element]) -> list[str]:
        """Validation errors of each element (a global element of the EWS schemas)."""
        out: list[str] = []
        started = time.perf_counter()
        try:
            self._check(elements, out)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - started
        return out

    def _check(self, elements: Iterable[etree._Element], out: list[str]) -> None:
        for elem in elements:
            decl = self._elements.get(elem.tag)
            if decl is None:
                out.append(f"{elem.tag}: not an element of the EWS schemas")
                continue
            for err in decl.iter_errors(elem):
                out.append(f"{local(elem.tag)}: {err.reason or err} at {err.path or ''}")
                if len(out) > 20:
                    return


def envelope(body_child: etree._Element | None, version: str, header: bool = True) -> etree._Element:
    """A response envelope with ServerVersionInfo in the header."""
    env = el(s("Envelope"))
    if header:
        h = sub(env, s("Header"))
        sub(
            h,
            t("ServerVersionInfo"),
            MajorVersion="15",
            MinorVersion="1",
            MajorBuildNumber="2507",
            MinorBuildNumber="6",
            Version=version,
        )
    body = sub(env, s("Body"))
    if body_child is not None:
        body.append(body_child)
    return env


def fault(
    code: str, message: str, back_off_ms: int | None = None, faultcode: str = "a:ErrorServerBusy"
) -> etree._Element:
    """A SOAP fault carrying an EWS ResponseCode in its detail (how Exchange reports
    request-level errors such as ErrorServerBusy or ErrorSchemaValidation)."""
    env = etree.Element(s("Envelope"), nsmap={"s": SOAP})
    body = sub(env, s("Body"))
    f = sub(body, s("Fault"))
    fc = etree.SubElement(f, "faultcode", nsmap={"a": E})
    fc.text = faultcode if faultcode.startswith("a:") else f"a:{faultcode}"
    sub(f, "faultstring", message)
    detail = sub(f, "detail")
    rc = etree.SubElement(detail, f"{{{E}}}ResponseCode", nsmap={"e": E})
    rc.text = code
    msg = etree.SubElement(detail, f"{{{E}}}Message", nsmap={"e": E})
    msg.text = message
    if back_off_ms is not None:
        mx = etree.SubElement(detail, t("MessageXml"), nsmap={"t": T})
        v = sub(mx, t("Value"), str(back_off_ms), Name="BackOffMilliseconds")
        v.text = str(back_off_ms)
    return env


def response_message(
    tag: str,
    code: str = "NoError",
    text: str | None = None,
    back_off_ms: int | None = None,
    response_class: str | None = None,
) -> etree._Element:
    """A ``m:<Op>ResponseMessage`` with ResponseClass, MessageText and ResponseCode (and
    BackOffMilliseconds in MessageXml for ErrorServerBusy)."""
    cls = response_class or ("Success" if code == "NoError" else "Error")
    msg = el(m(tag), ResponseClass=cls)
    if code != "NoError":
        sub(msg, m("MessageText"), text or code)
    sub(msg, m("ResponseCode"), code)
    if back_off_ms is not None:
        mx = sub(msg, m("MessageXml"))
        sub(mx, t("Value"), str(back_off_ms), Name="BackOffMilliseconds")
    return msg


def to_bytes(env: etree._Element) -> bytes:
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")
