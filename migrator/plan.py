"""Load and validate plan files (YAML) and mailbox CSVs into :class:`migrator.model.Plan`.

Contracts:

* :func:`load_plan` reads only the plan file and the mailbox CSV it names. It never
  reads secrets: passwords stay references (``Secret(env=...)``, ``Secret(file=...)``)
  except those written in a mailbox CSV, which become ``Secret(value=...)`` (never
  shown by ``repr``).
* On any problem it raises :class:`~migrator.errors.PlanError` whose ``problems`` hold
  one line per problem, all of them collected, each naming the file, the line where
  there is one, and the field path: ``plans/acme.yaml:14: mailboxes[3].source.port:
  ...``. No input, however broken, gives another exception.
* Problem lines never contain a password (inputs are echoed only for scalar values of
  ordinary fields, never for unknown keys or CSV cells).
* :func:`check_secrets` is the only function here that looks at secrets (whether an
  environment variable is set, whether a password file is readable).

The plan format is documented in ``plans/README.md``.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from migrator.errors import PlanError
from migrator.files import read_bounded
from migrator.model import Account, Filters, FolderRules, MailboxJob, OAuth, Options, Plan, Secret

__all__ = ["check_secrets", "load_plan", "parse_size"]

Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound="BaseModel")

SUPPORTED_TYPES = ("imap", "pop3", "ews", "exchange-online", "maildir", "mbox", "thunderbird", "pst")
LATER_TYPES: tuple[str, ...] = ()
LOCAL_TYPES = ("maildir", "mbox", "thunderbird", "pst")
MAIL_TYPES = ("imap", "pop3", "exchange-online")  # host + port + TLS mode
EXO_HOST = "outlook.office365.com"
# default ports: (tls, starttls/none)
DEFAULT_PORTS = {"imap": (993, 143), "exchange-online": (993, 143), "pop3": (995, 110)}
MAX_YAML_NODES = 5_000_000  # after alias expansion: refuses "billion laughs" documents, admits 100,000 mailboxes
MAX_SIZE = 2**63 - 1  # sizes are stored in SQLite integers

_ID_RE = re.compile(r"[A-Za-z0-9@._+-]{1,200}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,199}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IDENT_RE = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_PASSWORD_MSG = "passwords may not be written in the plan; use password_env or password_file (or the mailbox CSV)"


# ---------------------------------------------------------------------------------
# Sizes, dates, regexes (shared validators)


def parse_size(text: str | int) -> int:
    """Bytes from an int or a string like ``"50MB"``, ``"10 KiB"``, ``"1.5 GB"``.

    Decimal units (B, KB/K, MB/M, GB/G, TB/T) are powers of 1000, binary ones (KiB,
    MiB, GiB, TiB) powers of 1024; case is ignored; fractions are rounded down.
    Raises ValueError for anything else, negatives and values above 2**63-1.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ValueError("expected a size: bytes as an integer or a string like '50MB'")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ValueError(
                f"invalid size {shown!r}: expected bytes or a number with a unit "
                "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )
        number, unit = match.group(1), (match.group(2) or "").lower()
        base = 1024 if "i" in unit else 1000
        mult = base ** "bkmgt".index(unit[0]) if unit else 1
        try:
            value = int(Decimal(number) * mult) if len(number) <= 40 else MAX_SIZE + 1
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            raise ValueError(f"invalid size {text[:40]!r}") from None
    if value < 0:
        raise ValueError("a size cannot be negative")
    if value > MAX_SIZE:
        raise ValueError("size too large (at most 2**63-1 bytes)")
    return value


def _size(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_SIZE:
        value = int(value)
    return parse_size(value)


def _when(value: Any) -> Any:
    """date / datetime / ISO string -> aware datetime (naive means UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("expected a date (2015-01-01) or datetime (2015-01-01T08:00:00Z)") from None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value is None:
        return None
    raise ValueError("expected a date (2015-01-01) or datetime (2015-01-01T08:00:00Z)")


def _compile(pattern: str) -> re.Pattern[str]:
    """re.compile with every failure turned into ValueError."""
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError, TypeError) as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None


def _check_regex(pattern: str) -> str:
    _compile(pattern)
    return pattern


def _check_env(name: str) -> str:
    if not _ENV_RE.fullmatch(name):
        raise ValueError("not a valid environment variable name")
    return name


Size = Annotated[int, BeforeValidator(_size)]
When = Annotated[datetime | None, BeforeValidator(_when)]
Regex = Annotated[str, AfterValidator(_check_regex)]
EnvName = Annotated[str, AfterValidator(_check_env)]
NonEmpty = Annotated[str, Field(min_length=1)]


# ---------------------------------------------------------------------------------
# Pydantic models: the shape of the YAML (types and field-local checks only)

_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True, allow_inf_nan=False)
_OPT = Options()


class _OAuth(BaseModel):
    model_config = _CONFIG
    flow: Literal["client_credentials", "device_code", "token_file"]
    tenant: NonEmpty | None = None
    client_id: NonEmpty | None = None
    client_secret_env: EnvName | None = None
    client_secret_file: NonEmpty | None = None
    token_file: NonEmpty | None = None
    authority: NonEmpty | None = None
    scopes: list[NonEmpty] = Field(default_factory=list)
    cache_file: NonEmpty | None = None
    validate_authority: bool = True

    @model_validator(mode="after")
    def _complete(self) -> _OAuth:
        if self.flow == "token_file" and not self.token_file:
            raise ValueError("token_file: required for flow token_file")
        if self.flow in ("client_credentials", "device_code") and not self.client_id:
            raise ValueError(f"client_id: required for flow {self.flow}")
        if self.flow in ("client_credentials", "device_code") and not (self.tenant or self.authority):
            raise ValueError(f"tenant: required for flow {self.flow} (or give authority)")
        if self.flow == "client_credentials" and not (self.client_secret_env or self.client_secret_file):
            raise ValueError("client_secret_env or client_secret_file: required for flow client_credentials")
        if self.client_secret_env and self.client_secret_file:
            raise ValueError("give at most one of client_secret_env and client_secret_file")
        return self


class _Endpoint(BaseModel):
    model_config = _CONFIG
    type: str
    host: NonEmpty | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    verify_tls: bool = True
    ca_file: NonEmpty | None = None
    timeout: float = Field(default=60.0, gt=0, le=86400)
    password_env: EnvName | None = None
    password_file: NonEmpty | None = None
    path: NonEmpty | None = None
    oauth: _OAuth | None = None
    # ews: the EWS URL (skips autodiscover), the server version (skips the version
    # probe), and whether the login account impersonates each mailbox
    service_endpoint: NonEmpty | None = None
    version: NonEmpty | None = None
    auth: Literal["password", "oauth2", "ntlm", "basic"] | None = None
    impersonation: bool = False
    login: NonEmpty | None = None  # ews with impersonation: the service account that logs in
    # exchange-online and other limits
    max_message_size: Size | None = None
    max_connections: int | None = Field(default=None, ge=1, le=1000)
    mark_mdn_sent: bool | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        kind = value.strip().lower()
        if kind in LATER_TYPES:
            raise ValueError(f"type {kind!r} is not supported yet")
        if kind not in SUPPORTED_TYPES:
            raise ValueError(f"unknown type {value[:40]!r}; expected one of {', '.join(SUPPORTED_TYPES)}")
        return kind


class _Side(BaseModel):
    """One side of a mailbox. Connection fields override the endpoint's when given."""

    model_config = _CONFIG
    endpoint: NonEmpty | None = None
    user: NonEmpty | None = None
    password_env: EnvName | None = None
    password_file: NonEmpty | None = None
    path: NonEmpty | None = None
    host: NonEmpty | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] | None = None
    verify_tls: bool | None = None
    ca_file: NonEmpty | None = None
    timeout: float | None = Field(default=None, gt=0, le=86400)


_OVERRIDABLE = ("host", "port", "security", "verify_tls", "ca_file", "timeout")


class _Rename(BaseModel):
    model_config = _CONFIG
    from_: Regex = Field(alias="from")
    to: str

    @model_validator(mode="after")
    def _valid_template(self) -> _Rename:
        try:
            _compile(self.from_).sub(self.to, "")
        except (re.error, IndexError, ValueError) as exc:
            raise ValueError(f"to: invalid replacement: {exc}") from None
        return self


class _Folders(BaseModel):
    model_config = _CONFIG
    include: list[Regex] = Field(default_factory=list)
    exclude: list[Regex] = Field(default_factory=list)
    rename: list[_Rename] = Field(default_factory=list)
    special_use_automap: bool = True


class _Filters(BaseModel):
    model_config = _CONFIG
    since: When = None
    before: When = None
    min_size: Size | None = None
    max_size: Size | None = None


class _Options(BaseModel):
    model_config = _CONFIG
    folders: _Folders = Field(default_factory=_Folders)
    filters: _Filters = Field(default_factory=_Filters)
    parallel_mailboxes: int = Field(default=_OPT.parallel_mailboxes, ge=1, le=1000)
    batch_bytes: Size = Field(default=_OPT.batch_bytes, ge=1)
    batch_messages: int = Field(default=_OPT.batch_messages, ge=1, le=1_000_000)
    retries: int = Field(default=_OPT.retries, ge=0, le=1000)
    folder_workers: int = Field(default=_OPT.folder_workers, ge=1, le=64)
    mode: Literal["copy", "mirror", "move"] = "copy"
    after_copy: Literal["keep", "delete"] = "keep"
    delete: bool = False
    max_delete_share: float = Field(default=_OPT.max_delete_share, ge=0, le=1)
    force_delete: bool = False
    pop3_folder: NonEmpty = "INBOX"
    pop3_seen: bool = False


class _Mailbox(BaseModel):
    model_config = _CONFIG
    id: str | None = None
    source: _Side = Field(default_factory=_Side)
    sources: list[_Side] | None = Field(default=None, min_length=1)  # several sources merged, in order
    destination: _Side = Field(default_factory=_Side)
    options: _Options | None = None

    @model_validator(mode="after")
    def _one_form(self) -> _Mailbox:
        if self.sources is not None and "source" in self.model_fields_set:
            raise ValueError("give either source or sources, not both")
        return self


class _Top(BaseModel):
    model_config = _CONFIG
    version: Literal[1]
    name: str | None = None
    state: NonEmpty | None = None
    endpoints: dict[str, Any] = Field(min_length=1)
    source: NonEmpty | None = None
    destination: NonEmpty | None = None
    defaults: dict[str, Any] | None = None
    mailboxes: list[Any] = Field(default_factory=list)
    mailboxes_csv: NonEmpty | None = None


def _known_keys() -> tuple[str, ...]:
    keys: set[str] = set()
    for model in (_Endpoint, _Side, _Rename, _Folders, _Filters, _Options, _Mailbox, _Top):
        for name, info in model.model_fields.items():
            keys.add(info.alias or name)
    return tuple(sorted(keys))


_KNOWN_KEYS = _known_keys()


# ---------------------------------------------------------------------------------
# YAML: parse once, keep the node tree to map field paths back to lines


class _Loader(yaml.SafeLoader):  # not libyaml's CSafeLoader: deep nesting crashes it (a segfault, seen here)
    """SafeLoader whose scalar conversion failures (an integer beyond Python's digit
    limit, 2015-02-30) become marked YAML errors instead of bare ValueErrors."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError, KeyError, AttributeError) as exc:
            # PyYAML's own constructors raise KeyError (!!bool maybe) and AttributeError
            # (!!timestamp x) on values that are not of their tag's type
            raise yaml.constructor.ConstructorError(None, None, f"invalid value: {exc}", node.start_mark) from None


def _count_nodes(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Node count with aliases expanded; -1 for a recursive alias. Stops past ``limit``."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = -1  # in progress: meeting it again means a cycle
    total = 1
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    for child in children:
        count = _count_nodes(child, memo, limit)
        if count < 0:
            return -1
        total += count
        if total > limit:
            break
    memo[key] = total
    return total


def _parse_yaml(text: str, display: str) -> tuple[yaml.Node | None, Any, list[tuple[Loc, int]]]:
    """(node tree, data, duplicate keys) of a single-document YAML text; PlanError for any
    failure. Duplicates are found before merge keys (``<<``) are flattened, so that an
    override of a merged key is not one."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None, []
        count = _count_nodes(node, {}, MAX_YAML_NODES)
        if count < 0:
            raise PlanError(f"{display}:{node.start_mark.line + 1}: recursive YAML aliases are not allowed")
        if count > MAX_YAML_NODES:
            raise PlanError(
                f"{display}: the plan has more than {MAX_YAML_NODES:,} YAML nodes (aliases expanded): "
                "use a mailbox CSV for very many mailboxes"
            )
        duplicates = _duplicate_keys(node, (), set())
        return node, loader.construct_document(node), duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}" if mark is not None else display
        what = " ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise PlanError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"{display}: invalid YAML: {exc}") from None
    except RecursionError:
        raise PlanError(f"{display}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, int] | None:
    """The child of ``node`` at ``part`` and the line that introduces it."""
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):  # the last duplicate wins, as in the data
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value, key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line + 1
    return None


