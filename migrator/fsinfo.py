"""Which filesystem a state file lives on, and which SQLite journal mode suits it.

SQLite's WAL mode keeps its index in a shared-memory file (``<db>-shm``) mapped by
every connection; that only works when all of them run on one host over a local
filesystem. On NFS, CIFS/SMB and other network or cluster filesystems the rollback
journal (``DELETE``) is the safe choice: it needs only POSIX file locks.

``journal_mode(path)`` decides, in this order:

1. ``MIGRATOR_STATE_JOURNAL`` in the environment (``wal``, ``delete``, ``truncate``
   or ``persist``; anything else raises ``ValueError``);
2. the type of the filesystem holding ``path`` (its nearest existing ancestor),
   read from ``/proc/mounts`` (longest matching mount point): a network filesystem
   gives ``DELETE``;
3. ``WAL`` otherwise (also when ``/proc/mounts`` cannot be read).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV = "MIGRATOR_STATE_JOURNAL"
MODES = ("WAL", "DELETE", "TRUNCATE", "PERSIST")

# Filesystems without a coherent shared-memory view across clients (or with known
# broken mmap semantics for SQLite). Matched exactly, and "fuse.*" by prefix for the
# network ones (sshfs, s3fs, gcsfuse, ...).
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "virtiofs",
    }
)
NETWORK_FUSE = ("fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.ceph", "fuse.rclone", "fuse.juicefs")


def _unescape(field: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) for every line of a /proc/mounts text."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append((_unescape(parts[1]), parts[2]))
    return mounts


def existing_ancestor(path: Path | str) -> str:
    """The real path of ``path`` or of its nearest existing ancestor (symlinks resolved)."""
    target = Path(os.path.abspath(path))
    while not target.exists() and target != target.parent:
        target = target.parent
    return os.path.realpath(target)


def filesystem_type(path: Path | str, mounts_text: str | None = None) -> str | None:
    """The type of the filesystem ``path`` is (or would be) on, e.g. ``ext4`` or ``nfs4``.

    ``path`` need not exist: its nearest existing ancestor decides. ``mounts_text``
    replaces ``/proc/mounts`` (tests). None when it cannot be told."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    real = existing_ancestor(path)
    best: tuple[int, str] | None = None
    for point, fstype in parse_mounts(mounts_text):
        prefix = point.rstrip("/") + "/"
        if (real == point or real.startswith(prefix) or point == "/") and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best else None


def is_network_fs(fstype: str | None) -> bool:
    if not fstype:
        return False
    return fstype in NETWORK_FS or fstype.startswith(NETWORK_FUSE)


def journal_mode(path: Path | str, env: Mapping[str, str] | None = None, mounts_text: str | None = None) -> str:
    """The SQLite journal mode for a state DB at ``path``: "WAL" or "DELETE" (or the
    mode forced by ``MIGRATOR_STATE_JOURNAL``). Raises ValueError on an unknown forced mode."""
    env = os.environ if env is None else env
    forced = env.get(ENV, "").strip()
    if forced:
        mode = forced.upper()
        if mode not in MODES:
            raise ValueError(f"{ENV}={forced!r}: use one of {', '.join(m.lower() for m in MODES)}")
        return mode
    return "DELETE" if is_network_fs(filesystem_type(path, mounts_text)) else "WAL"
