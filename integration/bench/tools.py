"""The clients the benchmark runs side by side, each configured for IMAP -> IMAP copies of
one or many (source user, destination user) pairs on one server.

* ``migrator``: ``migrator copy`` for one pair, ``migrator run`` of a generated plan for
  several (its default parallelism);
* ``mbsync`` (Debian isync): one channel per pair, ``Sync Pull``, ``Create Near``,
  ``CopyArrivalDate yes`` (keep internal dates), default pipelining;
* ``offlineimap`` (Debian offlineimap3): one account per pair, remote read-only,
  ``maxsyncaccounts`` 2, one connection each (its defaults otherwise).

Every tool keeps its state under its own work directory, so a re-run is incremental.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

Pair = tuple[str, str]  # (source user, destination user)


@dataclass
class Tool:
    name: str
    workdir: Path
    host: str
    port: int
    password: str
    extra_args: Sequence[str] = field(default_factory=tuple)

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return ""

    def prepare(self, pairs: Sequence[Pair]) -> None:
        """Write the configuration for ``pairs`` (called once per corpus)."""
        self.workdir.mkdir(parents=True, exist_ok=True)

    def argv(self, pairs: Sequence[Pair]) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        import os

        return dict(os.environ)

    first_copy_only = False  # a variant measured on first copies only

    @property
    def tag(self) -> str:
        """Short, unique among the tools: names the destination users."""
        return self.name[:3]

    def state_cpu(self) -> float | None:
        """CPU seconds the last run spent in its state store, where the tool reports it."""
        return None


@dataclass
class Migrator(Tool):
    repo: Path = Path(__file__).resolve().parents[2]

    def version(self) -> str:
        try:
            argv = ["git", "-C", str(self.repo), "rev-parse", "--short", "HEAD"]
            rev = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            rev = ""
        return f"migrator {rev}".strip()

    def _url(self, user: str) -> str:
        return f"imap://{user}@{self.host}:{self.port}?tls=off"

    def prepare(self, pairs: Sequence[Pair]) -> None:
        super().prepare(pairs)
        # byte-compile as an installed package is: a checkout run with
        # PYTHONDONTWRITEBYTECODE would otherwise compile every module on every run
        compile_all = [sys.executable, "-m", "compileall", "-q", str(self.repo / "migrator")]
        subprocess.run(compile_all, check=False, timeout=120, capture_output=True)
        if len(pairs) > 1:
            rows = "".join(
                f"  - id: m{i:03d}\n    source: {{user: {src}}}\n    destination: {{user: {dst}}}\n"
                for i, (src, dst) in enumerate(pairs, 1)
            )
            (self.workdir / "plan.yaml").write_text(
                "version: 1\nname: bench\nstate: bench.db\nendpoints:\n"
                f"  old: {{type: imap, host: {self.host}, port: {self.port}, security: none, password_env: BENCH_PW}}\n"
                f"  new: {{type: imap, host: {self.host}, port: {self.port}, security: none, password_env: BENCH_PW}}\n"
                f"source: old\ndestination: new\nmailboxes:\n{rows}",
                encoding="utf-8",
            )

    def argv(self, pairs: Sequence[Pair]) -> list[str]:
        # migrator's CLI with its state store's lock timed (integration/bench/statetime.py)
        base = [sys.executable, "-m", "integration.bench.statetime"]
        if len(pairs) == 1:
            src, dst = pairs[0]
            state = str(self.workdir / "state.db")
            return [*base, "copy", self._url(src), self._url(dst), "--state", state, "--quiet", *self.extra_args]
        return [*base, "run", str(self.workdir / "plan.yaml"), "--quiet", *self.extra_args]

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            MIGRATOR_SOURCE_PASSWORD=self.password,
            MIGRATOR_DEST_PASSWORD=self.password,
            BENCH_PW=self.password,
            PYTHONPATH=str(self.repo),
            BENCH_STATE_FILE=str(self._state_file()),
        )
        return env

    def _state_file(self) -> Path:
        return self.workdir / "state-seconds"

    def state_cpu(self) -> float | None:
        try:
            text = self._state_file().read_text(encoding="ascii")
            self._state_file().unlink()
            return float(text.split()[1])
        except (OSError, ValueError, IndexError):
            return None


@dataclass
class MigratorNoCheckpoints(Migrator):
    """migrator with no message rows written: what checkpoints cost is the difference
    of its first copy from migrator's (it could not resume; first copies only)."""

    first_copy_only = True

    @property
    def tag(self) -> str:
        return "mnc"

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_CHECKPOINTS": "off"}