def _line_of(root: yaml.Node, loc: Loc) -> int:
    """Line of the deepest node of ``loc`` found (a missing key: its parent's line)."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        found = _child(node, part)
        if found is None:
            break
        node, line = found
    return line


def _field_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if len(text) > 60:
            text = text[:57] + "..."
        if _IDENT_RE.fullmatch(text):
            out += f".{text}" if out else text
        else:
            out += f"[{json.dumps(text, ensure_ascii=False)}]"
    return out


def _password_keys(node: yaml.Node, loc: Loc, seen: set[int]) -> list[Loc]:
    """Locations of every mapping key named ``password`` (any case) in the tree."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    found: list[Loc] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if isinstance(name, str) and name.strip().lower() == "password":
                found.append((*loc, name))
            elif name is not None:
                found.extend(_password_keys(value, (*loc, name), seen))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.extend(_password_keys(item, (*loc, index), seen))
    return found


def _duplicate_keys(node: yaml.Node, loc: Loc, seen: set[int]) -> list[tuple[Loc, int]]:
    """(location, line) of each mapping key given twice in the same mapping."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    found: list[tuple[Loc, int]] = []
    if isinstance(node, yaml.MappingNode):
        names: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            if key.value in names:
                found.append(((*loc, key.value), key.start_mark.line + 1))
            names.add(key.value)
            found.extend(_duplicate_keys(value, (*loc, key.value), seen))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.extend(_duplicate_keys(item, (*loc, index), seen))
    return found


# ---------------------------------------------------------------------------------
# Problem collection


def _show(value: Any) -> str | None:
    """A short, safe rendering of a scalar input, or None when it should not be shown."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else "a very large number"
    if isinstance(value, float | str):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, date):
        return value.isoformat()
    return None


