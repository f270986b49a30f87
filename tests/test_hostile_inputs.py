"""Hostile plans and mailbox CSVs through the command line (``migrator validate``).

Whatever the YAML or CSV holds (anchors and aliases, merge keys, tags such as
``!!python/object/apply``, binary and timestamps where strings belong, deep nesting,
huge documents, control characters, BOMs, NULs, broken quoting, enormous fields),
``migrator validate`` ends with exit 0 (a valid plan) or exit 2 with one line per
problem naming the file: never a traceback, never another exit code, never a
password from the CSV on the screen, and never code run from a YAML tag.

tests/test_plan.py fuzzes ``load_plan`` itself; this file fuzzes the CLI path with
nastier inputs, in-process (typer's CliRunner, so hundreds of examples stay fast)
plus a few subprocess runs for what only a real process shows (recursion limits).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from migrator.cli import app

CSV_SECRET = "Csv-Fuzz-Secret-Zq9"
ENV = {"OLD_PW": "x", "NEW_PW": "y", "NEW_ADMIN_PW": "z"}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

BASE = {
    "version": 1,
    "endpoints": {
        "old": {"type": "imap", "host": "old.example", "password_env": "OLD_PW"},
        "new": {"type": "imap", "host": "new.example", "password_env": "NEW_PW"},
    },
    "source": "old",
    "destination": "new",
    "mailboxes": [{"source": {"user": "a"}, "destination": {"user": "a@new"}}],
}

runner = CliRunner()


def validate(path: Path) -> tuple[int, str]:
    """Exit code and output of ``migrator validate PATH`` (in-process); a Python
    exception escaping the CLI is a failure of the test."""
    result = runner.invoke(app, ["validate", str(path)], env=ENV, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback from validate: {result.exception!r}") from result.exception
    return result.exit_code, result.output


def check(path: Path, *, secret: str | None = None) -> tuple[int, str]:
    code, out = validate(path)
    assert code in (0, 2), f"exit {code}: {out[-2000:]}"
    assert "Traceback" not in out
    if code == 2:
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines, "exit 2 without a word"
        assert all(": " in line or line.startswith(" ") for line in lines), out[-2000:]  # FILE[:LINE]: problem
    else:
        assert "ok:" in out
    if secret is not None:
        shown = out
        if code == 0:  # a fuzzed CSV may put the text in a user or id column: shown as such, rightly
            shown = re.sub(rf"{re.escape(secret)}@|^\s*{re.escape(secret)}:", "", out, flags=re.MULTILINE)
        assert secret not in shown
    return code, out


# ----------------------------------------------------------------------------- YAML texts

_TOKENS = [
    "version: 1\n", "endpoints:\n", "  old: {type: imap, host: h, password_env: OLD_PW}\n",
    "  new: &n {type: imap, host: n, password_env: NEW_PW}\n", "source: old\n", "destination: new\n",
    "mailboxes:\n", "  - source: {user: a}\n", "    destination: {user: b}\n", "  - *n\n", "  - {<<: *n}\n",
    "x-a: &a [1, 2]\n", "defaults: {retries: *a}\n", "<<: *a\n", "? complex\n: key\n", "---\n", "...\n",
    "%YAML 1.1\n", "%TAG !e! tag:example.com,2000:\n", "!!python/object/apply:os.system ['true']\n",
    "!!python/name:os.system\n", "!!binary aGVsbG8=\n", "!!set {a, b}\n", "!!omap [a: 1]\n",
    "!!timestamp 2001-12-14\n", "!!bool maybe\n", "!!int x\n", "!e!foo bar\n", "!local x\n",
    "&anchor\n", "*undefined\n", "*a\n",
    "{", "}", "[", "]", ",", ":", "- ", "? ", "|\n", ">-\n", "'", '"', "\\", "\t", "  ", "\n", "#", "%",
    "@", "`", "\x00", "\ufeff", "\u2028", "\x85", "\r", "\r\n", "é", "日本", "\U0001f4a9", "~", "null",
    "1e309", ".nan", "-.inf", "0x7fffffffffffffffffff", "0o777", "2024-13-45", "yes", "No", "=",
    "mailboxes_csv: users.csv\n", "mailboxes_csv: /dev/zero\n", "mailboxes_csv: ../../../../etc/passwd\n",
    "state: /proc/self/mem\n", "state: \x00\n", "name: '../../x'\n",
]  # fmt: skip


@pytest.mark.parametrize("value", ["!!bool maybe", "!!timestamp x", "!!timestamp 2001-12-14 extra"])
def test_explicit_tags_on_wrong_values_are_plan_errors(tmp_path, value):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"version: 1\nname: {value}\n", encoding="utf-8")
    code, out = check(plan)
    assert code == 2 and "plan.yaml:2" in out


@FUZZ
@given(st.lists(st.sampled_from(_TOKENS), max_size=60))
def test_yaml_token_soup_gives_exit_0_or_2(tmp_path_factory, parts):
    work = tmp_path_factory.mktemp("soup")
    (work / "users.csv").write_text(f"EmailAddress,UserName,Password\na@n,a,{CSV_SECRET}\n", encoding="utf-8")
    plan = work / "plan.yaml"
    plan.write_text("".join(parts), encoding="utf-8", errors="surrogatepass")
    check(plan, secret=CSV_SECRET)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=20),
    st.dates(),
    st.datetimes(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_PATHS = [
    (),
    ("version",),
    ("name",),
    ("state",),
    ("endpoints",),
    ("endpoints", "old"),
    ("endpoints", "old", "type"),
    ("endpoints", "old", "host"),
    ("endpoints", "old", "port"),
    ("endpoints", "old", "password_env"),
    ("endpoints", "old", "oauth"),
    ("endpoints", "new", "timeout"),
    ("endpoints", "new", "ca_file"),
    ("source",),
    ("mailboxes",),
    ("mailboxes", 0),
    ("mailboxes", 0, "id"),
    ("mailboxes", 0, "source"),
    ("mailboxes", 0, "source", "user"),
    ("mailboxes", 0, "destination", "endpoint"),
    ("mailboxes", 0, "options"),
    ("defaults",),
    ("defaults", "folders"),
    ("defaults", "filters"),
    ("defaults", "mode"),
    ("mailboxes_csv",),
]


def _put(data: dict, where: tuple, value: object) -> dict:
    if not where:
        return value  # type: ignore[return-value]
    node = data
    for part in where[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[where[-1]] = value
    return data


@FUZZ
@given(st.sampled_from(_PATHS), _values, st.booleans())
# found by the fuzzer: a NEL (U+0085) in an endpoint's name split the "known: ..." list
# of the one-line error over two lines
@example(where=("endpoints",), value={" \x85": None}, as_tags=False)
def test_structured_plans_with_hostile_values_give_exit_0_or_2(tmp_path_factory, where, value, as_tags):
    """Valid YAML whose values are wrong in type, size or content; with ``as_tags`` it
    is dumped by the full dumper, so binary, dates and Python objects carry tags."""
    import copy

    work = tmp_path_factory.mktemp("structured")
    data = _put(copy.deepcopy(BASE), where, value)
    dumper = yaml.Dumper if as_tags else yaml.SafeDumper
    plan = work / "plan.yaml"
    plan.write_text(yaml.dump(data, Dumper=dumper, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    check(plan)


def test_base_plan_is_valid(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    assert check(plan)[0] == 0


# ----------------------------------------------------------------------------- specific nasties


def test_python_tags_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    plan = tmp_path / "plan.yaml"
    for text in (
        f"!!python/object/apply:os.system ['touch {marker}']\n",
        f"version: 1\nname: !!python/object/apply:os.system ['touch {marker}']\n",
        f"version: 1\nx-a: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
        "version: 1\nstate: !!python/name:os.system\n",
    ):
        plan.write_text(text, encoding="utf-8")
        code, out = check(plan)
        assert code == 2 and not marker.exists(), out


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 20_000 + "]" * 20_000,
        "{a: " * 20_000 + "1" + "}" * 20_000,
        "".join("  " * i + f"k{i}:\n" for i in range(3_000)) + "  " * 3_000 + "v\n",
        "- " * 10_000 + "x\n",
        "a: &a [" + ", ".join(["*a"] * 5) + "]\n",
    ],
    ids=["unclosed-100k", "nested-lists-20k", "nested-maps-20k", "indent-3k", "dash-10k", "self-alias"],
)
def test_deep_nesting_is_a_plan_error(tmp_path, text):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text, encoding="utf-8")
    code, out = check(plan)
    assert code == 2, out


def test_deep_nesting_in_a_real_process(tmp_path):
    """Recursion limits and C stack overflows only show in a real process."""
    plan = tmp_path / "plan.yaml"
    plan.write_text("{a: " * 50_000 + "1" + "}" * 50_000 + "\n", encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "migrator", "validate", str(plan)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2, res.stdout + res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def _inline_plan(mailboxes: int, extra: str = "") -> str:
    head = yaml.safe_dump({k: v for k, v in BASE.items() if k != "mailboxes"})
    boxes = "".join(f"  - source: {{user: u{i}}}\n    destination: {{user: u{i}@new}}\n" for i in range(mailboxes))
    return head + extra + "mailboxes:\n" + boxes


@pytest.mark.parametrize(
    ("name", "want"),
    [("2000-mailboxes", 0), ("2mb-scalar", 2), ("50k-items", 2), ("2mb-comment", 0)],
)
def test_huge_documents_answered_in_bounded_time(tmp_path, name, want):
    import time

    text = {
        "2000-mailboxes": lambda: _inline_plan(2_000),
        "2mb-scalar": lambda: _inline_plan(2, "name: " + "n" * 2_000_000 + "\n"),
        "50k-items": lambda: _inline_plan(0).replace("mailboxes:\n", "mailboxes: [" + "1, " * 50_000 + "1]\n"),
        "2mb-comment": lambda: "#" + "c" * 2_000_000 + "\n" + _inline_plan(2),
    }[name]()
    plan = tmp_path / "plan.yaml"
    plan.write_text(text, encoding="utf-8")
    began = time.monotonic()
    code, out = check(plan)
    assert code == want, out[-1000:]
    assert time.monotonic() - began < 60


def test_a_12000_mailbox_inline_plan_is_valid(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(_inline_plan(12_000), encoding="utf-8")
    code, out = check(plan)
    assert "aliases" not in out
    assert code == 0, out[-1000:]


# ----------------------------------------------------------------------------- CSVs

_CSV_PLAN = """version: 1
endpoints:
  old: {type: imap, host: old.example}
  new: {type: imap, host: new.example, password_env: NEW_ADMIN_PW}