@dataclass
class Mbsync(Tool):
    def available(self) -> bool:
        return shutil.which("mbsync") is not None

    def version(self) -> str:
        out = subprocess.run(["mbsync", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or out.stderr.strip()

    def prepare(self, pairs: Sequence[Pair]) -> None:
        super().prepare(pairs)
        blocks = []
        for i, (src, dst) in enumerate(pairs, 1):
            state = self.workdir / f"state{i}"
            state.mkdir(exist_ok=True)
            for side, user in (("far", src), ("near", dst)):
                blocks.append(
                    f"IMAPAccount {side}{i}\nHost {self.host}\nPort {self.port}\nUser {user}\n"
                    f"Pass {self.password}\nSSLType None\nAuthMechs LOGIN\n\n"
                    f"IMAPStore {side}{i}\nAccount {side}{i}\n\n"
                )
            blocks.append(
                f"Channel c{i}\nFar :far{i}:\nNear :near{i}:\nPatterns *\nCreate Near\nSync Pull\n"
                f"Expunge None\nCopyArrivalDate yes\nSyncState {state}/\n\n"
            )
        rc = self.workdir / "mbsyncrc"
        rc.write_text("".join(blocks), encoding="utf-8")
        rc.chmod(0o600)

    def argv(self, pairs: Sequence[Pair]) -> list[str]:
        return ["mbsync", "-q", "-c", str(self.workdir / "mbsyncrc"), "-a", *self.extra_args]


@dataclass
class OfflineImap(Tool):
    def available(self) -> bool:
        return shutil.which("offlineimap") is not None

    def version(self) -> str:
        out = subprocess.run(["offlineimap", "--version"], capture_output=True, text=True, timeout=30)
        return f"offlineimap {out.stdout.strip() or out.stderr.strip()}"

    def prepare(self, pairs: Sequence[Pair]) -> None:
        super().prepare(pairs)
        names = [f"a{i}" for i in range(1, len(pairs) + 1)]
        parts = [
            f"[general]\naccounts = {', '.join(names)}\nmetadata = {self.workdir / 'meta'}\n"
            "ui = quiet\nmaxsyncaccounts = 2\n\n"
        ]
        for name, (src, dst) in zip(names, pairs, strict=True):
            parts.append(f"[Account {name}]\nlocalrepository = {name}-dst\nremoterepository = {name}-src\n\n")
            for repo, user, extra in ((f"{name}-src", src, "readonly = True\n"), (f"{name}-dst", dst, "")):
                parts.append(
                    f"[Repository {repo}]\ntype = IMAP\nremotehost = {self.host}\nremoteport = {self.port}\n"
                    f"remoteuser = {user}\nremotepass = {self.password}\nssl = no\nstarttls = no\n{extra}\n"
                )
        rc = self.workdir / "offlineimaprc"
        rc.write_text("".join(parts), encoding="utf-8")
        rc.chmod(0o600)

    def argv(self, pairs: Sequence[Pair]) -> list[str]:
        return ["offlineimap", "-c", str(self.workdir / "offlineimaprc"), "-o", *self.extra_args]


TOOLS: dict[str, type[Tool]] = {
    "migrator": Migrator,
    "migrator-nockpt": MigratorNoCheckpoints,
    "mbsync": Mbsync,
    "offlineimap": OfflineImap,
}