def _message(err: Mapping[str, Any]) -> str:
    """A readable message for one pydantic error (inputs shown only when safe)."""
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        loc = err["loc"]
        key = str(loc[-1]) if loc else ""
        if key in _KNOWN_KEYS:
            return "unknown key here"
        close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {_type_name(value)}"
    if kind == "list_type":
        return f"expected a list, got {_type_name(value)}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind.endswith("_parsing"):  # "..., unable to parse string as an integer": the input says it
        msg = msg.split(", ", 1)[0]
    shown = _show(value)
    if shown is None:
        return f"{msg}, got {_type_name(value)}"
    return f"{msg}, got {shown}"


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a value of type {type(value).__name__}"


@dataclass
class _Problems:
    """Problem lines of one load, in the order found."""

    display: str  # the plan file as the user named it
    root: yaml.Node | None
    lines: list[str] = field(default_factory=list)

    def line(self, loc: Loc) -> int | None:
        return _line_of(self.root, loc) if self.root is not None else None

    def origin(self, loc: Loc) -> str:
        line = self.line(loc)
        return f"{self.display}:{line}" if line is not None else self.display

    def at(self, loc: Loc, msg: str) -> None:
        path = _field_path(loc)
        self.lines.append(f"{self.origin(loc)}: {path}: {msg}" if path else f"{self.origin(loc)}: {msg}")

    def plain(self, text: str) -> None:
        self.lines.append(text)

    def pydantic(self, prefix: Loc, exc: ValidationError) -> None:
        for err in exc.errors(include_url=False):
            loc = (*prefix, *err["loc"])
            if err["type"] == "extra_forbidden" and loc and str(loc[-1]).strip().lower() == "password":
                continue  # reported once by the password scan
            self.at(loc, _message(err))


