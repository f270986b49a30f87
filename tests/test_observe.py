"""Scheduling-friendly outputs: Prometheus textfile metrics and JSON-lines logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from migrator.cli import app

ROOT = Path(__file__).resolve().parents[1]


def demo_copy(tmp_path: Path) -> Path:
    plans = tmp_path / "plans"
    shutil.copytree(ROOT / "plans" / "demo", plans / "demo")
    shutil.copy(ROOT / "plans" / "demo.yaml", plans / "demo.yaml")
    subprocess.run([sys.executable, str(plans / "demo" / "generate.py")], check=True, capture_output=True)
    return plans / "demo.yaml"


def test_metrics_file_and_json_log(tmp_path: Path):
    plan = demo_copy(tmp_path)
    metrics, log = tmp_path / "m" / "migrator.prom", tmp_path / "log.jsonl"
    res = CliRunner().invoke(app, ["run", str(plan), "--metrics-file", str(metrics), "--log-json", str(log), "-q"])
    assert res.exit_code == 0, res.output
    text = metrics.read_text()
    assert 'migrator_last_run_exit_code{plan="demo"} 0' in text
    assert re.search(r'migrator_messages_copied\{plan="demo",mailbox="from-mbox"\} 26\b', text)
    assert re.search(r'migrator_messages_failed\{plan="demo",mailbox="from-maildir"\} 0\b', text)
    assert re.search(r'migrator_last_success_timestamp_seconds\{plan="demo",mailbox="from-mbox"\} \d{10}', text)
    # every line of the JSON log is a JSON object with time, level and message
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and all({"time", "level", "message"} <= set(x) for x in lines)
    finished = {x["mailbox"]: x for x in lines if x.get("event") == "mailbox_finished"}
    assert finished["from-mbox"]["copied"] == 26 and finished["from-mbox"]["status"] == "ok"
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_failed_mailbox_has_no_success_timestamp(tmp_path: Path):
    plan = demo_copy(tmp_path)
    text = plan.read_text().replace("path: demo/Maildir", "path: demo/NoSuchMaildir")
    plan.write_text(text)
    metrics = tmp_path / "m.prom"
    res = CliRunner().invoke(app, ["run", str(plan), "--metrics-file", str(metrics), "-q"])
    assert res.exit_code == 3, res.output
    text = metrics.read_text()
    assert 'migrator_last_run_exit_code{plan="demo"} 3' in text
    assert 'mailbox="from-maildir"} ' not in text.split("last_success_timestamp_seconds")[-1]
    # the one-line summary for cron mail is the last line of the output
    assert res.output.strip().splitlines()[-1].startswith("migrator: exit 3:")
