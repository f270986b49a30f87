"""Plan loading: valid plans become the model's dataclasses; every broken input becomes
a PlanError whose lines name file, line and field; nothing leaks a password."""

from __future__ import annotations

import os
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.errors import PlanError
from migrator.model import Account, Secret
from migrator.plan import check_secrets, load_plan, parse_size

CSV_PASSWORD = "Sup3r-Secret;Pa$$,word"  # the text that must never be printed


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(name: str, text: str) -> str:
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    Path(name).write_text(textwrap.dedent(text), encoding="utf-8")
    return name


def problems_of(path: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


FULL = """\
version: 1
name: acme
state: ../state/acme.db
endpoints:
  old:
    type: imap
    host: mail.old.example
    timeout: 30
    ca_file: certs/old-ca.pem
    password_env: OLD_MASTER_PW
  new:
    type: IMAP
    host: mail.new.example
    security: starttls
    verify_tls: false
    password_file: secrets/new.pw
  plain:
    type: imap
    host: plain.example
    security: none
    password_env: PLAIN_PW
  archive:
    type: maildir
    path: archive/{user}/Maildir
  dump:
    type: mbox
    path: /srv/dump/{id}.mbox
source: old
destination: new
defaults:
  folders:
    include: ["INBOX", "Archive/.*"]
    exclude: ["Trash", "Junk"]
    rename: [{from: "Old/(.*)", to: "Legacy/\\\\1"}]
    special_use_automap: false
  filters:
    since: 2015-01-01
    before: 2025-01-01T12:30:00+02:00
    min_size: 10 KiB
    max_size: 50MB
  parallel_mailboxes: 4
  batch_bytes: 1.5 MB
  batch_messages: 100
  retries: 2
mailboxes:
  - id: alice
    source: {user: alice, password_env: OLD_ALICE_PW}
    destination: {user: alice@new.example, password_file: /abs/alice.pw}
    options: {folders: {exclude: [Spam]}, filters: {since: 2020-06-01 08:00:00}}
  - source: {user: bob}
    destination: {endpoint: archive, user: bob}
  - source: {endpoint: dump}
    destination: {endpoint: plain, user: carol}
  - source: {user: dave, port: 1993, security: starttls}
    destination: {user: dave@new.example, host: other.example}
"""


def test_full_plan_converts_to_model(tmp_path: Path) -> None:
    path = write("plans/acme.yaml", FULL)
    plan = load_plan(path)
    plans = tmp_path / "plans"
    assert plan.name == "acme"
    assert plan.source_file == Path(path)
    assert plan.state_path == tmp_path / "state" / "acme.db"
    assert [job.id for job in plan.jobs] == ["alice", "bob", "carol", "dave"]
    alice, bob, third, dave = plan.jobs
    assert alice.origin == "plans/acme.yaml:46"
    assert alice.source == Account(
        type="imap",
        host="mail.old.example",
        port=993,
        security="tls",
        verify_tls=True,
        ca_file=str(plans / "certs" / "old-ca.pem"),
        user="alice",
        secret=Secret(env="OLD_ALICE_PW", origin="plans/acme.yaml:47"),
        timeout=30.0,
    )
    assert alice.destination == Account(
        type="imap",
        host="mail.new.example",
        port=143,
        security="starttls",
        verify_tls=False,
        user="alice@new.example",
        secret=Secret(file="/abs/alice.pw", origin="plans/acme.yaml:48"),
    )
    # endpoint-wide secrets are used where the mailbox gives none
    assert bob.source.secret == Secret(env="OLD_MASTER_PW", origin="plans/acme.yaml:10")
    assert bob.destination == Account(
        type="maildir", user="bob", path=str(plans / "archive" / "bob" / "Maildir"), secret=None
    )
    assert third.source == Account(type="mbox", path="/srv/dump/carol.mbox")
    assert (third.destination.port, third.destination.security) == (143, "none")
    assert third.destination.secret == Secret(env="PLAIN_PW", origin="plans/acme.yaml:21")
    assert (dave.source.port, dave.source.security, dave.source.host) == (1993, "starttls", "mail.old.example")
    assert dave.destination.host == "other.example"
    assert dave.destination.secret == Secret(file=str(plans / "secrets" / "new.pw"), origin="plans/acme.yaml:16")

    opts = bob.options
    assert [p.pattern for p in opts.folders.include] == ["INBOX", "Archive/.*"]
    assert all(isinstance(p, re.Pattern) for p in opts.folders.include + opts.folders.exclude)
    assert [p.pattern for p in opts.folders.exclude] == ["Trash", "Junk"]
    ((pattern, replacement),) = opts.folders.renames
    assert pattern.fullmatch("Old/2019") and pattern.sub(replacement, "Old/2019") == "Legacy/2019"
    assert opts.folders.special_use_automap is False
    assert opts.filters.since == datetime(2015, 1, 1, tzinfo=UTC)
    assert opts.filters.before == datetime(2025, 1, 1, 10, 30, tzinfo=UTC)
    assert (opts.filters.min_size, opts.filters.max_size) == (10 * 1024, 50_000_000)
    assert (opts.parallel_mailboxes, opts.batch_bytes, opts.batch_messages, opts.retries) == (4, 1_500_000, 100, 2)
    # per-mailbox options are deep-merged per key: lists replaced, siblings kept
    assert [p.pattern for p in alice.options.folders.exclude] == ["Spam"]
    assert [p.pattern for p in alice.options.folders.include] == ["INBOX", "Archive/.*"]
    assert alice.options.filters.since == datetime(2020, 6, 1, 8, tzinfo=UTC)
    assert alice.options.filters.max_size == 50_000_000


def test_defaults_name_and_state_from_file_name(tmp_path: Path) -> None:
    path = write(
        "p/small-plan.yml",
        """\
        version: 1
        endpoints:
          a: {type: maildir, path: "/m/{user}"}
          b: {type: mbox, path: "out/{id}.mbox"}
        mailboxes:
          - {source: {endpoint: a, user: x}, destination: {endpoint: b}}
          - {source: {endpoint: a, user: y}, destination: {endpoint: b}}
          - {source: {endpoint: b}, destination: {endpoint: b, path: "{id}/../{id}.copy"}}
        """,
    )
    plan = load_plan(Path(path))
    assert plan.name == "small-plan"
    assert plan.state_path == tmp_path / "state" / "small-plan.db"
    assert [j.id for j in plan.jobs] == ["x", "y", "mailbox-3"]
    assert plan.jobs[2].source.path == str(tmp_path / "p" / "out" / "mailbox-3.mbox")
    assert plan.jobs[2].destination.path == str(tmp_path / "p" / "mailbox-3.copy")
    assert plan.jobs[1].destination.path == str(tmp_path / "p" / "out" / "y.mbox")
    assert plan.jobs[0].options.parallel_mailboxes == 4  # model default


def test_x_keys_and_yaml_anchors() -> None:
    path = write(
        "plan.yaml",
        """\
        version: 1
        x-imap: &imap {type: imap, host: h.example, password_env: P, security: tls}
        endpoints: {a: *imap, b: {<<: *imap, port: 1143, security: none}}
        source: a
        destination: b
        mailboxes: [{source: {user: u}, destination: {user: v}}]
        """,
    )
    (job,) = load_plan(path).jobs
    assert (job.source.host, job.source.port, job.destination.port, job.destination.security) == (
        "h.example",
        993,
        1143,
        "none",
    )


BASE = """\
version: 1
endpoints:
  old: {type: imap, host: old.example, password_env: OLD_PW}
  new: {type: imap, host: new.example, password_env: NEW_PW}
source: old
destination: new
mailboxes:
  - source: {user: a}
    destination: {user: a@new}
"""

# (name, plan text, [(line, field path, message fragment), ...]) -- the lines must all appear
BAD_PLANS = [
    (
        "bad port on the 4th mailbox",
        BASE
        + """\
  - source: {user: b}
    destination: {user: b@new}
  - source: {user: c}
    destination: {user: c@new}
  - source:
      user: d
      port: abc
    destination: {user: d@new}
""",
        [(16, "mailboxes[3].source.port", "valid integer, got 'abc'")],
    ),
    ("missing version", BASE.replace("version: 1\n", ""), [(1, "version", "required")]),
    ("version 2", BASE.replace("version: 1", "version: 2"), [(1, "version", "Input should be 1, got 2")]),
    (
        "misspelt top-level key",
        BASE + "mailbox_csv: x.csv\n",
        [(10, "mailbox_csv", "unknown key (did you mean 'mailboxes_csv'?)")],
    ),
    (
        "misspelt endpoint key",
        BASE.replace("{type: imap, host: new.example", "{type: imap, hots: new.example"),
        [(4, "endpoints.new.hots", "unknown key (did you mean 'host'?)")],
    ),
    (
        "literal password on a side",
        BASE.replace("{user: a@new}", "{user: a@new, password: hunter2}"),
        [(9, "mailboxes[0].destination.password", "passwords may not be written in the plan")],
    ),
    (
        "literal password on an endpoint",
        BASE.replace("password_env: OLD_PW", "Password: hunter2"),
        [(3, "endpoints.old.Password", "use password_env or password_file (or the mailbox CSV)")],
    ),
    (
        "two secrets on one side",
        BASE.replace("{user: a}", "{user: a, password_env: A, password_file: a.pw}"),
        [(8, "mailboxes[0].source.password_file", "at most one of password_env and password_file")],
    ),
    (
        "incomplete oauth",
        BASE.replace("{type: imap, host: new", "{type: imap, oauth: {flow: client_credentials}, host: new"),
        [(4, "endpoints.new.oauth", "client_id: required")],
    ),
    (
        "source and sources",
        BASE.replace("source: {user: a}", "source: {user: a}\n    sources: [{user: b}]"),
        [(8, "mailboxes[0]", "either source or sources")],
    ),
    (
        "unknown type",
        BASE.replace("{type: imap, host: new", "{type: gopher, host: new"),
        [(4, "endpoints.new.type", "unknown type 'gopher'")],
    ),
    (
        "imap endpoint without host",
        BASE.replace("{type: imap, host: old.example, ", "{type: imap, "),
        [(3, "endpoints.old.host", "required for type imap")],
    ),
    (
        "unknown default endpoint",
        BASE.replace("destination: new", "destination: nwe"),
        [(6, "destination", "unknown endpoint 'nwe' (known: new, old)")],
    ),
    (
        "unknown endpoint on a side",
        BASE.replace("{user: a@new}", "{user: a@new, endpoint: gone}"),
        [(9, "mailboxes[0].destination.endpoint", "unknown endpoint 'gone'")],
    ),
    (
        "no endpoint at all",
        BASE.replace("source: old\n", ""),
        [(7, "mailboxes[0].source", "no endpoint")],
    ),
    (
        "imap side without a secret",
        BASE.replace(", password_env: NEW_PW", ""),
        [(9, "mailboxes[0].destination", "no password: give password_env or password_file")],
    ),
    (
        "imap side without user",
        BASE.replace("{user: a@new}", "{}"),
        [(9, "mailboxes[0].destination.user", "required for imap endpoint 'new'")],
    ),
    (
        "missing side mapping: parent line",
        BASE.replace("    destination: {user: a@new}\n", "    options: {}\n"),
        [(8, "mailboxes[0].destination.user", "required")],
    ),
    (
        "bad regex",
        BASE + "defaults:\n  folders:\n    exclude: [ok, '(unclosed']\n",
        [(12, "defaults.folders.exclude[1]", "invalid regular expression")],
    ),
    (
        "bad rename template",
        BASE + "defaults:\n  folders:\n    rename: [{from: a, to: '\\2'}]\n",
        [(12, "defaults.folders.rename[0]", "invalid replacement")],
    ),
    (
        "bad size",
        BASE + "defaults:\n  filters:\n    max_size: 12 parsecs\n",
        [(12, "defaults.filters.max_size", "invalid size '12 parsecs'")],
    ),
    (
        "bad date string",
        BASE + "defaults:\n  filters:\n    since: last tuesday\n",
        [(12, "defaults.filters.since", "expected a date")],
    ),
    (
        "impossible date",
        BASE + "defaults:\n  filters:\n    since: 2015-02-30\n",
        [(12, "", "invalid YAML: invalid value: day is out of range")],
    ),
    (
        "port out of range on endpoint",
        BASE.replace("host: new.example,", "host: new.example, port: 70000,"),
        [(4, "endpoints.new.port", "less than or equal to 65535")],
    ),
    (
        "bad security",
        BASE.replace("host: new.example,", "host: new.example, security: ssl,"),
        [(4, "endpoints.new.security", "'tls', 'starttls' or 'none'")],
    ),
    (
        "zero parallelism and timeout",
        BASE.replace("host: new.example,", "host: new.example, timeout: 0,") + "defaults: {parallel_mailboxes: 0}\n",
        [(4, "endpoints.new.timeout", "greater than 0"), (10, "defaults.parallel_mailboxes", "greater than")],
    ),
    (
        "invalid id",
        BASE.replace("  - source: {user: a}", "  - id: ../etc\n    source: {user: a}"),
        [(8, "mailboxes[0].id", "invalid id")],
    ),
    (
        "duplicate explicit ids",
        BASE + "  - id: a\n    source: {user: z}\n    destination: {user: z@new}\n",
        [(10, "mailboxes[1].id", "duplicate id 'a' (first used at plan.yaml:8)")],
    ),
    (
        "duplicate key",
        BASE + "source: new\n",
        [(10, "source", "key given twice")],
    ),
    (
        "maildir without path",
        BASE.replace("  new: {type: imap, host: new.example, password_env: NEW_PW}", "  new: {type: maildir}"),
        [(9, "mailboxes[0].destination.path", "required for maildir endpoint 'new'")],
    ),
    (
        "user that escapes a {user} path",
        BASE.replace(
            "  new: {type: imap, host: new.example, password_env: NEW_PW}", "  new: {type: mbox, path: 'x/{user}'}"
        ).replace("{user: a@new}", "{user: ../../etc}"),
        [(9, "mailboxes[0].destination.user", "cannot be put into a path")],
    ),
    (
        "CSV without plan-wide endpoints",
        BASE.replace("source: old\n", "") + "mailboxes_csv: users.csv\n",
        [(9, "mailboxes_csv", "needs plan-wide `source:` and `destination:`")],
    ),
    (
        "mailboxes not a list",
        BASE.split("mailboxes:")[0] + "mailboxes: {a: 1}\n",
        [(7, "mailboxes", "expected a list, got a mapping")],
    ),
    (
        "endpoint not a mapping",
        BASE.replace("  new: {type: imap, host: new.example, password_env: NEW_PW}", "  new: [imap]"),
        [(4, "endpoints.new", "expected a mapping, got a list")],
    ),
    (
        "empty endpoints",
        "version: 1\nendpoints: {}\n",
        [(2, "endpoints", "at least 1 item")],
    ),
    (
        "huge integer",
        BASE.replace("host: new.example,", "host: new.example, port: " + "9" * 5000 + ","),
        [(4, "", "invalid value: Exceeds the limit")],
    ),
    (
        "large integer shown safely",
        BASE.replace("host: new.example,", "host: new.example, port: " + "9" * 100 + ","),
        [(4, "endpoints.new.port", "got a very large number")],
    ),
    ("no mailboxes", BASE.split("mailboxes:")[0], [(1, "mailboxes", "no mailboxes")]),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_PLANS, ids=[case[0] for case in BAD_PLANS])
def test_bad_plans_name_file_line_and_field(name: str, text: str, expected: list[tuple[int, str, str]]) -> None:
    problems = problems_of(write("plan.yaml", text))
    for line, field_path, fragment in expected:
        prefix = f"plan.yaml:{line}: {field_path}: " if field_path else f"plan.yaml:{line}: "
        assert any(p.startswith(prefix) and fragment in p for p in problems), (prefix, fragment, problems)
    assert "hunter2" not in "\n".join(problems)


def test_several_problems_give_several_lines() -> None:
    text = BASE.replace("{user: a}", "{user: a, port: x}") + "  - source: {user: b}\n    destination: {}\n"
    text = text.replace("version: 1", "version: 1\nnmae: x") + "defaults: {retries: -1}\n"
    problems = problems_of(write("plan.yaml", text))
    assert [p.split(": ")[0:2] for p in problems] == [
        ["plan.yaml:2", "nmae"],
        ["plan.yaml:13", "defaults.retries"],
        ["plan.yaml:9", "mailboxes[0].source.port"],
        ["plan.yaml:12", "mailboxes[1].destination.user"],
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "plan.yaml: the plan is empty"),
        ("# only a comment\n", "plan.yaml: the plan is empty"),
        ("- a\n- b\n", "plan.yaml:1: the plan must be a mapping"),
        ("42\n", "plan.yaml:1: the plan must be a mapping"),
        ("just text\n", "plan.yaml:1: the plan must be a mapping"),
        ("version: 1\n---\nversion: 1\n", "plan.yaml:2: invalid YAML: expected a single document"),
        ("version: 1\nendpoints: {a: [}\n", "plan.yaml:2: invalid YAML"),
        ("version: 1\n  bad indent: x\n", "plan.yaml:2: invalid YAML"),
        ("a: &x [*x]\n", "recursive YAML aliases"),
        ("a: !!python/object:os.system {}\n", "plan.yaml:1: invalid YAML"),
        ("[" * 5000, "invalid YAML"),
    ],
)
def test_non_plans(text: str, fragment: str) -> None:
    path = write("plan.yaml", text)
    (problem,) = problems_of(path)
    assert fragment in problem


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines[0] = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"
    (problem,) = problems_of(write("plan.yaml", "\n".join(lines) + "\n"))
    assert "YAML nodes (aliases expanded)" in problem