def _validate(model: type[_M], raw: Any, prefix: Loc, problems: _Problems) -> _M | None:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems.pydantic(prefix, exc)
        return None


# ---------------------------------------------------------------------------------
# Mailbox CSV

# normalised header (lower case, no spaces/underscores/hyphens) -> canonical column
_FORM_EXO = {
    "emailaddress": "destination_user",
    "username": "source_user",
    "password": "source_password",
    "id": "id",
}
_FORM_TWO_SIDED = {
    "sourceuser": "source_user",
    "sourcepassword": "source_password",
    "destinationuser": "destination_user",
    "destinationpassword": "destination_password",
    "id": "id",
}
_REQUIRED_EXO = ("emailaddress", "username", "password")
_REQUIRED_TWO_SIDED = ("sourceuser", "destinationuser")
_FORMS_HELP = (
    "expected EmailAddress,UserName,Password (Exchange Online form) or "
    "source_user,source_password,destination_user,destination_password (passwords optional); "
    "an id column is optional in both"
)


@dataclass(frozen=True, slots=True)
class _CsvRow:
    """One mailbox row of a CSV; ``labels`` maps canonical columns to header text."""

    line: int
    labels: Mapping[str, str]
    id: str | None
    source_user: str
    destination_user: str
    source_password: str | None = field(default=None, repr=False)
    destination_password: str | None = field(default=None, repr=False)


def _normalise_header(cell: str) -> str:
    return re.sub(r"[\s_\-]+", "", cell).lower()


def _csv_columns(header: list[str], display: str, line: int, problems: _Problems) -> dict[int, tuple[str, str]] | None:
    """Column index -> (canonical name, header text), or None after reporting problems."""
    named = [(i, _normalise_header(cell), cell.strip()) for i, cell in enumerate(header)]
    named = [entry for entry in named if entry[1]]  # empty header cells (trailing ';') are ignored
    keys = {norm for _, norm, _ in named}
    if keys & {"emailaddress", "username", "password"}:
        form, required = _FORM_EXO, _REQUIRED_EXO
    elif keys & set(_FORM_TWO_SIDED) - {"id"}:
        form, required = _FORM_TWO_SIDED, _REQUIRED_TWO_SIDED
    else:
        problems.plain(f"{display}:{line}: unknown header: {_FORMS_HELP}")
        return None
    columns: dict[int, tuple[str, str]] = {}
    seen: set[str] = set()
    before = len(problems.lines)
    for index, norm, label in named:
        shown = label if len(label) <= 40 else label[:37] + "..."
        if norm not in form:
            problems.plain(f"{display}:{line}: column {shown!r}: unknown column; {_FORMS_HELP}")
        elif norm in seen:
            problems.plain(f"{display}:{line}: column {shown!r}: given twice")
        else:
            seen.add(norm)
            columns[index] = (form[norm], label)
    for norm in required:
        if norm not in seen:
            wanted = {"emailaddress": "EmailAddress", "username": "UserName", "password": "Password"}
            name = wanted.get(norm, form[norm])
            problems.plain(f"{display}:{line}: column {name!r}: missing; {_FORMS_HELP}")
    return columns if len(problems.lines) == before else None


def _csv_row(
    row: list[str],
    width: int,
    columns: dict[int, tuple[str, str]],
    exo_form: bool,
    where: tuple[str, int],
    problems: _Problems,
) -> _CsvRow | None:
    """One data row, or None after reporting its problems (never echoing cell text).
    ``where`` is (file as displayed, line)."""
    line = where[1]
    at = f"{where[0]}:{line}"
    if len(row) < width or any(cell.strip() for cell in row[width:]):
        problems.plain(f"{at}: expected {width} fields, got {len(row)}")
        return None
    values = {canon: row[index] for index, (canon, _) in columns.items()}
    labels = {canon: label for canon, label in columns.values()}
    ok = True
    for canon in ("source_user", "destination_user"):
        if not values[canon].strip():
            problems.plain(f"{at}: {labels[canon]}: empty")
            ok = False
        elif _CONTROL_RE.search(values[canon].strip()):
            problems.plain(f"{at}: {labels[canon]}: contains control characters")
            ok = False
    if exo_form and not values["source_password"]:
        problems.plain(f"{at}: {labels['source_password']}: empty")
        ok = False
    if not ok:
        return None
    return _CsvRow(
        line=line,
        labels=labels,
        id=values.get("id", "").strip() or None,
        source_user=values["source_user"].strip(),
        destination_user=values["destination_user"].strip(),
        source_password=values.get("source_password") or None,
        destination_password=values.get("destination_password") or None,
    )


def _sniff_delimiter(header_line: str) -> str:
    try:
        return csv.Sniffer().sniff(header_line, delimiters=",;").delimiter
    except csv.Error:
        return ";" if header_line.count(";") > header_line.count(",") else ","