source: old
destination: new
mailboxes_csv: users.csv
"""
_HEADERS = [
    "EmailAddress,UserName,Password",
    "EmailAddress;UserName;Password",
    "source_user,source_password,destination_user,destination_password",
    "id,source_user,source_password,destination_user,destination_password",
    "\ufeffEmail Address,User_Name,PASSWORD",
    "EmailAddress,UserName,Password,EmailAddress",
    "a,b",
    "",
    '"EmailAddress","UserName","Password"',
    "EmailAddress\tUserName\tPassword",
]
_CELLS = st.one_of(
    st.sampled_from(["", " ", "a@n", "a", "u1", CSV_SECRET, f'"{CSV_SECRET}"', f'"{CSV_SECRET}', "x" * 200_000]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
)


@FUZZ
@given(
    st.sampled_from(_HEADERS),
    st.lists(st.lists(_CELLS, max_size=6), max_size=8),
    st.sampled_from([",", ";", "\t", ",,", '"']),
    st.sampled_from(["\n", "\r\n", "\r", "\n\n"]),
    st.booleans(),
)
def test_hostile_csv_gives_exit_0_or_2_and_never_shows_a_password(tmp_path_factory, header, rows, sep, eol, raw):
    work = tmp_path_factory.mktemp("csv")
    (work / "plan.yaml").write_text(_CSV_PLAN, encoding="utf-8")
    body = eol.join(sep.join(row) for row in rows)
    data = (header + eol + body).encode("utf-8", "surrogatepass")
    if raw:  # NULs and invalid UTF-8 in the middle
        data = data[: len(data) // 2] + b"\x00\xff\xfe" + data[len(data) // 2 :]
    (work / "users.csv").write_bytes(data)
    check(work / "plan.yaml", secret=CSV_SECRET)


@pytest.mark.parametrize("target", ["/dev/null", "DIR", "missing.csv", "/proc/self/environ"])
def test_csv_that_is_not_a_regular_file(tmp_path, target):
    plan = tmp_path / "plan.yaml"
    plan.write_text(_CSV_PLAN.replace("users.csv", str(tmp_path) if target == "DIR" else target), encoding="utf-8")
    code, out = check(plan)
    assert code == 2, out


def _limited_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))  # the machine is shared: fail, don't swap


@pytest.mark.parametrize("which", ["csv", "plan"])
def test_endless_input_is_refused_in_bounded_time(tmp_path, which):
    """A device that never ends must not be read forever (a real process, with a
    memory limit: a hang or a blow-up must not take the machine down)."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(_CSV_PLAN.replace("users.csv", "/dev/zero"), encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "migrator", "validate", str(plan) if which == "csv" else "/dev/zero"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ENV},
        preexec_fn=_limited_memory,
    )
    assert res.returncode == 2, res.stdout + res.stderr[-2000:]
    assert "Traceback" not in res.stderr