def test_unreadable_files() -> None:
    (problem,) = problems_of("missing.yaml")
    assert problem.startswith("missing.yaml: cannot read plan:")
    os.mkdir("dir.yaml")
    assert problems_of("dir.yaml")[0].startswith("dir.yaml: cannot read plan:")
    Path("bin.yaml").write_bytes(b"version: 1\n\xff\xfe\x00junk")
    assert problems_of("bin.yaml") == ["bin.yaml: not UTF-8 text (invalid byte at offset 11)"]
    write("p/plan.yaml", BASE + "mailboxes_csv: nope.csv\n")
    assert any(
        p.startswith("p/plan.yaml:") and "cannot read mailbox CSV p/nope.csv" in p for p in problems_of("p/plan.yaml")
    )


# ----------------------------------------------------------------------------- CSV

CSV_PLAN = """\
version: 1
endpoints:
  old: {type: imap, host: old.example}
  new: {type: imap, host: new.example, password_env: NEW_ADMIN_PW}
source: old
destination: new
mailboxes_csv: users.csv
"""


def write_csv(name: str, content: str, bom: bool = False, crlf: bool = False) -> None:
    data = content.replace("\n", "\r\n") if crlf else content
    Path(name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))


def test_csv_exchange_online_form_with_bom_and_crlf() -> None:
    write("plans/plan.yaml", CSV_PLAN)
    write_csv(
        "plans/users.csv",
        f'Email Address,User_Name,PASSWORD\nalice@new,alice,"{CSV_PASSWORD}"\n\n  \nbob@new,bob,pw2\n',
        bom=True,
        crlf=True,
    )
    plan = load_plan("plans/plan.yaml")
    alice, bob = plan.jobs
    assert (alice.id, alice.origin, bob.origin) == ("alice", "plans/users.csv:2", "plans/users.csv:5")
    assert (alice.source.user, alice.destination.user) == ("alice", "alice@new")
    assert alice.source.secret == Secret(value=CSV_PASSWORD, origin="plans/users.csv:2")
    assert alice.source.secret.get() == CSV_PASSWORD
    assert alice.destination.secret == Secret(env="NEW_ADMIN_PW", origin="plans/plan.yaml:4")
    assert CSV_PASSWORD not in repr(plan)
    assert CSV_PASSWORD not in str(plan)