def _read_csv(path: str, display: str, problems: _Problems) -> list[_CsvRow]:
    """The rows of a mailbox CSV; problems (with file:line and column) are collected."""
    try:
        raw = read_bounded(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        problems.at(("mailboxes_csv",), f"cannot read mailbox CSV {display}: {reason}")
        return []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.plain(f"{display}: not UTF-8 text (invalid byte at offset {exc.start})")
        return []
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        problems.plain(f"{display}: empty file; {_FORMS_HELP}")
        return []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(first), strict=True)
    rows: list[_CsvRow] = []
    columns: dict[int, tuple[str, str]] | None = None
    width = 0
    exo_form = False
    end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if columns is None:
                columns = _csv_columns(cells, display, start, problems)
                if columns is None:
                    return []
                width = len(cells)
                exo_form = any(_normalise_header(label) == "emailaddress" for _, label in columns.values())
                continue
            row = _csv_row(cells, width, columns, exo_form, (display, start), problems)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        problems.plain(f"{display}:{end + 1}: invalid CSV: {exc}")
        return []
    return rows


# ---------------------------------------------------------------------------------
# Building the model


@dataclass(frozen=True, slots=True)
class _Ctx:
    display: str  # the plan file as named by the caller
    plan_dir: str  # absolute directory of the plan file
    problems: _Problems

    def absolute(self, value: str) -> str:
        """``value`` made absolute against the plan file's directory (``~`` expanded)."""
        return os.path.abspath(os.path.join(self.plan_dir, os.path.expanduser(value)))


Report = Callable[[str | None, str], None]  # (field or None for the side itself, message)


@dataclass(frozen=True, slots=True)
class _SideSpec:
    """One side of a mailbox as written (YAML or CSV), before endpoint defaults."""

    role: str  # "source" | "destination"
    endpoint: str | None
    explicit_endpoint: bool
    user: str | None
    secret: Secret | None
    path: str | None
    report: Report
    overrides: Mapping[str, Any] = field(default_factory=dict)  # endpoint fields set on the side


@dataclass(frozen=True, slots=True)
class _Endpoints:
    models: dict[str, _Endpoint | None]  # None: invalid, already reported
    secrets: Mapping[str, Secret | None]


def _secret_ref(obj: _Endpoint | _Side, loc: Loc, ctx: _Ctx) -> Secret | None:
    """The password reference of an endpoint or mailbox side (at most one is allowed)."""
    if obj.password_env is not None and obj.password_file is not None:
        ctx.problems.at((*loc, "password_file"), "give at most one of password_env and password_file")
        return None
    if obj.password_env is not None:
        return Secret(env=obj.password_env, origin=ctx.problems.origin((*loc, "password_env")))
    if obj.password_file is not None:
        return Secret(file=ctx.absolute(obj.password_file), origin=ctx.problems.origin((*loc, "password_file")))
    return None


def _safe_path_part(text: str) -> bool:
    return text not in (".", "..") and not any(ch in text for ch in "/\\\x00")


def _expand(raw: str, user: str | None, job_id: str, report: Report) -> str | None:
    """``{user}`` and ``{id}`` substituted in a local store path; None after a problem."""
    if "{user}" in raw:
        if not user:
            report("user", "required to expand {user} in the path")
            return None
        if not _safe_path_part(user):
            report("user", "cannot be put into a path ({user}): contains '/' or '\\' or is '.' or '..'")
            return None
        raw = raw.replace("{user}", user)
    return raw.replace("{id}", job_id)


def _account(spec: _SideSpec, job_id: str, endpoints: _Endpoints, ctx: _Ctx) -> Account | None:
    """The Account of one side, or None after reporting why it cannot be built."""
    name = spec.endpoint
    if name is None:
        spec.report(None, f"no endpoint: give `endpoint:` here or a plan-wide `{spec.role}:`")
        return None
    if name not in endpoints.models:
        if spec.explicit_endpoint:
            spec.report("endpoint", f"unknown endpoint {name[:60]!r} (known: {_known(endpoints)})")
        return None
    ep = endpoints.models[name]
    if ep is None:
        return None
    if spec.overrides:
        ep = ep.model_copy(update=dict(spec.overrides))
    user = spec.user
    if user is not None and _CONTROL_RE.search(user):
        spec.report("user", "contains control characters")
        return None
    secret = spec.secret or endpoints.secrets.get(name)
    if ep.type not in LOCAL_TYPES:
        return _network_account(spec, name, ep, user, secret, ctx)
    raw = spec.path or ep.path
    if raw is None:
        spec.report("path", f"required for {ep.type} endpoint {name!r}: give path here or on the endpoint")
        return None
    expanded = _expand(raw, user, job_id, spec.report)
    if expanded is None:
        return None
    return Account(type=ep.type, path=ctx.absolute(expanded), user=user, secret=secret, timeout=ep.timeout)


def _oauth(ep: _Endpoint, name: str, ctx: _Ctx) -> OAuth | None:
    o = ep.oauth
    if o is None:
        return None
    loc = ("endpoints", name, "oauth")
    client_secret = None
    if o.client_secret_env:
        client_secret = Secret(env=o.client_secret_env, origin=ctx.problems.origin((*loc, "client_secret_env")))
    elif o.client_secret_file:
        client_secret = Secret(
            file=ctx.absolute(o.client_secret_file), origin=ctx.problems.origin((*loc, "client_secret_file"))
        )
    return OAuth(
        flow=o.flow,
        tenant=o.tenant,
        client_id=o.client_id,
        client_secret=client_secret,
        token_file=ctx.absolute(o.token_file) if o.token_file else None,
        authority=o.authority,
        scopes=tuple(o.scopes),
        cache_file=ctx.absolute(o.cache_file) if o.cache_file else None,
        validate_authority=o.validate_authority,
    )


