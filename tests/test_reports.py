"""Reports, predictions and verification without a server: stats listing counters,
throughput and estimates, problem classification, JSON/CSV/HTML writers, the verify
matcher, and `migrator plan` / `migrator verify` on local Maildir stores."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections import namedtuple
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.connectors.local import open_maildir
from migrator.errors import PlanError
from migrator.folders import map_folders
from migrator.march import skip_reason
from migrator.model import (
    Account,
    Capabilities,
    Filters,
    FolderInfo,
    FolderRules,
    MailboxJob,
    MessageMeta,
    crlf_size,
)
from migrator.predict import (
    JobProbe,
    Quota,
    StoreProbe,
    Throughput,
    duration_text,
    estimate,
    measured_throughput,
    normalise_quota,
    parse_throughput,
    problems,
    schedule,
    size_text,
)
from migrator.report_html import render_html
from migrator.reports import problems_csv_path, render_csv, report_data, write_report_files
from migrator.state import FolderRef, State
from migrator.stats import RunStats
from migrator.verify import FolderCheck, Row, _Entry, reconcile

runner = CliRunner()


def meta(i: str, size: int = 100, mid: str | None = "auto", flags: frozenset[str] = frozenset()) -> MessageMeta:
    return MessageMeta(i, size, flags, None, f"<{i}@x>" if mid == "auto" else mid)


def job(jid: str, path: str = "/tmp/none") -> MailboxJob:
    return MailboxJob(jid, Account(type="maildir", path=path), Account(type="maildir", path=path + "-out"))


# --------------------------------------------------------------------------- stats listing hook
def test_listing_counts_sizes_duplicates_and_missing_ids_once_even_after_a_retry():
    stats = RunStats(["a"])
    stats.start("a")
    fs = stats.folder("a", "src", ("INBOX",), ("INBOX",))
    page = [meta("1", 10, "<x@y>"), meta("2", 20, "<x@y>"), meta("3", 30, None), meta("4", 40, "<z@y>")]
    stats.listing("a", fs, page[:2])
    stats.listing("a", fs, page[2:])
    stats.listing("a", fs, page)  # a retry lists the folder again
    assert (fs.listed_bytes, fs.no_message_id, fs.duplicate_message_ids) == (0, 0, 0)  # settled at finish
    stats.finish("a", "ok")
    assert (fs.listed_bytes, fs.no_message_id, fs.duplicate_message_ids) == (100, 1, 2)
    assert fs.duplicate_examples == (("<x@y>", 2),)
    assert stats.mailboxes["a"].listings == {}  # memory released
    assert stats.totals()["listed_bytes"] == 100


# --------------------------------------------------------------------------- throughput and estimates
@pytest.mark.parametrize(
    ("text", "msgs", "nbytes"),
    [
        ("20msg/s", 20.0, None),
        ("20/s", 20.0, None),
        ("2.5 messages/sec", 2.5, None),
        ("5MB/s", None, 5e6),
        ("800 KiB/s", None, 800 * 1024.0),
        ("20msg/s, 5MB/s", 20.0, 5e6),
    ],
)
def test_parse_throughput(text, msgs, nbytes):
    got = parse_throughput(text)
    assert (got.msgs_per_second, got.bytes_per_second) == (msgs, nbytes)
    assert text in got.origin


@pytest.mark.parametrize("text", ["fast", "5MB", "0/s", "5 parsecs/s", ""])
def test_parse_throughput_refuses(text):
    with pytest.raises(ValueError):
        parse_throughput(text)


def test_schedule_longest_first_on_parallel_lanes():
    assert schedule([4, 3, 3, 2], 2) == 6
    assert schedule([4, 3, 3, 2], 1) == 12
    assert schedule([5], 8) == 5
    assert schedule([], 3) == 0


def test_estimate_takes_the_slower_of_both_rates():
    stats = RunStats(["a", "b"])
    for jid, n, b in (("a", 100, 1_000_000), ("b", 10, 50_000_000)):
        fs = stats.folder(jid, "s", ("INBOX",), ("INBOX",))
        stats.add(jid, fs, to_copy=n, bytes_to_copy=b)
    est = estimate(stats, [job("a"), job("b")], Throughput(10.0, 1e6), parallel=2)
    assert est.per_mailbox == {"a": 10.0, "b": 50.0}
    assert est.total_seconds == 50.0
    unknown = estimate(stats, [job("a")], None, parallel=2)
    assert unknown.per_mailbox == {"a": None} and unknown.total_seconds is None


def test_measured_throughput_from_earlier_runs(tmp_path):
    path = tmp_path / "s.db"
    state = State.open(path)
    run = state.start_run("run", False)
    for jid in ("a", "b"):
        ref = FolderRef(jid, "src", ("INBOX",), 1, ("INBOX",))
        state.mark_copied(ref, [(meta(f"{jid}{i}"), str(i), None) for i in range(50)], run)
    state.finish_run(run, "ok", {"copied": 100, "bytes": 2_000_000})
    dry = state.start_run("run", True)
    state.finish_run(dry, "ok", {"copied": 999, "bytes": 1})
    state.close()
    with sqlite3.connect(path) as db:
        db.execute("update runs set started = '2024-01-01T10:00:00+00:00', finished = '2024-01-01T10:00:10+00:00'")
    got = measured_throughput(path, parallel=4)
    assert got is not None
    # 100 messages in 10 s, shared by the 2 mailboxes that copied in that run
    assert got.msgs_per_second == pytest.approx(5.0)
    assert got.bytes_per_second == pytest.approx(100_000.0)
    assert "1 earlier run" in got.origin
    assert measured_throughput(tmp_path / "none.db", 4) is None


def test_duration_and_size_text():
    assert [duration_text(x) for x in (None, 0.2, 42, 600, 7260, 200_000)] == [
        "unknown", "< 1 s", "42 s", "10 min", "2 h 01 min", "2 d 7 h"]  # fmt: skip
    assert [size_text(x) for x in (0, 999, 1500, 2_500_000, 3e9)] == ["0 B", "999 B", "1.5 KB", "2.5 MB", "3.0 GB"]


def test_normalise_quota_forms():
    Q = namedtuple("Q", "quota_root resource usage limit")
    imapclient_answer = (object(), [Q("User quota", "STORAGE", 10, 100), Q("User quota", "MESSAGE", 3, 50)])
    assert normalise_quota(imapclient_answer) == Quota("User quota", 10 * 1024, 100 * 1024, 3, 50)
    assert normalise_quota((2048, 4096)) == Quota("", 2048, 4096)
    assert normalise_quota({"storage_used": 1, "storage_limit": 2}) == Quota("", 1, 2)
    assert normalise_quota(None) is None and normalise_quota([]) is None and normalise_quota("odd") is None


# --------------------------------------------------------------------------- problems
def _dry_stats() -> RunStats:
    stats = RunStats(["a", "b"])
    stats.start("a")
    caps = Capabilities(max_message_bytes=1000, forbidden_name_chars="./")
    plan = map_folders([FolderInfo(("INBOX",)), FolderInfo(("Q1.2024",))], [], FolderRules(), caps)
    for fm in plan.maps:
        fs = stats.folder("a", "src", fm.source.path, fm.dest_path, fm.notes)
        stats.listing("a", fs, [meta(f"{fm.dest_path[0]}1", 500), meta(f"{fm.dest_path[0]}2", 5000, None)])
        stats.add("a", fs, listed=2, to_copy=1, bytes_to_copy=500, skipped=1)
        big = meta(f"{fm.dest_path[0]}2", 5000, None)
        stats.skipped_message("a", fm.source.path, big.id, skip_reason(big, Filters(), caps) or "")
    stats.finish("a", "ok")
    stats.start("b")
    stats.finish("b", "failed", "127.0.0.1: login failed for bob: [AUTHENTICATIONFAILED]", "auth")
    return stats


def test_problems_of_a_dry_run():
    stats = _dry_stats()
    probes = {
        "a": JobProbe(
            StoreProbe("imap://a@dst", "destination", ("IMAP4REV1", "QUOTA"), 1000, Quota("", 9_900, 10_000)),
            (StoreProbe("imap://a@src", "source", ("IMAP4REV1", "UIDPLUS")),),
        ),
        "b": JobProbe(
            StoreProbe("imap://b@dst", "destination", error="login failed", error_kind="auth"),
            (StoreProbe("imap://b@src", "source", ("CONDSTORE",)),),
        ),
    }
    got = problems(stats, [job("a"), job("b")], probes, dry_run=True)
    assert [p.severity for p in got] == sorted((p.severity for p in got), key=["error", "warning", "info"].index)
    by = {(p.mailbox, p.kind, p.folder): p for p in got}
    assert by[("b", "login", "")].message.startswith("login failed: 127.0.0.1: login failed for bob")
    assert not any(p.mailbox == "b" and p.kind != "login" for p in got)  # the probe's failure is not repeated
    assert (
        by[("a", "too-large", "INBOX")].count == 1 and "limit of 1,000 bytes" in by[("a", "too-large", "INBOX")].message
    )
    name = by[("a", "folder-name", "Q1.2024")]
    assert name.severity == "warning" and "'Q1.2024' -> 'Q1_2024'" in name.message
    assert by[("a", "no-message-id", "INBOX")].count == 1
    quota = by[("a", "quota", "")]
    assert quota.severity == "error" and "needs 1.0 KB but only 100 B free" in quota.message
    caps = [p.message for p in got if p.kind == "capability"]
    assert any("no UIDPLUS" in m for m in caps) and any("no CONDSTORE" in m for m in caps)


def test_run_problems_name_failed_messages():
    stats = RunStats(["a"])
    stats.start("a")
    fs = stats.folder("a", "s", ("INBOX",), ("INBOX",))
    stats.add("a", fs, failed=1)
    stats.failed_message("a", ("INBOX",), "17", "APPEND refused: [LIMIT] too big")
    stats.skipped_message("a", ("INBOX",), "18", "size 9 over filters.max_size 5")
    stats.skipped_message("a", ("INBOX",), "19", "size 8 over filters.max_size 5")
    stats.finish("a", "ok")
    got = problems(stats, [job("a")], None, dry_run=False)
    assert [(p.severity, p.kind, p.count) for p in got] == [("error", "failed-message", 1), ("info", "skipped", 2)]
    assert got[0].message == "#17: APPEND refused: [LIMIT] too big"


# --------------------------------------------------------------------------- writers
HOSTILE = '<script>alert("x")</script> & Co'


def _data() -> dict:
    stats = _dry_stats()
    stats.folder("a", "src", (HOSTILE,), (HOSTILE,), ("renamed by folders.rename '<x>'",))
    return report_data(stats, [job("a"), job("b")], dry_run=True, plan_name="p")


def test_report_data_and_csv():
    data = _data()
    assert (data["schema"], data["kind"], data["dry_run"]) == (1, "dry-run", True)
    a, b = data["mailboxes"]
    assert (a["source_messages"], a["source_bytes"], a["to_copy"], a["skipped"]) == (4, 11_000, 2, 2)
    assert (b["status"], b["trouble"], b["folders"]) == ("failed", "error", [])
    assert data["totals"]["failed_mailboxes"] == 1 and data["totals"]["errors"] == 1
    rows = list(csv.DictReader(io.StringIO(render_csv(data))))
    assert [(r["mailbox"], r["source_folder"]) for r in rows] == [
        ("a", "INBOX"), ("a", HOSTILE), ("a", "Q1.2024"), ("b", "")]  # fmt: skip
    assert rows[2]["destination_folder"] == "Q1_2024" and rows[2]["renamed"] == "yes"
    assert rows[3]["mailbox_status"] == "failed" and "login failed" in rows[3]["error"]


def test_files_are_private_atomic_and_formats_checked(tmp_path):
    data = _data()
    old = tmp_path / "r.json"
    old.write_text("old")
    old.chmod(0o644)
    written = write_report_files([old, tmp_path / "r.csv", tmp_path / "sub" / "r.html"], data)
    assert written == [old, tmp_path / "r.csv", problems_csv_path(tmp_path / "r.csv"), tmp_path / "sub" / "r.html"]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert json.loads(old.read_text())["plan"] == "p"
    assert (tmp_path / "r-problems.csv").read_text().startswith("mailbox,severity,kind,folder,count,message")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r-problems.csv", "r.csv", "r.json", "sub"]  # no temp files
    with pytest.raises(PlanError, match="unknown report format"):
        write_report_files([tmp_path / "r.txt"], data)


def test_html_is_self_contained_and_escapes_everything():
    page = render_html(_data())
    assert HOSTILE not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in page
    assert page.count("<script>") == 1  # ours, inline
    lowered = page.lower()
    for external in ("src=", "<link", "@import", "url(", "https://"):
        assert external not in lowered
    assert "default-src 'none'" in page
    assert 'id="mailbox-table"' in page and 'id="problem-table"' in page and "<svg" in page


# --------------------------------------------------------------------------- the verify matcher
def _entry(msgs, rows=None, hashes=None, path=("INBOX",)) -> _Entry:
    return _Entry(FolderCheck("s", path, ("INBOX",)), msgs, rows or {}, hashes or {}, True)


def test_reconcile_by_destination_id_then_identity_multiset():
    # two distinct source messages share a Message-ID and size; the destination holds one
    src = [meta("1", 10, "<d@x>"), meta("2", 10, "<d@x>"), meta("3", 20)]
    rows = {"3": Row("copied", "30", ("INBOX",), 20, "<3@x>", None, None)}
    e = _entry(src, rows)
    dst = [meta("30", 20, "<3@x>"), meta("31", 10, "<d@x>"), meta("99", 5, "<extra@x>")]
    reconcile([e], dst, {}, Capabilities())
    assert e.check.at_destination == 2
    assert [(u.id, u.reason.split(" (")[0]) for u in e.check.unaccounted] == [("2", "never copied")]
    assert e.check.extra_at_destination == 1 and e.check.destination_messages == 3


def test_reconcile_reasons_skips_hashes_and_flags():
    no_mid = meta("5", 50, None)
    src = [meta("1", 10), meta("2", 10), meta("3", 10), meta("4", 10, flags=frozenset({"\\Seen"})), no_mid]
    rows = {
        "1": Row("skipped", None, None, 10, "<1@x>", None, "size over filters.max_size"),
        "2": Row("failed", None, None, 10, "<2@x>", None, "APPEND refused: [LIMIT]"),
        "3": Row("copied", "77", ("INBOX",), 10, "<3@x>", None, None),
        "5": Row("copied", None, ("INBOX",), 50, None, "h5", None),
    }
    e = _entry(src, rows, hashes={"5": "h5"})
    dst = [meta("40", 10, "<4@x>", frozenset({"\\Seen", "\\Flagged", "\\Recent"})), meta("50", 50, None)]
    reconcile([e], dst, {"50": "h5"}, Capabilities())
    assert e.check.skipped == 1 and e.check.skipped_messages == [("1", "size over filters.max_size")]
    reasons = {u.id: u.reason for u in e.check.unaccounted}
    assert reasons["2"] == "failed: APPEND refused: [LIMIT]"
    assert reasons["3"].startswith("recorded as copied as id 77 but not at the destination")
    assert set(reasons) == {"2", "3"}
    assert e.check.at_destination == 2  # #4 by Message-ID, #5 by content hash
    (diff,) = e.check.flag_differences
    assert (diff.id, diff.source_flags, diff.destination_flags) == ("4", ("\\Seen",), ("\\Flagged", "\\Seen"))


def test_reconcile_merged_folders_with_the_same_ids():
    a = _entry([meta("1", 10, "<a@x>")], path=("Sent",))
    b = _entry([meta("1", 10, "<b@x>")], path=("Gesendet",))
    reconcile([a, b], [meta("7", 10, "<b@x>"), meta("8", 10, "<a@x>")], {}, Capabilities())
    assert (a.check.at_destination, b.check.at_destination) == (1, 1)
    assert a.check.extra_at_destination == 0 and not a.check.unaccounted and not b.check.unaccounted


# --------------------------------------------------------------------------- the commands on local stores
def _maildir(path: Path, n: int, folder: tuple[str, ...] = ("INBOX",)) -> None:
    store = open_maildir(Account(type="maildir", path=str(path)), "destination")
    f = store.ensure_folder(folder)
    date = datetime(2022, 1, 2, 3, 4, 5, tzinfo=UTC)
    items = []
    for i in range(n):
        raw = f"From: a@x\r\nSubject: {folder[-1]} {i}\r\nMessage-ID: <{folder[-1]}.{i}@x>\r\n\r\nbody {i}\r\n".encode()
        items.append((MessageMeta(f"s{i}", crlf_size(raw), frozenset({"\\Seen"}), date, f"<{folder[-1]}.{i}@x>"), raw))
    store.append(f, items)
    store.close()


@pytest.fixture
def local_plan(tmp_path: Path) -> Path:
    _maildir(tmp_path / "src" / "a", 4)
    _maildir(tmp_path / "src" / "a", 2, ("Work",))
    _maildir(tmp_path / "src" / "b", 3)
    plan = tmp_path / "p.yaml"
    plan.write_text(
        """version: 1
