"""Sharding a plan across processes: `migrator run PLAN --shard I/N`."""

from __future__ import annotations

from pathlib import Path

from migrator.errors import PlanError
from migrator.model import MailboxJob, Plan


def select_shard(
    plan: Plan, jobs: list[MailboxJob], spec: str, *, rebalance: bool = False, state_override: Path | None = None
) -> tuple[list[MailboxJob], Path]:
    """The jobs of shard I of N and that shard's state DB."""
    raise PlanError(f"--shard {spec}: sharding is not available yet")