def _network_account(
    spec: _SideSpec, name: str, ep: _Endpoint, user: str | None, secret: Secret | None, ctx: _Ctx
) -> Account | None:
    """imap, pop3, exchange-online and ews sides: a user and a password or OAuth2."""
    ok = True
    if not user:
        spec.report("user", f"required for {ep.type} endpoint {name!r}")
        ok = False
    oauth = _oauth(ep, name, ctx)
    if ep.type == "exchange-online" and oauth is None and secret is None:
        spec.report(None, f"no credentials: exchange-online endpoint {name!r} needs `oauth:` (or a password for tests)")
        ok = False
    elif oauth is None and secret is None:
        spec.report(
            None, f"no password: give password_env or password_file here or on endpoint {name!r} (or `oauth:` there)"
        )
        ok = False
    if not ok:
        return None
    options: dict[str, Any] = {}
    for key in ("service_endpoint", "version", "auth", "login", "max_message_size", "max_connections", "mark_mdn_sent"):
        value = getattr(ep, key)
        if value is not None:
            options[key] = value
    if ep.impersonation:
        options["impersonation"] = True
    host, port = ep.host, ep.port
    if ep.type in DEFAULT_PORTS:
        host = host or (EXO_HOST if ep.type == "exchange-online" else None)
        tls_port, plain_port = DEFAULT_PORTS[ep.type]
        port = port or (tls_port if ep.security == "tls" else plain_port)
    return Account(
        type=ep.type,
        host=host,
        port=port,
        security=ep.security,
        verify_tls=ep.verify_tls,
        ca_file=ctx.absolute(ep.ca_file) if ep.ca_file else None,
        user=user,
        secret=secret,
        timeout=ep.timeout,
        options=options,
        oauth=oauth,
    )


def _known(endpoints: _Endpoints) -> str:
    # a name with blanks at its ends or unprintable characters (a NEL would end the
    # one-line error) is shown quoted and escaped
    names = sorted(n if n.isprintable() and n.strip() == n and n else repr(n) for n in map(str, endpoints.models))
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return shown or "none"


def _derived_id(source_user: str | None, destination_user: str | None, number: int) -> str:
    """Default job id: the source user, else the destination user, made id-safe."""
    user = source_user or destination_user
    if user:
        candidate = re.sub(r"[^A-Za-z0-9@._+-]", "_", user)[:200]
        if candidate not in (".", ".."):
            return candidate
    return f"mailbox-{number}"


def _id_problem(job_id: str) -> str | None:
    if not _ID_RE.fullmatch(job_id) or job_id in (".", ".."):
        return "invalid id: use 1-200 of A-Z a-z 0-9 @ . _ + - (not '.' or '..')"
    return None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _options(defaults: _Options | None, own: _Options | None) -> Options:
    """Plan defaults deep-merged with a mailbox's own options (lists are replaced)."""
    merged = _deep_merge(
        defaults.model_dump(exclude_unset=True, by_alias=True) if defaults else {},
        own.model_dump(exclude_unset=True, by_alias=True) if own else {},
    )
    opts = _Options.model_validate(merged)  # each part was valid, so the merge is too
    folders, filters = opts.folders, opts.filters
    return Options(
        folders=FolderRules(
            include=tuple(_compile(p) for p in folders.include),
            exclude=tuple(_compile(p) for p in folders.exclude),
            renames=tuple((_compile(r.from_), r.to) for r in folders.rename),
            special_use_automap=folders.special_use_automap,
        ),
        filters=Filters(
            since=filters.since,
            before=filters.before,
            min_size=filters.min_size,
            max_size=filters.max_size,
        ),
        parallel_mailboxes=opts.parallel_mailboxes,
        batch_bytes=opts.batch_bytes,
        batch_messages=opts.batch_messages,
        retries=opts.retries,
        folder_workers=opts.folder_workers,
        mode=opts.mode,
        after_copy=opts.after_copy,
        delete=opts.delete,
        max_delete_share=opts.max_delete_share,
        force_delete=opts.force_delete,
        pop3_folder=opts.pop3_folder,
        pop3_seen=opts.pop3_seen,
    )


@dataclass
class _JobBuilder:
    """Accumulates jobs from the inline list and the CSV, checking ids across both."""

    ctx: _Ctx
    endpoints: _Endpoints
    jobs: list[MailboxJob] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # id -> origin of its first use

    def add(
        self,
        job_id: str,
        id_report: Callable[[str], None],
        sides: tuple[_SideSpec, ...],
        options: Options,
        origin: str,
    ) -> None:
        """``sides``: the source(s) in order, then the destination last."""
        problem = _id_problem(job_id)
        if problem is not None:
            id_report(problem)
        elif job_id in self.ids:
            id_report(f"duplicate id {job_id!r} (first used at {self.ids[job_id]})")
        else:
            self.ids[job_id] = origin
        sources = [_account(side, job_id, self.endpoints, self.ctx) for side in sides[:-1]]
        destination = _account(sides[-1], job_id, self.endpoints, self.ctx)
        if destination is not None and sources and all(a is not None for a in sources):
            first, *rest = [a for a in sources if a is not None]
            self.jobs.append(MailboxJob(job_id, first, destination, options, origin, tuple(rest)))


