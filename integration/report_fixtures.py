"""Fixtures of the report and verify tests: a Dovecot with quota, small test messages.

``QuotaDovecot`` is a private Dovecot with the quota plugin.

On top of ``DovecotServer`` (same ports handling, layouts, users):

* QUOTA and GETQUOTAROOT (quota backend "count", per-user limits in the passwd-file);
* a per-message size limit enforced at APPEND (``quota_max_mail_size``: Dovecot answers
  ``NO [LIMIT] Mail size is larger than the maximum size allowed``);
* with ``advertise_limit``, the same limit advertised as ``APPENDLIMIT=<n>`` in the
  CAPABILITY list (Dovecot 2.3 does not advertise it by itself; ``imap_capability =
  +APPENDLIMIT=<n>`` is how an administrator does).

``set_max_mail_size`` changes the limit of a running server (configuration rewritten,
``doveadm reload``).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from integration.corpus import CorpusMessage
from integration.dovecot import DovecotServer, Layout


class QuotaDovecot(DovecotServer):
    def __init__(
        self,
        layout: Layout = "slash",
        parent_dir: str | os.PathLike[str] | None = None,
        *,
        max_mail_size: int = 100_000,
        storage_kib: int = 50_000,
        advertise_limit: bool = True,
    ) -> None:
        super().__init__(layout=layout, parent_dir=parent_dir)
        self.max_mail_size = max_mail_size
        self.storage_kib = storage_kib
        self.advertise_limit = advertise_limit
        self._quota: dict[str, int] = {}
        self._login_user = self._internal_user = ""

    def _config(self, login_user: str, internal_user: str) -> str:
        self._login_user, self._internal_user = login_user, internal_user
        advertised = f"  imap_capability = +APPENDLIMIT={self.max_mail_size}\n" if self.advertise_limit else ""
        return (
            super()._config(login_user, internal_user)
            + f"""
mail_plugins = $mail_plugins quota
protocol imap {{
  mail_plugins = $mail_plugins imap_quota
{advertised}}}
plugin {{
  quota = count:User quota
  quota_vsizes = yes
  quota_rule = *:storage={self.storage_kib}K
  quota_max_mail_size = {self.max_mail_size}
}}
"""
        )

    def add_user(self, name: str, password: str = "pw", quota_kib: int | None = None) -> None:
        """A user; ``quota_kib`` overrides the storage quota for this user only."""
        super().add_user(name, password)
        if quota_kib is not None:
            self._quota[name] = quota_kib
            path = self.users_dir / name
            line = path.read_text(encoding="utf-8").rstrip("\n")
            tmp = self.users_dir / f".{name}.tmp"
            tmp.write_text(f"{line}userdb_quota_rule=*:storage={quota_kib}K\n", encoding="utf-8")
            tmp.chmod(0o644)
            os.replace(tmp, path)

    def set_max_mail_size(self, size: int) -> None:
        """Change the per-message limit of the running server (new connections see it)."""
        self.max_mail_size = size
        self.conf_path.write_text(self._config(self._login_user, self._internal_user), encoding="utf-8")
        self.doveadm("reload")
        time.sleep(0.5)  # the master re-reads its configuration asynchronously

    def usage_kib(self, user: str) -> int:
        """Storage in use (KiB) as the quota plugin counts it."""
        for line in self.doveadm("quota", "get", "-u", user).splitlines():
            parts = line.split()
            if "STORAGE" in parts:
                return int(parts[parts.index("STORAGE") + 1])
        return 0


def state_files(path: Path) -> dict[str, bytes]:
    """The state DB and its WAL/SHM companions, by name, for before/after comparisons."""
    return {p.name: p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file()}


def make_message(tag: str, i: int, size: int = 3000, *, mid: bool = True) -> bytes:
    """A plain CRLF message of about ``size`` bytes, unique per (tag, i); its
    Message-ID (when ``mid``) is ``<tag.i@example.org>``."""
    head = [
        f"From: Sender {i} <s{i}@example.org>",
        "To: team@example.net",
        f"Subject: {tag} message {i}",
        f"Date: Mon, 01 Jan 2024 10:{i % 60:02d}:00 +0000",
    ]
    if mid:
        head.append(f"Message-ID: <{tag}.{i}@example.org>")
    head.append("Content-Type: text/plain; charset=us-ascii")
    header = "\r\n".join(head) + "\r\n\r\n"
    line = f"{tag} {i}: the quick brown fox jumps over the lazy dog 0123456789\r\n"
    return (header + line * max(1, (size - len(header)) // len(line))).encode("ascii")


FOLDER_CYCLE = (("INBOX",), ("INBOX",), ("Sent",), ("Archive",))


def small_corpus(
    tag: str, n: int, big: frozenset[int] | set[int] = frozenset(), big_size: int = 180_000
) -> list[CorpusMessage]:
    """``n`` messages over INBOX, INBOX, Sent, Archive (message i in FOLDER_CYCLE[i % 4]),
    2-5 KB each except the indexes in ``big`` (``big_size`` bytes); odd ones \\Seen."""
    base = datetime(2023, 5, 1, 12, 0, tzinfo=UTC)
    return [
        CorpusMessage(
            FOLDER_CYCLE[i % len(FOLDER_CYCLE)],
            frozenset({"\\Seen"} if i % 2 else set()),
            base + timedelta(hours=i),
            make_message(tag, i, big_size if i in big else 2000 + 97 * i),
        )
        for i in range(n)
    ]