name: local
state: state/local.db
endpoints:
  src: {type: maildir}
  dst: {type: maildir}
source: src
destination: dst
mailboxes:
  - {id: a, source: {path: src/a}, destination: {path: out/a}}
  - {id: b, source: {path: src/b}, destination: {path: out/b}}
""",
        encoding="utf-8",
    )
    return plan


def test_plan_command_writes_all_formats_and_nothing_else(local_plan: Path):
    out = local_plan.parent / "reports"
    res = runner.invoke(
        app,
        [
            "plan",
            str(local_plan),
            "--throughput",
            "2msg/s",
            "--report",
            str(out / "p.json"),
            "--report",
            str(out / "p.csv"),
            "--report",
            str(out / "p.html"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Estimated duration: 3 s with 2 mailbox(es) at a time, at 2.0 msg/s per mailbox" in res.output
    assert "would copy 9 message(s)" in res.output
    assert not (local_plan.parent / "out").exists() and not (local_plan.parent / "state").exists()
    data = json.loads((out / "p.json").read_text())
    assert [(m["id"], m["to_copy"], m["estimated_seconds"]) for m in data["mailboxes"]] == [
        ("a", 6, 3.0),
        ("b", 3, 1.5),
    ]
    assert data["estimate"]["total_seconds"] == 3.0
    assert sorted(p.name for p in out.iterdir()) == ["p-problems.csv", "p.csv", "p.html", "p.json"]


def test_plan_and_run_refuse_bad_options_before_doing_anything(local_plan: Path):
    bad = runner.invoke(app, ["plan", str(local_plan), "--throughput", "fast"])
    assert bad.exit_code == 2 and "--throughput" in bad.output
    fmt = runner.invoke(app, ["run", str(local_plan), "--report", str(local_plan.parent / "r.txt")])
    assert fmt.exit_code == 2 and "unknown report format" in fmt.output
    assert not (local_plan.parent / "out").exists()


def test_verify_command_passes_then_names_a_lost_message(local_plan: Path):
    assert runner.invoke(app, ["run", str(local_plan), "-q"]).exit_code == 0
    ok = runner.invoke(app, ["verify", str(local_plan), "--report", str(local_plan.parent / "v.csv")])
    assert ok.exit_code == 0, ok.output
    assert "9 at the destination, 0 skipped with a reason, 0 unaccounted" in ok.output
    rows = list(csv.DictReader((local_plan.parent / "v.csv").open()))
    assert [(r["mailbox"], r["source_folder"], r["at_destination"]) for r in rows] == [
        ("a", "INBOX", "4"), ("a", "Work", "2"), ("b", "INBOX", "3")]  # fmt: skip
    victim = next((local_plan.parent / "out" / "a" / ".Work" / "cur").iterdir())
    victim.unlink()
    lost = runner.invoke(app, ["verify", str(local_plan)])
    assert lost.exit_code == 1, lost.output
    line = next(ln for ln in lost.output.splitlines() if "unaccounted Work" in ln)
    assert "recorded as copied" in line and "not at the destination" in line
    missing_state = runner.invoke(app, ["verify", str(local_plan), "--state", str(local_plan.parent / "none.db")])
    assert missing_state.exit_code == 1 and "no state DB" in missing_state.output
    assert "never copied" in missing_state.output


def test_run_report_has_durations_throughput_and_reasons(local_plan: Path):
    res = runner.invoke(app, ["run", str(local_plan), "-q", "--report", str(local_plan.parent / "run.json")])
    assert res.exit_code == 0, res.output
    data = json.loads((local_plan.parent / "run.json").read_text())
    assert data["kind"] == "run" and data["estimate"] is None
    a = data["mailboxes"][0]
    assert (a["copied"], a["bytes_copied"] > 0, a["seconds"] > 0) == (6, True, True)
    assert a["msgs_per_second"] == pytest.approx(6 / a["seconds"], rel=0.01)


def test_reconcile_accepts_a_copy_the_destination_altered():
    # recorded id, same Message-ID, other size (Dovecot stored CR CR LF as CR LF): there
    row = {"1": Row("copied", "9", ("INBOX",), 100, "<1@x>", None, None)}
    e = _entry([meta("1", 100)], row)
    reconcile([e], [meta("9", 98, "<1@x>")], {}, Capabilities())
    assert (e.check.at_destination, e.check.unaccounted) == (1, [])
    # no checkpoint: the same Message-ID at another size counts only when the normalised contents agree
    for dst_hash, found in (("same", 1), ("other", 0)):
        e = _entry([meta("1", 100), meta("2", 50)], hashes={"1": "same"})
        asked = []

        def fetch(msgs, dst_hash=dst_hash, asked=asked):
            asked.extend(m.id for m in msgs)
            return {m.id: dst_hash for m in msgs}

        reconcile([e], [meta("9", 98, "<1@x>"), meta("8", 50, "<2@x>")], {}, Capabilities(), fetch)
        assert asked == ["9"]
        assert e.check.at_destination == 1 + found and len(e.check.unaccounted) == 1 - found
    # a destination that rewrites messages (Exchange Online): the Message-ID alone identifies
    e = _entry([meta("1", 100)])
    reconcile([e], [meta("9", 140, "<1@x>")], {}, Capabilities(exact_sizes=False))
    assert e.check.at_destination == 1