def _inline_job(builder: _JobBuilder, top: _Top, index: int, mailbox: _Mailbox, options: Options) -> None:
    ctx, loc = builder.ctx, ("mailboxes", index)
    specs = []
    sides: list[tuple[str, _Side, Loc]] = (
        [("source", side, (*loc, "sources", i)) for i, side in enumerate(mailbox.sources)]
        if mailbox.sources is not None
        else [("source", mailbox.source, (*loc, "source"))]
    )
    sides.append(("destination", mailbox.destination, (*loc, "destination")))
    for role, side, side_loc in sides:

        def report(fld: str | None, msg: str, side_loc: Loc = side_loc) -> None:
            ctx.problems.at((*side_loc, fld) if fld else side_loc, msg)

        specs.append(
            _SideSpec(
                role=role,
                endpoint=side.endpoint or getattr(top, role),
                explicit_endpoint=side.endpoint is not None,
                user=side.user,
                secret=_secret_ref(side, side_loc, ctx),
                path=side.path,
                report=report,
                overrides={key: getattr(side, key) for key in _OVERRIDABLE if getattr(side, key) is not None},
            )
        )
    explicit = mailbox.id is not None
    job_id = mailbox.id if mailbox.id is not None else _derived_id(specs[0].user, specs[-1].user, index + 1)
    id_loc: Loc = (*loc, "id") if explicit else loc
    builder.add(job_id, lambda msg: ctx.problems.at(id_loc, msg), tuple(specs), options, ctx.problems.origin(loc))


def _csv_job(builder: _JobBuilder, top: _Top, row: _CsvRow, number: int, csv_display: str, options: Options) -> None:
    where = f"{csv_display}:{row.line}"
    problems = builder.ctx.problems
    specs = []
    for role in ("source", "destination"):
        user_label = row.labels[f"{role}_user"]

        def report(fld: str | None, msg: str, user_label: str = user_label, role: str = role) -> None:
            label = {"user": user_label, "path": f"{role} path", "endpoint": f"{role} endpoint"}.get(fld or "", role)
            problems.plain(f"{where}: {label}: {msg}")

        password = row.source_password if role == "source" else row.destination_password
        specs.append(
            _SideSpec(
                role=role,
                endpoint=getattr(top, role),
                explicit_endpoint=False,
                user=row.source_user if role == "source" else row.destination_user,
                secret=Secret(value=password, origin=where) if password is not None else None,
                path=None,
                report=report,
            )
        )
    id_label = row.labels.get("id") if row.id is not None else row.labels["source_user"]
    job_id = row.id if row.id is not None else _derived_id(row.source_user, row.destination_user, number)
    builder.add(
        job_id,
        lambda msg: problems.plain(f"{where}: {id_label}: {msg}"),
        (specs[0], specs[1]),
        options,
        where,
    )


def _check_endpoints(top: _Top, endpoints: _Endpoints, ctx: _Ctx) -> None:
    for name, ep in endpoints.models.items():
        if ep is not None and ep.type in ("imap", "pop3") and not ep.host:
            ctx.problems.at(("endpoints", name, "host"), f"required for type {ep.type}")
            endpoints.models[name] = None  # reported once here, not again per mailbox
        elif ep is not None and ep.type == "ews" and not (ep.host or ep.service_endpoint):
            ctx.problems.at(("endpoints", name, "service_endpoint"), "required for type ews (or give host)")
            endpoints.models[name] = None
    for role in ("source", "destination"):
        ref = getattr(top, role)
        if ref is not None and ref not in endpoints.models:
            ctx.problems.at((role,), f"unknown endpoint {ref[:60]!r} (known: {_known(endpoints)})")


def _build(
    top: _Top,
    endpoints: _Endpoints,
    defaults: _Options | None,
    mailboxes: list[_Mailbox | None],
    ctx: _Ctx,
) -> Plan:
    """Cross-field checks and conversion to the model (problems are collected in ctx)."""
    problems = ctx.problems
    _check_endpoints(top, endpoints, ctx)
    name = top.name if top.name is not None else Path(ctx.display).stem
    if top.name is not None and not _NAME_RE.fullmatch(top.name):
        problems.at(("name",), "invalid name: use letters, digits and @._+- (it names the state file)")
    plan_defaults = _options(defaults, None)
    builder = _JobBuilder(ctx, endpoints)
    for index, mailbox in enumerate(mailboxes):
        if mailbox is not None:
            own = _options(defaults, mailbox.options) if mailbox.options is not None else plan_defaults
            _inline_job(builder, top, index, mailbox, own)
    inputs: list[Path] = []
    if top.mailboxes_csv is not None:
        csv_display = str(Path(ctx.display).parent / top.mailboxes_csv)
        inputs.append(Path(ctx.absolute(top.mailboxes_csv)))
        if top.source is None or top.destination is None:
            problems.at(("mailboxes_csv",), "a mailbox CSV needs plan-wide `source:` and `destination:`")
        else:
            rows = _read_csv(ctx.absolute(top.mailboxes_csv), csv_display, problems)
            for number, row in enumerate(rows, start=len(mailboxes) + 1):
                _csv_job(builder, top, row, number, csv_display, plan_defaults)
    if not builder.jobs and not problems.lines:
        problems.at(("mailboxes",), "no mailboxes: give `mailboxes:` and/or `mailboxes_csv:`")
    if top.state is not None:
        state_path = Path(ctx.absolute(top.state))
    else:
        state_path = Path(os.path.abspath(os.path.join("state", f"{name}.db")))
    return Plan(
        name=name,
        jobs=tuple(builder.jobs),
        state_path=state_path,
        source_file=Path(ctx.display),
        inputs=tuple(inputs),
    )


