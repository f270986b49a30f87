"""The EWS operations of the test server: parse a request element, act on the store,
build the response element.

Operations: ConvertId (exchangelib's version probe), GetFolder, FindFolder,
CreateFolder, CreateItem, GetItem, FindItem, SyncFolderItems, UpdateItem (flag
changes by tests) and DeleteItem. Each handler gets an ``Op`` context (who is
logged in, which mailbox the request acts on, fault hooks) and returns the
``m:<Op>Response`` element; request-level errors are raised as ``SoapFault``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from integration.ews import mime
from integration.ews.soap import M, T, el, local, m, response_message, sub, t
from integration.ews.store import (
    PR_INTERNET_MESSAGE_ID,
    PR_MESSAGE_DELIVERY_TIME,
    PR_MESSAGE_FLAGS,
    PR_MESSAGE_SIZE,
    PROPERTY_SETS,
    Folder,
    Item,
    Mailbox,
    PropKey,
    Store,
    format_time,
    parse_time,
)

PR_FLAG_STATUS = 0x1090
UNREADABLE_HEADER = b"X-Test-EWS-Unreadable:"  # GetItem cannot export such an item's MIME
FLAG_NAMES = {0: "NotFlagged", 1: "Complete", 2: "Flagged"}
FOLDER_TAGS = {"IPF.Appointment": "CalendarFolder", "IPF.Contact": "ContactsFolder", "IPF.Task": "TasksFolder"}


class SoapFault(Exception):
    """A request-level error, sent as a SOAP fault (HTTP 500)."""

    def __init__(self, code: str, message: str, back_off_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.back_off_ms = back_off_ms


@dataclass(slots=True)
class ItemOutcome:
    """What a fault hook decides for one item of a CreateItem: an error code instead of
    storing it (``store=False``), or an error reported although it was stored."""

    code: str
    back_off_ms: int | None = None
    store: bool = False


@dataclass
class Op:
    store: Store
    login: str
    mailbox: Mailbox
    version: str
    now: Callable[[], datetime]
    orders: dict[str, dict[str, int]]  # schema type -> element name -> position
    item_hook: Callable[[int, bytes], ItemOutcome | None] | None = None  # (index in batch, mime)
    codes: list[str] = field(default_factory=list)  # response codes sent, for the log

    # ------------------------------------------------------------------ ids
    def folder_from(self, elem: etree._Element) -> Folder | None:
        """A folder from a t:FolderId or t:DistinguishedFolderId element."""
        tag = local(elem.tag)
        if tag == "DistinguishedFolderId":
            fid = self.mailbox.distinguished.get(elem.get("Id", ""))
            return self.mailbox.folders.get(fid) if fid else None
        if tag == "FolderId":
            return self.mailbox.folders.get(elem.get("Id", ""))
        return None

    def check_mailbox_of(self, elem: etree._Element) -> None:
        """A DistinguishedFolderId may name another mailbox: the login must be allowed."""
        addr = elem.find(f"{{{T}}}Mailbox/{{{T}}}EmailAddress")
        if addr is not None and addr.text and addr.text.lower() != self.mailbox.smtp:
            raise SoapFault("ErrorAccessDenied", f"no access to {addr.text}")


# ---------------------------------------------------------------------- shapes
@dataclass(slots=True)
class Shape:
    base: str
    fields: list[str]  # FieldURI values
    ext: list[etree._Element]  # ExtendedFieldURI elements as requested
    mime: bool = False


def parse_shape(shape: etree._Element | None) -> Shape:
    if shape is None:
        return Shape("IdOnly", [], [])
    base = shape.findtext(t("BaseShape")) or "IdOnly"
    fields: list[str] = []
    ext: list[etree._Element] = []
    mime = (shape.findtext(t("IncludeMimeContent")) or "").lower() == "true"
    props = shape.find(t("AdditionalProperties"))
    if props is not None:
        for p in props:
            if local(p.tag) == "FieldURI":
                fields.append(p.get("FieldURI", ""))
            elif local(p.tag) == "ExtendedFieldURI":
                ext.append(p)
    return Shape(base, fields, ext, mime or "item:MimeContent" in fields)


def prop_key(uri: etree._Element) -> PropKey:
    """The identity of an extended property from its ExtendedFieldURI attributes."""
    tag = uri.get("PropertyTag")
    if tag is not None:
        return ("tag", int(tag, 0))
    guid = uri.get("PropertySetId")
    if guid is None:
        dist = uri.get("DistinguishedPropertySetId", "")
        guid = PROPERTY_SETS.get(dist, dist)
    guid = guid.lower()
    name = uri.get("PropertyName")
    if name is not None:
        return ("name", guid, name)
    return ("id", guid, int(uri.get("PropertyId", "0"), 0))


def item_prop(item: Item, key: PropKey) -> tuple[str, object] | None:
    """The value of an extended property, with the MAPI properties Exchange derives."""
    if key == ("tag", PR_MESSAGE_FLAGS):
        return ("Integer", str(item.flags))
    if key == ("tag", PR_MESSAGE_DELIVERY_TIME):
        return ("SystemTime", format_time(item.received))
    if key == ("tag", PR_MESSAGE_SIZE):
        return ("Integer", str(item.size))
    if key == ("tag", PR_INTERNET_MESSAGE_ID):
        return ("String", item.parsed.message_id) if item.parsed.message_id else None
    return item.props.get(key)


def _ordered(parent: etree._Element, children: list[etree._Element], order: dict[str, int]) -> None:
    for c in sorted(children, key=lambda c: order.get(local(c.tag), 10_000)):
        parent.append(c)


def item_xml(op: Op, folder: Folder, item: Item, shape: Shape) -> etree._Element:
    msg = el(t("Message"))
    kids: list[etree._Element] = []
    kids.append(el(t("ItemId"), Id=item.id, ChangeKey=_ck(item.change_key)))
    want = set(shape.fields)
    if shape.base in ("Default", "AllProperties"):
        want |= {"item:Subject", "item:DateTimeReceived", "item:Size", "message:IsRead", "item:ParentFolderId"}
    if shape.mime:
        kids.append(el(t("MimeContent"), base64.b64encode(item.export_mime()).decode(), CharacterSet="UTF-8"))
    simple: dict[str, tuple[str, Callable[[], str | None]]] = {
        "item:ItemClass": ("ItemClass", lambda: "IPM.Note"),
        "item:Subject": ("Subject", lambda: item.parsed.subject),
        "item:DateTimeReceived": ("DateTimeReceived", lambda: format_time(item.received)),
        "item:Size": ("Size", lambda: str(item.size)),
        "item:IsDraft": ("IsDraft", lambda: _bool(item.is_draft)),
        "item:DateTimeSent": ("DateTimeSent", lambda: format_time(item.parsed.date_sent or item.created)),
        "item:DateTimeCreated": ("DateTimeCreated", lambda: format_time(item.created)),
        "item:HasAttachments": ("HasAttachments", lambda: "false"),
        "item:LastModifiedTime": ("LastModifiedTime", lambda: format_time(item.created)),
        "message:InternetMessageId": ("InternetMessageId", lambda: item.parsed.message_id),
        "message:IsRead": ("IsRead", lambda: _bool(item.is_read)),
    }
    for uri in want:
        if uri in simple:
            name, value = simple[uri]
            v = value()
            if v is not None:
                kids.append(el(t(name), v))
        elif uri == "item:ParentFolderId":
            kids.append(el(t("ParentFolderId"), Id=folder.id, ChangeKey=_ck(folder.change_key)))
        elif uri == "item:Categories" and item.categories:
            cats = el(t("Categories"))
            for c in item.categories:
                sub(cats, t("String"), c)
            kids.append(cats)
        elif uri == "item:Flag":
            fl = el(t("Flag"))
            status = item.props.get(("tag", PR_FLAG_STATUS))
            sub(fl, t("FlagStatus"), FLAG_NAMES.get(int(str(status[1])) if status else 0, "NotFlagged"))
            kids.append(fl)
    for uri in shape.ext:
        got = item_prop(item, prop_key(uri))
        if got is None:
            continue
        ep = el(t("ExtendedProperty"))
        ep.append(_copy_uri(uri))
        _, value = got
        if isinstance(value, list):
            vals = sub(ep, t("Values"))
            for v in value:
                sub(vals, t("Value"), str(v))
        else:
            sub(ep, t("Value"), str(value))
        kids.append(ep)
    _ordered(msg, kids, op.orders["MessageType"])
    return msg


def _copy_uri(uri: etree._Element) -> etree._Element:
    out = el(t("ExtendedFieldURI"))
    for k, v in uri.attrib.items():
        out.set(k, v)
    return out


def folder_xml(op: Op, folder: Folder, shape: Shape) -> etree._Element:
    tag = FOLDER_TAGS.get(folder.folder_class or "", "Folder")
    f = el(t(tag))
    kids = [el(t("FolderId"), Id=folder.id, ChangeKey=_ck(folder.change_key))]
    want = set(shape.fields)
    if shape.base in ("Default", "AllProperties"):
        want |= {"folder:DisplayName", "folder:TotalCount", "folder:ChildFolderCount", "folder:UnreadCount"}
    mbx = op.mailbox
    if "folder:ParentFolderId" in want and folder.parent_id:
        parent = mbx.folders[folder.parent_id]
        kids.append(el(t("ParentFolderId"), Id=parent.id, ChangeKey=_ck(parent.change_key)))
    if "folder:FolderClass" in want and folder.folder_class:
        kids.append(el(t("FolderClass"), folder.folder_class))
    if "folder:DisplayName" in want:
        kids.append(el(t("DisplayName"), folder.name))
    if "folder:TotalCount" in want:
        kids.append(el(t("TotalCount"), str(len(folder.items))))
    if "folder:ChildFolderCount" in want:
        kids.append(el(t("ChildFolderCount"), str(len(mbx.children(folder.id)))))
    if "folder:DistinguishedFolderId" in want and folder.distinguished and tag == "Folder":
        kids.append(el(t("DistinguishedFolderId"), folder.distinguished))
    if "folder:UnreadCount" in want and tag == "Folder":
        kids.append(el(t("UnreadCount"), str(sum(1 for i in folder.items.values() if not i.is_read))))
    _ordered(f, kids, op.orders["FolderType"])
    return f


def _ck(n: int) -> str:
    return base64.b64encode(f"CK{n:08d}".encode()).decode()


def _bool(v: bool) -> str:
    return "true" if v else "false"


def _messages(op_name: str) -> tuple[etree._Element, etree._Element]:
    resp = el(m(f"{op_name}Response"))
    msgs = sub(resp, m("ResponseMessages"))
    return resp, msgs


def _error(op: Op, msgs: etree._Element, op_name: str, code: str, text: str | None = None, **kw: object) -> None:
    op.codes.append(code)
    msg = response_message(f"{op_name}ResponseMessage", code, text, **kw)  # type: ignore[arg-type]
    if op_name in ("CreateItem", "GetItem"):  # ItemInfoResponseMessageType: Items is required, empty on errors
        sub(msg, m("Items"))
    msgs.append(msg)


def _ok(op: Op, msgs: etree._Element, op_name: str) -> etree._Element:
    op.codes.append("NoError")
    msg = response_message(f"{op_name}ResponseMessage")
    msgs.append(msg)
    return msg


# ---------------------------------------------------------------------- operations
def convert_id(op: Op, req: etree._Element) -> etree._Element:
    resp, msgs = _messages("ConvertId")
    src = req.find(m("SourceIds"))
    for _ in src if src is not None else []:
        _error(op, msgs, "ConvertId", "ErrorInvalidIdMalformed", "Id is malformed.")
    return resp


def get_folder(op: Op, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("FolderShape")))
    resp, msgs = _messages("GetFolder")
    for ref in req.find(m("FolderIds")):
        if local(ref.tag) == "DistinguishedFolderId":
            op.check_mailbox_of(ref)
        folder = op.folder_from(ref)
        if folder is None:
            _error(
                op, msgs, "GetFolder", "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
            continue
        msg = _ok(op, msgs, "GetFolder")
        sub(msg, m("Folders")).append(folder_xml(op, folder, shape))
    return resp


def _page(view: etree._Element | None, total: int) -> tuple[int, int]:
    if view is None:
        return 0, total
    offset = int(view.get("Offset", "0"))
    limit = int(view.get("MaxEntriesReturned", str(total)))
    if view.get("BasePoint", "Beginning") == "End":
        offset = max(total - offset - limit, 0)
    return offset, limit


def find_folder(op: Op, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("FolderShape")))
    deep = req.get("Traversal") == "Deep"
    if req.find(m("Restriction")) is not None:
        raise SoapFault("ErrorInvalidRequest", "the test server does not evaluate FindFolder restrictions")
    resp, msgs = _messages("FindFolder")
    for ref in req.find(m("ParentFolderIds")):
        if local(ref.tag) == "DistinguishedFolderId":
            op.check_mailbox_of(ref)
        parent = op.folder_from(ref)
        if parent is None:
            _error(op, msgs, "FindFolder", "ErrorFolderNotFound")
            continue
        found = op.mailbox.descendants(parent.id) if deep else op.mailbox.children(parent.id)
        offset, limit = _page(req.find(m("IndexedPageFolderView")), len(found))
        page = found[offset : offset + limit]
        msg = _ok(op, msgs, "FindFolder")
        last = offset + len(page) >= len(found)
        root = sub(
            msg,
            m("RootFolder"),
            IndexedPagingOffset=str(offset + len(page)),
            TotalItemsInView=str(len(found)),
            IncludesLastItemInRange=_bool(last),
        )
        folders = sub(root, t("Folders"))
        for f in page:
            folders.append(folder_xml(op, f, shape))
    return resp


def create_folder(op: Op, req: etree._Element) -> etree._Element:
    ref = req.find(m("ParentFolderId"))[0]
    if local(ref.tag) == "DistinguishedFolderId":
        op.check_mailbox_of(ref)
    parent = op.folder_from(ref)
    resp, msgs = _messages("CreateFolder")
    for spec in req.find(m("Folders")):
        if parent is None:
            _error(op, msgs, "CreateFolder", "ErrorParentFolderNotFound")
            continue
        name = spec.findtext(t("DisplayName")) or ""
        cls = spec.findtext(t("FolderClass"))
        if not name.strip():
            _error(op, msgs, "CreateFolder", "ErrorInvalidPropertySet", "A folder needs a display name.")
            continue
        made = op.mailbox.create_folder(parent.id, name, cls)
        if made is None:
            _error(op, msgs, "CreateFolder", "ErrorFolderExists", "A folder with the specified name already exists.")
            continue
        msg = _ok(op, msgs, "CreateFolder")
        fl = sub(msg, m("Folders"))
        out = sub(fl, t(FOLDER_TAGS.get(cls or "", "Folder")))
        sub(out, t("FolderId"), Id=made.id, ChangeKey=_ck(made.change_key))
    return resp


def _props_of(spec: etree._Element) -> dict[PropKey, tuple[str, object]]:
    props: dict[PropKey, tuple[str, object]] = {}
    for ep in spec.findall(t("ExtendedProperty")):
        uri = ep.find(t("ExtendedFieldURI"))
        key = prop_key(uri)
        typ = uri.get("PropertyType", "")
        vals = ep.find(t("Values"))
        if vals is not None:
            props[key] = (typ, [v.text or "" for v in vals])
        else:
            props[key] = (typ, ep.findtext(t("Value")) or "")
    return props


def create_item(op: Op, req: etree._Element) -> etree._Element:
    disposition = req.get("MessageDisposition")
    ref_parent = req.find(m("SavedItemFolderId"))
    folder = op.folder_from(ref_parent[0]) if ref_parent is not None else None
    resp, msgs = _messages("CreateItem")
    if disposition != "SaveOnly":
        raise SoapFault("ErrorInvalidRequest", f"the test server only saves (MessageDisposition {disposition})")
    for index, spec in enumerate(req.find(m("Items"))):
        if folder is None:
            _error(op, msgs, "CreateItem", "ErrorFolderNotFound")
            continue
        if local(spec.tag) != "Message":
            _error(op, msgs, "CreateItem", "ErrorInvalidItemForOperationCreateItem")
            continue
        mime_text = spec.findtext(t("MimeContent"))
        try:
            raw = base64.b64decode(mime_text or "", validate=True)
        except (binascii.Error, ValueError):
            _error(op, msgs, "CreateItem", "ErrorCorruptData", "MimeContent is not base64")
            continue
        outcome = op.item_hook(index, raw) if op.item_hook else None
        if outcome is not None and not outcome.store:
            _error(op, msgs, "CreateItem", outcome.code, f"injected {outcome.code}", back_off_ms=outcome.back_off_ms)
            continue
        quota = op.mailbox.quota_bytes
        if quota is not None and op.mailbox.used_bytes() + len(raw) > quota:
            _error(op, msgs, "CreateItem", "ErrorQuotaExceeded", "The mailbox quota has been exceeded.")
            continue
        is_read_text = spec.findtext(t("IsRead"))
        cats = [c.text or "" for c in spec.findall(f"{t('Categories')}/{t('String')}")]
        item = op.mailbox.add_item(
            folder,
            raw,
            _props_of(spec),
            None if is_read_text is None else is_read_text.strip() in ("true", "1"),
            cats,
            op.now(),
        )
        if outcome is not None:  # stored, but the answer says otherwise
            _error(op, msgs, "CreateItem", outcome.code, f"injected {outcome.code}", back_off_ms=outcome.back_off_ms)
            continue
        msg = _ok(op, msgs, "CreateItem")
        items = sub(msg, m("Items"))
        out = sub(items, t("Message"))
        sub(out, t("ItemId"), Id=item.id, ChangeKey=_ck(item.change_key))
    return resp


def get_item(op: Op, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("ItemShape")))
    resp, msgs = _messages("GetItem")
    for ref in req.find(m("ItemIds")):
        found = op.mailbox.find_item(ref.get("Id", ""))
        if found is None:
            _error(op, msgs, "GetItem", "ErrorItemNotFound", "The specified object was not found in the store.")
            continue
        folder, item = found
        if shape.mime and UNREADABLE_HEADER in mime.split(item.mime)[0]:
            _error(op, msgs, "GetItem", "ErrorMimeContentConversionFailed", "Content conversion failed.")
            continue
        msg = _ok(op, msgs, "GetItem")
        sub(msg, m("Items")).append(item_xml(op, folder, item, shape))
    return resp


# ---------------------------------------------------------------------- restrictions
def _path_value(path: etree._Element, item: Item) -> object | None:
    tag = local(path.tag)
    if tag == "ExtendedFieldURI":
        got = item_prop(item, prop_key(path))
        return None if got is None else got[1]
    if tag == "FieldURI":
        uri = path.get("FieldURI")
        if uri == "message:InternetMessageId":
            return item.parsed.message_id
        if uri == "item:Subject":
            return item.parsed.subject
        if uri == "message:IsRead":
            return _bool(item.is_read)
        if uri == "item:DateTimeReceived":
            return format_time(item.received)
    raise SoapFault("ErrorUnsupportedPathForQuery", f"the test server cannot restrict on {etree.tostring(path)!r}")


def _constant(expr: etree._Element) -> str:
    c = expr.find(f"{t('FieldURIOrConstant')}/{t('Constant')}")
    if c is None:
        raise SoapFault("ErrorInvalidRequest", "only constants are supported as comparison operands")
    return c.get("Value", "")


def _compare(a: object, b: str) -> int:
    sa = str(a)
    try:
        fa, fb = float(sa), float(b)
        return (fa > fb) - (fa < fb)
    except ValueError:
        pass
    if sa.endswith("Z") and b.endswith("Z"):
        ta, tb = parse_time(sa), parse_time(b)
        return (ta > tb) - (ta < tb)
    return (sa > b) - (sa < b)


def matches(expr: etree._Element, item: Item) -> bool:
    kind = local(expr.tag)
    if kind == "And":
        return all(matches(e, item) for e in expr)
    if kind == "Or":
        return any(matches(e, item) for e in expr)
    if kind == "Not":
        return not matches(expr[0], item)
    if kind == "Exists":
        return _path_value(expr[0], item) is not None
    if kind in (
        "IsEqualTo",
        "IsNotEqualTo",
        "IsGreaterThan",
        "IsGreaterThanOrEqualTo",
        "IsLessThan",
        "IsLessThanOrEqualTo",
    ):
        value = _path_value(expr[0], item)
        if value is None:
            return kind == "IsNotEqualTo"
        c = _compare(value, _constant(expr))
        return {
            "IsEqualTo": c == 0,
            "IsNotEqualTo": c != 0,
            "IsGreaterThan": c > 0,
            "IsGreaterThanOrEqualTo": c >= 0,
            "IsLessThan": c < 0,
            "IsLessThanOrEqualTo": c <= 0,
        }[kind]
    if kind == "Contains":
        value = _path_value(expr[0], item)
        const = expr.find(t("Constant"))
        return value is not None and const is not None and const.get("Value", "").lower() in str(value).lower()
    raise SoapFault("ErrorInvalidRequest", f"the test server does not evaluate {kind}")


def find_item(op: Op, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("ItemShape")))
    if shape.mime:
        raise SoapFault("ErrorInvalidPropertyRequest", "MimeContent cannot be requested by FindItem")
    restriction = req.find(m("Restriction"))
    resp, msgs = _messages("FindItem")
    for ref in req.find(m("ParentFolderIds")):
        if local(ref.tag) == "DistinguishedFolderId":
            op.check_mailbox_of(ref)
        folder = op.folder_from(ref)
        if folder is None:
            _error(op, msgs, "FindItem", "ErrorFolderNotFound")
            continue
        found = list(folder.items.values())
        if restriction is not None and len(restriction):
            found = [i for i in found if matches(restriction[0], i)]
        offset, limit = _page(req.find(m("IndexedPageItemView")), len(found))
        page = found[offset : offset + limit]
        msg = _ok(op, msgs, "FindItem")
        root = sub(
            msg,
            m("RootFolder"),
            IndexedPagingOffset=str(offset + len(page)),
            TotalItemsInView=str(len(found)),
            IncludesLastItemInRange=_bool(offset + len(page) >= len(found)),
        )
        items = sub(root, t("Items"))
        for i in page:
            items.append(item_xml(op, folder, i, shape))
    return resp


# ---------------------------------------------------------------------- sync
def encode_state(folder: Folder, seq: int) -> str:
    return base64.b64encode(json.dumps({"f": folder.id, "g": folder.generation, "n": seq}).encode()).decode()


def decode_state(text: str, folder: Folder) -> int | None:
    """The sequence number a sync state stands for, or None when the folder does not accept it."""
    try:
        data = json.loads(base64.b64decode(text, validate=True))
        if data["f"] != folder.id or data["g"] != folder.generation:
            return None
        return int(data["n"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def sync_folder_items(op: Op, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("ItemShape")))
    ref = req.find(m("SyncFolderId"))[0]
    if local(ref.tag) == "DistinguishedFolderId":
        op.check_mailbox_of(ref)
    folder = op.folder_from(ref)
    resp, msgs = _messages("SyncFolderItems")
    if folder is None:
        _error(op, msgs, "SyncFolderItems", "ErrorFolderNotFound")
        return resp
    state_text = req.findtext(m("SyncState"))
    since = 0
    if state_text:
        got = decode_state(state_text, folder)
        if got is None:
            _error(op, msgs, "SyncFolderItems", "ErrorInvalidSyncStateData", "Synchronization state data is corrupt")
            return resp
        since = got
    limit = int(req.findtext(m("MaxChangesReturned")) or "100")
    ignore = {i.get("Id") for i in req.find(m("Ignore"))} if req.find(m("Ignore")) is not None else set()
    changes: list[tuple[int, str, object]] = []
    for item in folder.items.values():
        if item.seq > since and item.id not in ignore:
            changes.append((item.seq, "Create" if item.created_seq > since else "Update", item))
    for item_id, (created, deleted) in folder.tombstones.items():
        if deleted > since and created <= since:
            changes.append((deleted, "Delete", item_id))
    changes.sort(key=lambda c: c[0])
    page = changes[:limit]
    last = len(page) == len(changes)
    new_seq = folder.seq if last else page[-1][0]
    msg = _ok(op, msgs, "SyncFolderItems")
    sub(msg, m("SyncState"), encode_state(folder, new_seq))
    sub(msg, m("IncludesLastItemInRange"), _bool(last))
    ch = sub(msg, m("Changes"))
    for _, kind, what in page:
        c = sub(ch, t(kind))
        if kind == "Delete":
            sub(c, t("ItemId"), Id=str(what), ChangeKey=_ck(0))
        else:
            assert isinstance(what, Item)
            c.append(item_xml(op, folder, what, shape))
    return resp


def delete_item(op: Op, req: etree._Element) -> etree._Element:
    resp, msgs = _messages("DeleteItem")
    for ref in req.find(m("ItemIds")):
        found = op.mailbox.find_item(ref.get("Id", ""))
        if found is None:
            _error(op, msgs, "DeleteItem", "ErrorItemNotFound")
            continue
        folder, item = found
        op.mailbox.delete_item(folder, item.id)
        _ok(op, msgs, "DeleteItem")
    return resp


HANDLERS: dict[str, Callable[[Op, etree._Element], etree._Element]] = {
    "ConvertId": convert_id,
    "GetFolder": get_folder,
    "FindFolder": find_folder,
    "CreateFolder": create_folder,
    "CreateItem": create_item,
    "GetItem": get_item,
    "FindItem": find_item,
    "SyncFolderItems": sync_folder_items,
    "DeleteItem": delete_item,
}

__all__ = ["HANDLERS", "ItemOutcome", "M", "Op", "SoapFault", "T"]