def test_csv_two_sided_form_with_semicolons_and_ids() -> None:
    write("plan.yaml", CSV_PLAN.replace("host: old.example}", "host: old.example, password_env: OLD}"))
    write_csv(
        "users.csv",
        "id;Source User;source_password;destination-user;Destination Password\n"
        f"a1;alice;{CSV_PASSWORD.replace(';', '')};alice@new;\n"
        ";bob;;bob@new;dst-pw\n",
    )
    a1, bob = load_plan("plan.yaml").jobs
    assert (a1.id, bob.id) == ("a1", "bob")
    assert a1.source.secret == Secret(value=CSV_PASSWORD.replace(";", ""), origin="users.csv:2")
    assert a1.destination.secret == Secret(env="NEW_ADMIN_PW", origin="plan.yaml:4")  # empty cell: endpoint's
    assert bob.source.secret == Secret(env="OLD", origin="plan.yaml:3")
    assert bob.destination.secret == Secret(value="dst-pw", origin="users.csv:3")


CSV_CASES = [
    (
        "empty password",
        f'EmailAddress,UserName,Password\na@n,a,"{CSV_PASSWORD}"\nb@n,b,\n',
        ["users.csv:3: Password: empty"],
    ),
    ("missing user", "EmailAddress,UserName,Password\na@n,,pw\n", ["users.csv:2: UserName: empty"]),
    ("two-sided missing user", "source_user,destination_user\n,x@n\n", ["users.csv:2: source_user: empty"]),
    ("unknown header", "mail,login,secret\na,b,c\n", ["users.csv:1: unknown header: expected EmailAddress"]),
    (
        "unknown column",
        "EmailAddress,UserName,Password,Quota\na,b,c,1\n",
        ["users.csv:1: column 'Quota': unknown column"],
    ),
    ("missing column", "EmailAddress,Password\na,b\n", ["users.csv:1: column 'UserName': missing"]),
    (
        "field count",
        "EmailAddress,UserName,Password\na@n,a\nb@n,b,p,extra\n",
        ["users.csv:2: expected 3 fields, got 2", "users.csv:3: expected 3 fields, got 4"],
    ),
    ("empty file", "\n\n", ["users.csv: empty file"]),
    (
        "duplicate ids within the CSV",
        f'EmailAddress,UserName,Password\na@n,a,"{CSV_PASSWORD}"\na@other,a,"{CSV_PASSWORD}"\n',
        ["users.csv:3: UserName: duplicate id 'a' (first used at users.csv:2)"],
    ),
    (
        "duplicate explicit id",
        "id;source_user;destination_user\nx;a;a@n\nx;b;b@n\n",
        ["users.csv:3: id: duplicate id 'x' (first used at users.csv:2)"],
    ),
    ("bad id", "id,source_user,destination_user\na/b,a,a@n\n", ["users.csv:2: id: invalid id"]),
    ("bad quoting", 'source_user,destination_user\n"a"b,c\n', ["users.csv:2: invalid CSV"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_problems_name_file_line_and_column(name: str, content: str, expected: list[str]) -> None:
    write("plan.yaml", CSV_PLAN.replace("host: old.example}", "host: old.example, password_env: OLD}"))
    write_csv("users.csv", content)
    problems = problems_of("plan.yaml")
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), (fragment, problems)
    assert CSV_PASSWORD not in "\n".join(problems)


def test_duplicate_id_across_inline_and_csv() -> None:
    write(
        "plan.yaml", CSV_PLAN + "mailboxes:\n  - source: {user: alice, password_env: A}\n    destination: {user: z}\n"
    )
    write_csv("users.csv", f'EmailAddress,UserName,Password\nalice@new,alice,"{CSV_PASSWORD}"\n')
    assert problems_of("plan.yaml") == ["users.csv:2: UserName: duplicate id 'alice' (first used at plan.yaml:9)"]


def test_csv_destination_without_any_secret() -> None:
    write("plan.yaml", CSV_PLAN.replace(", password_env: NEW_ADMIN_PW", ""))
    write_csv("users.csv", f'EmailAddress,UserName,Password\nalice@new,alice,"{CSV_PASSWORD}"\n')
    (problem,) = problems_of("plan.yaml")
    assert problem.startswith("users.csv:2: destination: no password")
    assert CSV_PASSWORD not in problem


def test_csv_not_utf8() -> None:
    write("plan.yaml", CSV_PLAN)
    Path("users.csv").write_bytes(b"EmailAddress,UserName,Password\na,b,\xe9t\xe9\n")
    assert problems_of("plan.yaml") == ["users.csv: not UTF-8 text (invalid byte at offset 35)"]


# ----------------------------------------------------------------------------- secrets


def test_check_secrets_lists_each_missing_reference_once(monkeypatch: pytest.MonkeyPatch) -> None:
    write("plan.yaml", CSV_PLAN.replace("host: old.example}", "host: old.example, password_file: old.pw}"))
    write_csv("users.csv", "source_user,destination_user\na,a@n\nb,b@n\n")
    monkeypatch.delenv("NEW_ADMIN_PW", raising=False)
    plan = load_plan("plan.yaml")
    lines = check_secrets(plan)
    assert len(lines) == 2
    assert lines[0].startswith("plan.yaml:3: cannot read password file ") and lines[0].endswith(
        "(needed by a and 1 more)"
    )
    assert lines[1] == "plan.yaml:4: environment variable NEW_ADMIN_PW is not set (needed by a and 1 more)"
    Path("old.pw").write_text("file-secret\n")
    monkeypatch.setenv("NEW_ADMIN_PW", "env-secret")
    assert check_secrets(plan) == []
    assert plan.jobs[0].source.secret.get() == "file-secret"
    monkeypatch.setenv("NEW_ADMIN_PW", "")
    assert check_secrets(plan) == ["plan.yaml:4: environment variable NEW_ADMIN_PW is empty (needed by a and 1 more)"]


def test_load_plan_never_reads_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLD_PW", raising=False)
    plan = load_plan(write("plan.yaml", BASE))
    assert plan.jobs[0].source.secret == Secret(env="OLD_PW", origin="plan.yaml:3")


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (123, 123),
        ("123", 123),
        ("50MB", 50_000_000),
        ("50 mb", 50_000_000),
        ("10 KiB", 10_240),
        ("1.5 GB", 1_500_000_000),
        ("1.5GiB", 3 * 2**29),
        ("2T", 2 * 10**12),
        ("7 B", 7),
        (" 4MiB ", 4 * 2**20),
        (".5K", 500),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "-1", -1, "1.2.3 MB", "5 XB", "1e3", True, 1.5, "9" * 30 + " TB", 2**64])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fuzzing


