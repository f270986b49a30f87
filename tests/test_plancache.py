"""The plan cache (migrator/plancache.py): a hit is exactly load_plan's result; any
change to what the plan was made from is a miss; nothing secret is written; a cache
file someone else could have written is ignored."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from migrator import plancache
from migrator.errors import PlanError
from migrator.plan import load_plan

REPO = Path(__file__).resolve().parents[1]

PLAN = """\
version: 1
name: {name}
endpoints:
  old: {{type: imap, host: old.example, password_env: OLD_PW}}
  new: {{type: imap, host: new.example, password_env: NEW_PW}}
source: old
destination: new
defaults: {{folder_workers: {workers}}}
mailboxes:
  - id: alice
    source: {{user: alice}}
    destination: {{user: alice@new.example}}
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv("MIGRATOR_CACHE_DIR", str(where))
    return where


def write_plan(directory: Path, name: str = "nightly", workers: int = 2) -> Path:
    path = directory / "plan.yaml"
    path.write_text(PLAN.format(name=name, workers=workers), encoding="utf-8")
    return path


def cached_files(cache: Path) -> list[Path]:
    return sorted((cache / "plans").glob("*.pickle")) if (cache / "plans").exists() else []


def test_a_hit_is_exactly_what_load_plan_gives(tmp_path: Path, cache: Path) -> None:
    path = write_plan(tmp_path)
    first = plancache.load(path)
    assert first == load_plan(path)
    (entry,) = cached_files(cache)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert (cache / "plans").stat().st_mode & 0o777 == 0o700
    assert plancache.load(path) == first


def test_a_hit_imports_neither_pydantic_nor_yaml(tmp_path: Path, cache: Path) -> None:
    path = write_plan(tmp_path)
    code = (
        "import sys; from migrator.plancache import load; p = load(sys.argv[1]);"
        " print(p.name, 'pydantic' in sys.modules, 'yaml' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MIGRATOR_CACHE_DIR": str(cache)}
    runs = [
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=60)
        for _ in range(2)
    ]
    assert [r.stdout.split() for r in runs] == [["nightly", "True", "True"], ["nightly", "False", "False"]], runs


def test_a_changed_plan_is_read_again(tmp_path: Path, cache: Path) -> None:
    path = write_plan(tmp_path, workers=2)
    assert plancache.load(path).jobs[0].options.folder_workers == 2
    write_plan(tmp_path, workers=5)
    assert plancache.load(path).jobs[0].options.folder_workers == 5
    write_plan(tmp_path, workers=2)  # back again: the first entry serves
    assert plancache.load(path).jobs[0].options.folder_workers == 2
    assert len(cached_files(cache)) == 2


def test_the_current_directory_is_part_of_the_key(tmp_path: Path, cache: Path, monkeypatch) -> None:
    path = write_plan(tmp_path)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        monkeypatch.chdir(tmp_path / sub)
        # the default state path (state/<name>.db) is relative to the current directory
        assert plancache.load(path).state_path == tmp_path / sub / "state" / "nightly.db"


def test_a_changed_csv_is_read_again_and_csv_passwords_are_never_written(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "version: 1\nendpoints:\n  old: {type: imap, host: old.example, password_env: OLD_PW}\n"
        "  new: {type: imap, host: new.example, password_env: NEW_PW}\n"
        "source: old\ndestination: new\nmailboxes_csv: users.csv\n",
        encoding="utf-8",
    )
    csv = tmp_path / "users.csv"
    csv.write_text("source_user,destination_user\ndave,dave@new.example\n", encoding="utf-8")
    assert [j.id for j in plancache.load(path).jobs] == [load_plan(path).jobs[0].id]
    assert len(cached_files(cache)) == 1
    csv.write_text("source_user,destination_user\ndave,dave@new.example\nerin,erin@new.example\n", encoding="utf-8")
    assert len(plancache.load(path).jobs) == 2  # the CSV changed: not the cached plan
    # passwords in the CSV: the plan holds their values, so it is never cached
    csv.write_text(
        "source_user,source_password,destination_user\ndave,Sw0rdfish-CSV,dave@new.example\n", encoding="utf-8"
    )
    before = cached_files(cache)
    plan = plancache.load(path)
    assert plancache.holds_secret_value(plan)
    assert cached_files(cache) == before
    for file in cached_files(cache):
        assert b"Sw0rdfish-CSV" not in file.read_bytes()


def test_a_cache_file_others_can_write_is_ignored(tmp_path: Path, cache: Path) -> None:
    path = write_plan(tmp_path, name="real")
    plancache.load(path)
    (entry,) = cached_files(cache)
    forged = dataclasses.replace(load_plan(path), name="forged")
    entry.write_bytes(pickle.dumps({"plan": forged, "inputs": []}))
    entry.chmod(0o666)
    assert plancache.load(path).name == "real"
    entry.write_bytes(b"not a pickle at all")  # damaged: a miss, not a crash
    entry.chmod(0o600)
    assert plancache.load(path).name == "real"


def test_errors_are_load_plans_and_nothing_is_cached(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nendpoints: {}\nmailboxes: []\n", encoding="utf-8")
    with pytest.raises(PlanError) as got:
        plancache.load(path)
    with pytest.raises(PlanError) as want:
        load_plan(path)
    assert got.value.problems == want.value.problems
    assert cached_files(cache) == []
    with pytest.raises(PlanError, match="cannot read plan"):
        plancache.load(tmp_path / "missing.yaml")


def test_an_unwritable_cache_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("MIGRATOR_CACHE_DIR", str(blocker / "cache"))  # under a regular file
    path = write_plan(tmp_path)
    assert plancache.load(path) == load_plan(path)
