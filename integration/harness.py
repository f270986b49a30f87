"""Shared helpers of the robustness suites (crash, network faults, hostile messages,
quota, secrets): run the CLI in a subprocess, write plans, load sources, and check
the two outcomes every suite asserts, "exactly once at the destination" and "the
state DB is consistent"."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.corpus import FOLDERS, CorpusMessage, load_maildir
from integration.dovecot import DovecotServer
from integration.snapshot import MessageFacts, Snapshot, snapshot_imap

PW = "pw-Robust-7731"  # every test account's password in these suites


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "MIGRATOR_SOURCE_PASSWORD": PW,
        "MIGRATOR_DEST_PASSWORD": PW,
        "SRC_PW": PW,
        "DST_PW": PW,
        **(extra or {}),
    }


def migrator(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m migrator ARGS`` with the test passwords in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        cwd=cwd,
    )


def migrator_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "migrator", *args]


def imap_url(server: DovecotServer, user: str, *, port: int | None = None, query: str = "tls=off") -> str:
    return f"imap://{user}@{server.host}:{port or server.imap_port}?{query}"


def snap(server: DovecotServer, user: str, *, port: int | None = None) -> Snapshot:
    return snapshot_imap(server.host, port or server.imap_port, user, PW)


def load_source(
    server: DovecotServer,
    user: str,
    messages: Iterable[CorpusMessage],
    folders: Iterable[tuple[str, ...]] = FOLDERS,
) -> None:
    """Write ``messages`` (and the empty ``folders``) straight into ``user``'s Maildir
    and let Dovecot index them."""
    load_maildir(messages, server.maildir(user), uid=server.mail_uid, gid=server.mail_gid, folders=folders)
    server.force_resync(user)


@dataclass(frozen=True)
class PlanMailbox:
    id: str
    src_user: str
    dst_user: str


def write_plan(
    path: Path,
    server: DovecotServer,
    mailboxes: Sequence[PlanMailbox],
    *,
    name: str = "robust",
    defaults: str = "",
    src_port: int | None = None,
    dst_port: int | None = None,
    src_type: str = "imap",
    dst_server: DovecotServer | None = None,
    src_path: Path | None = None,
) -> Path:
    """A plan with endpoints ``old`` (``src_type`` on ``server``) and ``new`` (IMAP on
    ``dst_server`` or ``server``), passwords from $SRC_PW / $DST_PW, state beside it.
    ``defaults`` is YAML for the ``defaults:`` mapping (flow style, e.g. "{retries: 9}").
    A local source (``src_type`` maildir or mbox) reads ``src_path``."""
    dst = dst_server or server
    src_port = src_port or (server.pop3_port if src_type == "pop3" else server.imap_port)
    boxes = "".join(
        f"  - id: {m.id}\n    source: {{user: {m.src_user}}}\n    destination: {{user: {m.dst_user}}}\n"
        for m in mailboxes
    )
    if src_path is not None:
        old = f'  old: {{type: {src_type}, path: "{src_path}"}}\n'
    else:
        old = (
            f"  old: {{type: {src_type}, host: {server.host}, port: {src_port}, security: none,"
            " password_env: SRC_PW}\n"
        )
    text = (
        f"version: 1\nname: {name}\nstate: {name}.db\n"
        "endpoints:\n"
        f"{old}"
        f"  new: {{type: imap, host: {dst.host}, port: {dst_port or dst.imap_port}, security: none,"
        " password_env: DST_PW}\n"
        "source: old\ndestination: new\n" + (f"defaults: {defaults}\n" if defaults else "") + f"mailboxes:\n{boxes}"
    )
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- checks


def facts_counter(snapshot: Snapshot) -> Counter[tuple[tuple[str, ...], MessageFacts]]:
    return Counter((folder, f) for folder, msgs in snapshot.items() for f in msgs)


def not_more_than_source(src: Snapshot, dst: Snapshot) -> list[str]:
    """Lines for destination messages that the source does not account for (a
    duplicate or a changed copy): must be empty at every moment of a migration."""
    extra = facts_counter(dst) - facts_counter(src)
    return [f"{'/'.join(folder)}: extra {facts.describe()}" for (folder, facts), _n in extra.items()]


@dataclass(frozen=True)
class StateCheck:
    integrity: str
    pending: int
    done_by_folder: dict[tuple[str, ...], int]  # destination folder -> copied + matched rows
    statuses: dict[str, int]


def check_state(db: Path) -> StateCheck:
    """Read-only look at a state DB after a run: PRAGMA integrity_check, pending rows,
    done rows per destination folder."""
    import json

    # not mode=ro: after a SIGKILL the WAL must be recovered first, which needs write access
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        if "messages" not in tables:  # killed before its schema was committed
            return StateCheck(integrity, 0, {}, {})
        statuses = dict(conn.execute("select status, count(*) from messages group by status").fetchall())
        if "inflight" in tables:  # batches journaled before their APPEND: pending rows too
            (journaled,) = conn.execute("select coalesce(sum(json_array_length(rows)), 0) from inflight").fetchone()
            if journaled:
                statuses["pending"] = statuses.get("pending", 0) + journaled
        done: dict[tuple[str, ...], int] = {}
        for dst_folder, n in conn.execute(
            "select dst_folder, count(*) from messages where status in ('copied', 'matched') group by dst_folder"
        ):
            done[tuple(json.loads(dst_folder))] = n
    finally:
        conn.close()
    return StateCheck(integrity, statuses.get("pending", 0), done, statuses)


def assert_consistent(db: Path, dst: Snapshot) -> StateCheck:
    """After a clean (exit 0) run: the DB is intact, nothing is pending, and the done
    rows per destination folder equal the messages there."""
    st = check_state(db)
    assert st.integrity == "ok", st.integrity
    assert st.pending == 0, f"{st.pending} pending row(s) after a clean run: {st.statuses}"
    held = {folder: len(msgs) for folder, msgs in dst.items() if msgs}
    assert st.done_by_folder == held, f"state {st.done_by_folder} != destination {held}"
    return st


def forget_user(server: DovecotServer, user: str) -> None:
    """Remove a test user's mail and passwd entry (tmpfs is RAM: big corpora must not
    pile up for the rest of a session). Best effort."""
    import shutil

    shutil.rmtree(server.home(user), ignore_errors=True)
    (server.users_dir / user).unlink(missing_ok=True)


class Users:
    """Test users created through ``new_user`` and forgotten at teardown (a fixture)."""

    def __init__(self, server: DovecotServer, new_user: Callable[..., str]) -> None:
        self.server = server
        self._new_user = new_user
        self.created: list[str] = []

    def __call__(self) -> str:
        user = self._new_user(self.server, PW)
        self.created.append(user)
        return user

    def forget(self) -> None:
        for user in self.created:
            forget_user(self.server, user)
        self.created.clear()
