"""The command line end to end on local stores: exit codes, one-line errors, demo plan."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.connectors.local import open_maildir, open_mbox
from migrator.model import Account
from migrator.state import RunLock

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A private copy of the demo plan and its sample (the tests never write into the repo)."""
    plans = tmp_path / "plans"
    shutil.copytree(ROOT / "plans" / "demo", plans / "demo")
    shutil.copy(ROOT / "plans" / "demo.yaml", plans / "demo.yaml")
    subprocess.run([sys.executable, str(plans / "demo" / "generate.py")], check=True, capture_output=True)
    return plans / "demo.yaml"


def snapshot(store) -> dict:
    out = {}
    for f in store.list_folders():
        if not f.selectable:
            continue
        metas = store.list_messages(f)
        out[f.path] = sorted(
            (raw, frozenset(m.flags), int(m.internal_date.timestamp()) if m.internal_date else None)
            for m, raw in store.fetch(f, metas)
        )
    return out


def test_demo_plan_migrates_everything_once(demo: Path):
    first = invoke("run", str(demo))
    assert first.exit_code == 0, first.output
    assert "copied 52 message(s)" in first.output
    out = demo.parent.parent / "state" / "demo-out"
    src_mbox = snapshot(open_mbox(Account(type="mbox", path=str(demo.parent / "demo" / "mbox")), "source"))
    dst_mbox = snapshot(open_maildir(Account(type="maildir", path=str(out / "from-mbox")), "source"))
    src_md = snapshot(open_maildir(Account(type="maildir", path=str(demo.parent / "demo" / "Maildir")), "source"))
    dst_md = snapshot(open_maildir(Account(type="maildir", path=str(out / "from-maildir")), "source"))
    # every message, byte-identical, with flags and dates (folder names may be mapped)
    for src, dst in ((src_mbox, dst_mbox), (src_md, dst_md)):
        assert sorted(x for v in src.values() for x in v) == sorted(x for v in dst.values() for x in v)
        assert len(dst) >= len([k for k, v in src.items() if v])
    again = invoke("run", str(demo))
    assert again.exit_code == 0
    assert "copied 0 message(s)" in again.output and "52 already there" in again.output
    status = invoke("status", str(demo))
    assert status.exit_code == 0
    assert re.search(r"from-mbox\s.*\s26\s", status.output), status.output


def test_wrong_field_one_line_exit_2_nothing_touched(tmp_path: Path):
    plan = tmp_path / "bad.yaml"
    plan.write_text(
        "version: 1\nendpoints:\n  a: {type: imap, host: h, port: seventy}\n"
        "source: a\ndestination: a\nmailboxes:\n  - source: {user: x, password_env: P}\n",
        encoding="utf-8",
    )
    for cmd in ("validate", "run", "status"):
        res = runner.invoke(app, [cmd, str(plan)])
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1, res.output
        assert "bad.yaml:3" in lines[0] and "endpoints.a.port" in lines[0]
    assert not (tmp_path / "state").exists() and not Path("state/bad.db").exists()


def test_validate_reports_missing_secret(tmp_path: Path):
    plan = tmp_path / "p.yaml"
    plan.write_text(
        "version: 1\nendpoints:\n  a: {type: imap, host: h}\nsource: a\ndestination: a\n"
        "mailboxes:\n  - source: {user: x, password_env: NOT_SET_ANYWHERE_42}\n"
        "    destination: {user: y, password_env: NOT_SET_ANYWHERE_42}\n",
        encoding="utf-8",
    )
    res = invoke("validate", str(plan))
    assert res.exit_code == 2
    assert "NOT_SET_ANYWHERE_42" in res.output


def test_unknown_mailbox_id(demo: Path):
    res = invoke("run", str(demo), "--mailbox", "nobody")
    assert res.exit_code == 2 and "nobody" in res.output


def test_second_run_refused_while_locked(demo: Path):
    with RunLock(demo.parent.parent / "state" / "demo.db"):
        res = invoke("run", str(demo))
    assert res.exit_code == 4 and "another run" in res.output


def test_dry_run_creates_no_destination_and_no_state(demo: Path):
    res = invoke("run", str(demo), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "would copy 52 message(s)" in res.output
    assert not (demo.parent.parent / "state").exists()


def test_copy_local_to_local_and_password_in_url_refused(tmp_path: Path):
    src = ROOT / "plans" / "demo" / "mbox"
    dst = tmp_path / "out"
    res = invoke("copy", f"mbox:{src}", f"maildir:{dst}", "--state", str(tmp_path / "s.db"))
    assert res.exit_code == 0, res.output
    assert "copied 26 message(s)" in res.output
    bad = invoke("copy", "imap://u:hunter2@127.0.0.1", f"maildir:{dst}")
    assert bad.exit_code == 2 and "hunter2" not in bad.output


def test_missing_source_is_a_connection_error(tmp_path: Path):
    res = invoke("copy", f"maildir:{tmp_path / 'nope'}", f"maildir:{tmp_path / 'out'}", "--state", str(tmp_path / "s"))
    assert res.exit_code == 3, res.output
    assert "nope" in res.output


def test_every_command_documented_with_help_and_example():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]
    assert set(names) >= {"validate", "run", "status", "copy"}
    for name in names:
        assert f"migrator {name}" in readme, f"README does not document `migrator {name}`"
        res = invoke(name, "--help")
        assert res.exit_code == 0 and "Example:" in res.output, name
    # command groups (`migrator report merge`): every subcommand too
    for group in app.registered_groups:
        for sub in group.typer_instance.registered_commands:  # type: ignore[union-attr]
            words = [group.name, sub.name or sub.callback.__name__]  # type: ignore[union-attr]
            assert f"migrator {' '.join(words)}" in readme, f"README does not document `migrator {' '.join(words)}`"
            res = invoke(*words, "--help")  # type: ignore[arg-type]
            assert res.exit_code == 0 and "Example:" in res.output, words
