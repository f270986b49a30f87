"""A cache of validated plans, so that a nightly run of an unchanged plan skips YAML
parsing and pydantic validation (importing pydantic and building the plan models is
about 0.1 s: a third of a no-change run of a 10,000-message mailbox).

Contracts:

* ``load(path)`` returns what ``migrator.plan.load_plan(path)`` would return. A cached
  plan is used only when everything it was made from is unchanged: the plan file's
  bytes, its absolute path, the current directory (the default state path depends
  on it), the bytes of every other input (the mailbox CSV), and the code that reads
  plans (``plan.py`` and ``model.py``). Anything else is a miss, and a miss is a
  plain ``load_plan``: same result, same errors (PlanError, exit 2).
* Nothing secret is ever written: a plan holding a password value (a mailbox CSV's
  password column) is not cached. Other secrets are references (an environment
  variable's name, a file's path) and are resolved later, at connection time.
* The cache lives in ``$MIGRATOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/migrator``,
  else ``~/.cache/migrator`` (directory 0700, files 0600, written atomically). A
  file not owned by this user or writable by others is ignored (a pickle must come
  from us). A cache that cannot be read or written (read-only home in a container)
  only costs the time it would have saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pickle
import stat
from pathlib import Path
from typing import Any

from migrator.errors import PlanError
from migrator.files import read_bounded
from migrator.model import Plan, Secret

FORMAT = b"migrator-plan-cache-1"
MAX_BYTES = 64 * 1024 * 1024


def cache_dir() -> Path:
    explicit = os.environ.get("MIGRATOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "migrator"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _code_fingerprint() -> bytes:
    """The bytes of the modules that decide what a plan means."""
    parts = [FORMAT]
    for name in ("migrator.plan", "migrator.model"):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        parts.append(Path(origin).read_bytes() if origin else name.encode())
    return b"\0".join(parts)


def _key(path: Path, plan_bytes: bytes) -> str:
    h = hashlib.sha256(_code_fingerprint())
    for part in (str(path.resolve()).encode(), os.getcwd().encode(), plan_bytes):
        h.update(b"\0" + _sha(part).encode())
    return h.hexdigest()


def holds_secret_value(obj: Any) -> bool:
    """Whether ``obj`` (a Plan, its dataclasses, tuples, dicts) holds a password value."""
    if isinstance(obj, Secret):
        return obj.value is not None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return any(holds_secret_value(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, (tuple, list, frozenset, set)):
        return any(holds_secret_value(x) for x in obj)
    if isinstance(obj, dict):
        return any(holds_secret_value(v) for v in obj.values())
    return False


def _read_own(file: Path) -> bytes | None:
    """The file's bytes if it is a regular file of ours that nobody else can write."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        if st.st_size > MAX_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def _inputs_unchanged(inputs: list[tuple[str, str]]) -> bool:
    for name, digest in inputs:
        try:
            if _sha(Path(name).read_bytes()) != digest:
                return False
        except OSError:
            return False
    return True


def _lookup(file: Path) -> Plan | None:
    raw = _read_own(file)
    if raw is None:
        return None
    try:
        entry = pickle.loads(raw)
        plan, inputs = entry["plan"], entry["inputs"]
    except Exception:  # a damaged or foreign cache file is a miss
        return None
    if not isinstance(plan, Plan) or not _inputs_unchanged(inputs):
        return None
    return plan


def _store(file: Path, plan: Plan) -> None:
    if holds_secret_value(plan):
        return
    try:
        inputs = [(str(p), _sha(p.read_bytes())) for p in plan.inputs]
        data = pickle.dumps({"plan": plan, "inputs": inputs}, protocol=pickle.HIGHEST_PROTOCOL)
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, file)
    except OSError:
        return  # a read-only or full cache directory only costs the time it saves


def _small_file(path: Path) -> bytes | None:
    """The plan file's bytes, or None: ``load_plan`` then reads it again and reports
    what is wrong with it."""
    try:
        return read_bounded(path)
    except (OSError, ValueError):
        return None


def load(path: str | Path) -> Plan:
    """The plan at ``path``, from the cache when nothing it was made from changed;
    otherwise validated by ``load_plan`` (and cached). Raises PlanError like it."""
    path = Path(path)
    file: Path | None = None
    plan_bytes = _small_file(path)
    if plan_bytes is not None:
        try:
            file = cache_dir() / "plans" / f"{_key(path, plan_bytes)}.pickle"
        except (OSError, RuntimeError):  # no home directory, an unresolvable path
            file = None
    if file is not None:
        cached = _lookup(file)
        if cached is not None:
            return cached
    from migrator.plan import load_plan  # pydantic and YAML: only on a miss

    plan = load_plan(path)
    if file is not None and plan_bytes == _small_file(path):  # not changed while read
        _store(file, plan)
    return plan


__all__ = ["PlanError", "cache_dir", "holds_secret_value", "load"]
