"""Operations output: JSON-lines logs and Prometheus textfile metrics."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from migrator.stats import RunStats

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonLinesHandler(logging.Handler):
    """One JSON object per log record: time, level, message (no secrets are ever logged)."""

    def __init__(self, path: Path):
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                "level": record.levelname.lower(),
                "message": record.getMessage(),
            }
            for key, value in record.__dict__.items():  # structured fields given as extra=
                if key not in _STANDARD and not key.startswith("_"):
                    event[key] = value if isinstance(value, str | int | float | bool) or value is None else str(value)
            line = json.dumps(event, ensure_ascii=False)
            self._fh.write(line + "\n")
            self._fh.flush()
        except Exception:  # a log handler must never break the run
            self.handleError(record)

    def close(self) -> None:
        self._fh.close()
        super().close()


def add_json_log(path: Path) -> None:
    handler = JsonLinesHandler(path)
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("migrator")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def write_metrics(path: Path, stats: RunStats, code: int, *, plan_name: str) -> None:
    """Prometheus textfile (node_exporter's textfile collector): written atomically."""
    lines = [
        "# HELP migrator_last_run_exit_code Exit code of the last run.",
        "# TYPE migrator_last_run_exit_code gauge",
        f'migrator_last_run_exit_code{{plan="{plan_name}"}} {int(code)}',
    ]
    now = time.time()
    for name, help_text in (
        ("messages_copied", "Messages copied in the last run."),
        ("messages_failed", "Messages that failed in the last run."),
        ("bytes_copied", "Bytes copied in the last run."),
    ):
        lines += [f"# HELP migrator_{name} {help_text}", f"# TYPE migrator_{name} gauge"]
        key = {"messages_copied": "copied", "messages_failed": "failed", "bytes_copied": "bytes"}[name]
        for mb in stats.mailboxes.values():
            lines.append(f'migrator_{name}{{plan="{plan_name}",mailbox="{mb.job}"}} {mb.total(key)}')
    lines += [
        "# HELP migrator_last_success_timestamp_seconds When the mailbox last finished without failure.",
        "# TYPE migrator_last_success_timestamp_seconds gauge",
    ]
    for mb in stats.mailboxes.values():
        if mb.status == "ok" and not mb.total("failed"):
            lines.append(f'migrator_last_success_timestamp_seconds{{plan="{plan_name}",mailbox="{mb.job}"}} {now:.0f}')
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