def _load_or_plan_error(path: str) -> None:
    try:
        load_plan(path)
    except PlanError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert all(p.startswith(path) for p in exc.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_any_text_gives_plan_or_plan_error(text: str) -> None:
    Path("fuzz.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    _load_or_plan_error("fuzz.yaml")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary())
def test_any_bytes_give_plan_or_plan_error(data: bytes) -> None:
    Path("fuzz.yaml").write_bytes(data)
    _load_or_plan_error("fuzz.yaml")


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    st.floats(),
    st.text(max_size=20),
    st.dates(),
    st.datetimes(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELD_PATHS = [
    ("version",),
    ("name",),
    ("state",),
    ("endpoints",),
    ("endpoints", "old"),
    ("endpoints", "old", "port"),
    ("endpoints", "old", "type"),
    ("endpoints", "new", "security"),
    ("endpoints", "new", "timeout"),
    ("source",),
    ("mailboxes",),
    ("mailboxes", 0),
    ("mailboxes", 0, "id"),
    ("mailboxes", 0, "source"),
    ("mailboxes", 0, "source", "user"),
    ("mailboxes", 0, "source", "port"),
    ("mailboxes", 0, "options"),
    ("defaults",),
    ("defaults", "folders", "include"),
    ("defaults", "folders", "rename"),
    ("defaults", "filters", "since"),
    ("defaults", "filters", "max_size"),
    ("defaults", "batch_bytes"),
    ("mailboxes_csv",),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(_FIELD_PATHS), _values)
def test_hostile_field_values_give_plan_or_plan_error(where: tuple[str | int, ...], value: object) -> None:
    data = yaml.safe_load(BASE)
    data["defaults"] = {"folders": {"include": ["INBOX"]}, "filters": {}}
    node = data
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    Path("fuzz.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    _load_or_plan_error("fuzz.yaml")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([*',;"\n\r x@ab\ufeff\x00', CSV_PASSWORD, f'"{CSV_PASSWORD}"']), max_size=40))
def test_hostile_csv_never_leaks_or_crashes(parts: list[str]) -> None:
    body = "".join(parts)
    write("plan.yaml", CSV_PLAN)
    Path("users.csv").write_text("EmailAddress;UserName;Password\n" + body, encoding="utf-8")
    try:
        plan = load_plan("plan.yaml")
    except PlanError as exc:
        assert CSV_PASSWORD not in str(exc)
    else:
        # a mangled row may put the text into a user column; it must never sit in a repr'd secret
        for job in plan.jobs:
            for account in (*job.sources, job.destination):
                assert CSV_PASSWORD not in repr(account.secret)


def test_new_endpoint_types_sources_and_modes(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(
        """version: 1
endpoints:
  pop: {type: pop3, host: pop.example, password_env: P}
  pop_plain: {type: pop3, host: pop.example, security: starttls, password_env: P}
  tb: {type: thunderbird, path: "profiles/{user}"}
  exo:
    type: exchange-online
    max_message_size: 150MB
    oauth: {flow: client_credentials, tenant: t1, client_id: app, client_secret_env: SECRET}
  onprem: {type: ews, service_endpoint: "https://ex.example/EWS/Exchange.asmx", version: Exchange2016,
           auth: ntlm, password_env: P}
destination: exo
defaults: {mode: move, after_copy: delete, pop3_seen: true, pop3_folder: "Imported/POP"}
mailboxes:
  - id: alice
    sources: [{endpoint: tb, user: alice}, {endpoint: pop, user: alice}]
    destination: {user: alice@example.com}
  - id: bob
    source: {endpoint: pop_plain, user: bob}
    destination: {user: bob@example.com}
    options: {mode: mirror, delete: true, max_delete_share: 0.2}
  - id: carol
    source: {endpoint: onprem, user: carol@ex.example}
    destination: {user: carol@example.com}
""",
        encoding="utf-8",
    )
    p = load_plan(plan)
    alice, bob, carol = p.jobs
    assert [a.type for a in alice.sources] == ["thunderbird", "pop3"]
    assert alice.sources[0].path == str(tmp_path / "profiles" / "alice")
    assert (alice.sources[1].port, alice.sources[1].security) == (995, "tls")
    assert (bob.source.port, bob.source.security) == (110, "starttls")
    dst = alice.destination
    assert (dst.type, dst.host, dst.port) == ("exchange-online", "outlook.office365.com", 993)
    assert dst.options["max_message_size"] == 150_000_000
    assert dst.oauth is not None and dst.oauth.flow == "client_credentials" and dst.oauth.client_secret.env == "SECRET"
    assert "SECRET" not in repr(dst.oauth.client_secret.value)
    assert (alice.options.mode, alice.options.after_copy, alice.options.pop3_seen) == ("move", "delete", True)
    assert alice.options.pop3_folder == "Imported/POP"
    assert (bob.options.mode, bob.options.delete, bob.options.max_delete_share) == ("mirror", True, 0.2)
    assert carol.source.options == {
        "service_endpoint": "https://ex.example/EWS/Exchange.asmx",
        "version": "Exchange2016",
        "auth": "ntlm",
    }


def test_exchange_online_csv_with_a_pop3_source(tmp_path: Path) -> None:
    """Issue 3, part 5: the Exchange Online CSV (EmailAddress, UserName, Password) with a
    POP3 source endpoint: the CSV password is the POP3 password, the destination uses
    the endpoint's OAuth settings."""
    (tmp_path / "users.csv").write_text(
        "EmailAddress,UserName,Password\nalice@contoso.example,alice,Pop-Secret-1\nbob@contoso.example,bob,Pop-2\n",
        encoding="utf-8",
    )
    plan = tmp_path / "p.yaml"
    plan.write_text(
        """version: 1
endpoints:
  pop: {type: pop3, host: pop.hoster.example}
  exo:
    type: exchange-online
    oauth: {flow: client_credentials, tenant: contoso.example, client_id: app, client_secret_env: S}
source: pop
destination: exo
defaults: {after_copy: keep, pop3_seen: true}
mailboxes_csv: users.csv
""",
        encoding="utf-8",
    )
    p = load_plan(plan)
    assert [(j.id, j.source.type, j.source.user, j.destination.user) for j in p.jobs] == [
        ("alice", "pop3", "alice", "alice@contoso.example"),
        ("bob", "pop3", "bob", "bob@contoso.example"),
    ]
    assert p.jobs[0].source.secret.get() == "Pop-Secret-1"
    assert (p.jobs[0].source.port, p.jobs[0].source.security) == (995, "tls")
    assert p.jobs[0].destination.oauth is not None and p.jobs[0].options.pop3_seen
    assert "Pop-Secret-1" not in repr(p)