_SEMANTIC_KEYS = frozenset(
    {"endpoints", "source", "destination", "mailboxes", "mailboxes_csv", "defaults", "state", "name"}
)


def _top(data: dict[Any, Any], problems: _Problems) -> _Top | None:
    """The top-level model. When the only problems are unknown keys or the version
    (already reported), a copy without them is used so that the rest is still checked."""
    try:
        return _Top.model_validate(data)
    except ValidationError as exc:
        problems.pydantic((), exc)
        bad = {err["loc"][0] if err["loc"] else None for err in exc.errors()}
        if None in bad or bad & _SEMANTIC_KEYS:
            return None
    cleaned = {key: value for key, value in data.items() if key not in bad}
    cleaned["version"] = 1
    try:
        return _Top.model_validate(cleaned)
    except ValidationError:  # pragma: no cover - only reported keys were removed
        return None


def _read_plan_text(display: str, path: str | Path) -> str:
    try:
        raw = read_bounded(path)
    except (OSError, ValueError) as exc:
        raise PlanError(f"{display}: cannot read plan: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{display}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def load_plan(path: str | Path) -> Plan:
    """Read, validate and convert a plan file (and the mailbox CSV it names).

    Relative paths in the plan are resolved against the plan file's directory; the
    default state path ``state/<name>.db`` against the current directory. Secrets
    stay references. Raises PlanError listing every problem found (one per line).
    """
    display = str(path)
    text = _read_plan_text(display, path)
    root, data, duplicates = _parse_yaml(text, display)
    if root is None:
        raise PlanError(f"{display}: the plan is empty")
    if not isinstance(data, dict):
        raise PlanError(
            f"{display}:{root.start_mark.line + 1}: the plan must be a mapping "
            f"(version, endpoints, mailboxes, ...), got {_type_name(data)}"
        )
    data = {key: value for key, value in data.items() if not (isinstance(key, str) and key.startswith("x-"))}
    problems = _Problems(display, root)
    for loc in _password_keys(root, (), set()):
        problems.at(loc, _PASSWORD_MSG)
    for loc, _line in duplicates:
        problems.at(loc, "key given twice")
    top = _top(data, problems)
    raw_endpoints = data.get("endpoints")
    models: dict[str, _Endpoint | None] = {}
    if isinstance(raw_endpoints, dict):
        for name, raw in raw_endpoints.items():
            models[str(name)] = _validate(_Endpoint, raw, ("endpoints", str(name)), problems)
    raw_defaults = data.get("defaults")
    defaults = _validate(_Options, raw_defaults, ("defaults",), problems) if isinstance(raw_defaults, dict) else None
    raw_mailboxes = data.get("mailboxes")
    mailboxes = [
        _validate(_Mailbox, raw, ("mailboxes", index), problems)
        for index, raw in enumerate(raw_mailboxes if isinstance(raw_mailboxes, list) else [])
    ]
    if top is None:
        raise PlanError(problems.lines)
    ctx = _Ctx(display, os.path.dirname(os.path.abspath(display)), problems)
    secrets = {name: _secret_ref(ep, ("endpoints", name), ctx) for name, ep in models.items() if ep is not None}
    plan = _build(top, _Endpoints(models, secrets), defaults, mailboxes, ctx)
    if problems.lines:
        raise PlanError(problems.lines)
    return plan


def _secret_problem(secret: Secret) -> str | None:
    """Why ``secret`` cannot be resolved, without reading more than one byte of it."""
    if secret.env is not None:
        value = os.environ.get(secret.env)
        if value is None:
            return f"environment variable {secret.env} is not set"
        return f"environment variable {secret.env} is empty" if value == "" else None
    if secret.file is not None:
        try:
            with open(secret.file, "rb") as handle:
                empty = handle.read(1) == b""
        except OSError as exc:
            return f"cannot read password file {secret.file}: {exc.strerror or exc}"
        return f"password file {secret.file} is empty" if empty else None
    return None if secret.value else "empty password"


def check_secrets(plan: Plan) -> list[str]:
    """One line per missing/empty environment variable or unreadable/empty password file
    that the plan's jobs need (each named once, with the mailboxes that need it).
    Values are never included. Empty list: every secret can be resolved."""
    users: dict[tuple[str | None, str | None], list[str]] = {}
    first: dict[tuple[str | None, str | None], Secret] = {}
    for job in plan.jobs:
        for account in (job.source, job.destination):
            secret = account.secret
            if secret is None or secret.value is not None:
                continue
            key = (secret.env, secret.file)
            first.setdefault(key, secret)
            if job.id not in users.setdefault(key, []):
                users[key].append(job.id)
    lines = []
    for key, secret in first.items():
        problem = _secret_problem(secret)
        if problem is not None:
            ids = users[key]
            more = f" and {len(ids) - 1} more" if len(ids) > 1 else ""
            lines.append(f"{secret.origin or plan.source_file}: {problem} (needed by {ids[0]}{more})")
    return lines
