"""A message the destination altered when it stored it, as the reports show it: the
JSON report's ``altered_messages`` and counters, one warning problem per folder, the CSV
column, the console details and the summary line (exit code unchanged). No server: the
stats are filled the way the engine fills them. The real check against Dovecot is in
integration/test_stored_sizes.py and integration/test_hostile.py."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Console

from migrator.model import Account, MailboxJob, MessageMeta
from migrator.report import ExitCode, details, exit_code, one_line
from migrator.reports import render_csv, render_problems_csv, report_data
from migrator.stats import AlteredMessage, RunStats
from migrator.transfer import altered_messages


def job(jid: str) -> MailboxJob:
    return MailboxJob(jid, Account(type="maildir", path="/tmp/a"), Account(type="maildir", path="/tmp/b"))


def run_with_altered(n: int) -> RunStats:
    stats = RunStats(["box"])
    stats.start("box")
    fs = stats.folder("box", "maildir:/tmp/a", ("INBOX",), ("INBOX",))
    stats.add("box", fs, listed=n + 1, to_copy=n + 1, copied=n + 1, bytes=1000)
    for i in range(n):
        stats.altered_message("box", fs, AlteredMessage(("INBOX",), str(i), str(100 + i), 1236, 1234))
    stats.finish("box", "ok")
    return stats


def test_report_names_every_altered_message_with_both_sizes():
    data = report_data(run_with_altered(7), [job("box")], dry_run=False, plan_name="p")
    json.dumps(data)  # serialisable
    (mb,) = data["mailboxes"]
    assert (mb["copied"], mb["altered"], mb["failed"], data["totals"]["altered"]) == (8, 7, 0, 7)
    assert mb["folders"][0]["altered"] == 7
    assert mb["altered_messages"][0] == {
        "folder": "INBOX",
        "id": "0",
        "destination_id": "100",
        "sent_bytes": 1236,
        "stored_bytes": 1234,
        "reason": "altered by the destination: stored 1,234 of 1,236 bytes",
    }
    assert [a["id"] for a in mb["altered_messages"]] == [str(i) for i in range(7)]
    (problem,) = [p for p in data["problems"] if p["kind"] == "altered-message"]
    where = (problem["severity"], problem["count"], problem["folder"], problem["mailbox"])
    assert where == ("warning", 7, "INBOX", "box")
    assert "#0 stored 1,234 of 1,236 bytes" in problem["message"] and "and 2 more" in problem["message"]
    assert "#5 " not in problem["message"]  # five named, the rest counted
    assert (mb["trouble"], data["totals"]["warnings"]) == ("warning", 1)
    rows = list(csv.DictReader(io.StringIO(render_csv(data))))
    assert rows[0]["altered"] == "7"
    assert "altered-message" in render_problems_csv(data)


def test_nothing_altered_adds_nothing():
    data = report_data(run_with_altered(0), [job("box")], dry_run=False, plan_name="p")
    (mb,) = data["mailboxes"]
    assert (mb["altered"], mb["altered_messages"], mb["trouble"]) == (0, [], "ok")
    assert not [p for p in data["problems"] if p["kind"] == "altered-message"]
    stats = run_with_altered(0)
    assert "altered" not in one_line(stats, exit_code(stats))


def test_summary_line_and_details_name_them_and_the_exit_code_stays_0():
    stats = run_with_altered(60)
    code = exit_code(stats)
    assert code == ExitCode.OK
    line = one_line(stats, code)
    assert line.startswith("migrator: exit 0:") and "copied 61 message(s)" in line
    assert ", 60 altered by the destination (kept) in " in line
    console = Console(record=True, width=200)
    details(stats, console)
    text = console.export_text()
    assert "altered INBOX #0: altered by the destination: stored 1,234 of 1,236 bytes (kept as #100)" in text
    assert "altered INBOX #49:" in text and "altered INBOX #50:" not in text
    assert "... and 10 more altered" in text


def test_altered_messages_compares_with_the_bytes_sent():
    """Sent with CRLF: only another size is an alteration. Sent with bare LF: the store
    may keep it as sent or count it with CRLF; anything else is an alteration. No
    stored size (the store did not show the id) or no destination id: not judged."""
    crlf, lf = b"Subject: a\r\n\r\nbody\r\n", b"Subject: b\n\nbody\n"
    items = [(MessageMeta(str(i), 0), raw) for i, raw in enumerate((crlf, crlf, lf, lf, lf, crlf, crlf))]
    ids = ["10", "11", "12", "13", "14", "15", None]
    stored = {"10": len(crlf), "11": len(crlf) - 2, "12": len(lf), "13": len(lf) + 3, "14": len(lf) + 1, "16": 1}
    found = altered_messages(("F",), items, ids, stored)
    assert found == [
        AlteredMessage(("F",), "1", "11", len(crlf), len(crlf) - 2),
        AlteredMessage(("F",), "4", "14", len(lf) + 3, len(lf) + 1),
    ]
