"""The report as ONE self-contained HTML file: opens offline, loads nothing.

Inline CSS, a few lines of inline JavaScript (sortable tables, a mailbox filter) and
inline SVG charts; a Content-Security-Policy forbids every outside resource, so a
report that tried to load one would show it as an error in the browser console.
Every value from the data is escaped.

Sections: summary, charts (sizes; predicted or measured durations), the sortable
mailbox table, the problem list, and one collapsible detail block per mailbox.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from migrator.predict import duration_text, size_text

Data = dict[str, Any]

MAX_BARS = 40  # mailboxes drawn per chart (the largest); the table has them all
MAX_ROWS = 1000  # messages listed per mailbox detail list (the JSON has them all)
TROUBLE_RANK = {"error": 0, "warning": 1, "info": 2, "ok": 3}
KIND_TITLE = {"dry-run": "Dry run", "run": "Run report", "verify": "Verification"}


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(n: object) -> str:
    return f"{int(n or 0):,}"  # type: ignore[call-overload]


def _mb(n: object) -> str:
    return size_text(int(n or 0))  # type: ignore[call-overload]


def _dur(n: object) -> str:
    return duration_text(float(n)) if n is not None else "–"  # type: ignore[arg-type]


def _rate_mb(n: object) -> str:
    return f"{float(n) / 1e6:,.2f}" if n else "–"  # type: ignore[arg-type]


# (key, header, sort type, formatter); a key starting with "#" is computed
Column = tuple[str, str, str, Callable[[Any], str]]


def _mailbox_columns(kind: str) -> list[Column]:
    head: list[Column] = [
        ("id", "Mailbox", "text", str),
        ("status", "Status", "text", str),
        ("trouble", "Trouble", "num", str),
    ]
    tail: list[Column] = [("#errors", "Errors", "num", _num), ("#warnings", "Warnings", "num", _num)]
    if kind == "verify":
        return [
            *head,
            ("source_messages", "Source msgs", "num", _num),
            ("source_bytes", "Source size", "num", _mb),
            ("destination_messages", "Dest. msgs", "num", _num),
            ("at_destination", "At destination", "num", _num),
            ("skipped", "Skipped", "num", _num),
            ("unaccounted", "Unaccounted", "num", _num),
            ("extra_at_destination", "Extra at dest.", "num", _num),
            ("flag_differences", "Flag diffs", "num", _num),
            *tail,
        ]
    cols: list[Column] = [
        *head,
        ("#folders", "Folders", "num", _num),
        ("source_messages", "Messages", "num", _num),
        ("source_bytes", "Size", "num", _mb),
        ("already_there", "Already there", "num", _num),
        ("to_copy", "To copy", "num", _num),
        ("bytes_to_copy", "Size to copy", "num", _mb),
    ]
    if kind == "run":
        cols += [
            ("copied", "Copied", "num", _num),
            ("bytes_copied", "Size copied", "num", _mb),
            ("skipped", "Skipped", "num", _num),
            ("failed", "Failed", "num", _num),
            ("seconds", "Duration", "num", _dur),
            ("bytes_per_second", "MB/s", "num", _rate_mb),
        ]
    else:
        cols += [("skipped", "Skipped", "num", _num), ("estimated_seconds", "Est. duration", "num", _dur)]
    return cols + tail


def _value(mb: Data, key: str) -> Any:
    if key == "#folders":
        return len(mb["folders"])
    if key == "#errors":
        return sum(1 for p in mb["problems"] if p["severity"] == "error")
    if key == "#warnings":
        return sum(1 for p in mb["problems"] if p["severity"] == "warning")
    return mb.get(key)


def _sort_value(key: str, value: Any) -> str:
    if key == "trouble":
        return str(TROUBLE_RANK.get(str(value), 9))
    if value is None:
        return ""
    return str(value)


def _table(table_id: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[tuple[str, str, str]]]) -> str:
    """A sortable table: ``columns`` (header, sort type), ``rows`` of cells (html,
    sort value, css class)."""
    head = "".join(f'<th data-type="{esc(t)}" scope="col">{esc(h)}</th>' for h, t in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td data-v="{esc(v)}"{f" class={chr(34)}{esc(c)}{chr(34)}" if c else ""}>{h}</td>' for h, v, c in row
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<table id="{esc(table_id)}" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _mailbox_table(data: Data) -> str:
    cols = _mailbox_columns(data["kind"])
    rows = []
    for i, mb in enumerate(data["mailboxes"]):
        row = []
        for key, _, typ, fmt in cols:
            value = _value(mb, key)
            if key == "id":
                cell = f'<a href="#mb-{i}">{esc(value)}</a>'
            elif key == "trouble":
                cell = f'<span class="badge {esc(value)}">{esc(value)}</span>'
            else:
                cell = esc(fmt(value) if value is not None or typ == "num" else "")
            css = "num" if typ == "num" and key != "trouble" else ""
            if key == "status" and value == "failed":
                css = "bad"
            row.append((cell, _sort_value(key, value), css))
        rows.append(row)
    return _table("mailbox-table", [(h, t) for _, h, t, _ in cols], rows)


def _problem_table(problems: Sequence[Data], table_id: str, with_mailbox: bool = True) -> str:
    if not problems:
        return '<p class="none">No problems.</p>'
    cols = [("Severity", "num")]
    if with_mailbox:
        cols.append(("Mailbox", "text"))
    cols += [("Folder", "text"), ("Kind", "text"), ("Count", "num"), ("Problem", "text")]
    rows = []
    for p in problems:
        sev = str(p["severity"])
        row = [(f'<span class="badge {esc(sev)}">{esc(sev)}</span>', str(TROUBLE_RANK.get(sev, 9)), "")]
        if with_mailbox:
            row.append((esc(p["mailbox"]), str(p["mailbox"]), ""))
        row += [
            (esc(p["folder"]), str(p["folder"]), ""),
            (esc(p["kind"]), str(p["kind"]), ""),
            (esc(_num(p["count"])), str(p["count"]), "num"),
            (esc(p["message"]), str(p["message"]), "msg"),
        ]
        rows.append(row)
    return _table(table_id, cols, rows)


# --------------------------------------------------------------------------- charts
def bar_chart(title: str, items: Sequence[tuple[str, float, float, str, str]], unit: str, chart_id: str) -> str:
    """Horizontal bars as inline SVG. ``items``: (label, value, inner value drawn darker
    over the bar (e.g. the part still to copy), value text, css class)."""
    if not items or not any(v for _, v, _, _, _ in items):
        empty = '<p class="none">Nothing to draw.</p>'
        return f'<figure id="{esc(chart_id)}"><figcaption>{esc(title)}</figcaption>{empty}</figure>'
    shown = sorted(items, key=lambda x: -x[1])[:MAX_BARS]
    width, label_w, value_w, row_h = 820, 170, 210, 20
    bar_w = width - label_w - value_w
    top = max(v for _, v, _, _, _ in shown) or 1.0
    height = row_h * len(shown) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">'
    ]
    for n, (label, value, inner, text, css) in enumerate(shown):
        y = 4 + n * row_h
        w = max(bar_w * value / top, 1.0 if value else 0.0)
        wi = min(bar_w * inner / top, w)
        short = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<g class="bar {esc(css)}"><title>{esc(label)}: {esc(text)}</title>'
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{esc(short)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" class="outer"/>'
            + (f'<rect x="{label_w}" y="{y + 3}" width="{wi:.1f}" height="{row_h - 6}" class="inner"/>' if wi else "")
            + f'<text x="{label_w + w + 6:.1f}" y="{y + 14}">{esc(text)}</text></g>'
        )
    parts.append("</svg>")
    more = len(items) - len(shown)
    note = f'<p class="note">The {len(shown)} largest of {len(items)} mailboxes ({esc(unit)}).</p>' if more > 0 else ""
    return f'<figure id="{esc(chart_id)}"><figcaption>{esc(title)}</figcaption>{"".join(parts)}{note}</figure>'


def _charts(data: Data) -> str:
    mbs = data["mailboxes"]
    kind = data["kind"]
    charts = []
    if kind == "verify":
        sizes = [(m["id"], float(m["source_bytes"]), 0.0, _mb(m["source_bytes"]), m["trouble"]) for m in mbs]
        charts.append(bar_chart("Size at the source", sizes, "size", "chart-sizes"))
        return "".join(charts)
    inner_key = "bytes_to_copy" if kind == "dry-run" else "bytes_copied"
    sizes = [
        (
            m["id"],
            float(m["source_bytes"]),
            float(m[inner_key]),
            f"{_mb(m['source_bytes'])} ({_mb(m[inner_key])} {'to copy' if kind == 'dry-run' else 'copied'})",
            m["trouble"],
        )
        for m in mbs
    ]
    charts.append(
        bar_chart(
            "Size at the source; the darker part " + ("is still to copy" if kind == "dry-run" else "was copied"),
            sizes,
            "size",
            "chart-sizes",
        )
    )
    key = "estimated_seconds" if kind == "dry-run" else "seconds"
    title = "Predicted duration" if kind == "dry-run" else "Duration"
    durations = [(m["id"], float(m[key] or 0), 0.0, _dur(m[key]), m["trouble"]) for m in mbs]
    charts.append(bar_chart(title, durations, "duration", "chart-durations"))
    return "".join(charts)


# --------------------------------------------------------------------------- sections
def _cards(data: Data) -> str:
    t = data["totals"]
    kind = data["kind"]
    cards: list[tuple[str, str, str]] = [
        ("Mailboxes", _num(t.get("mailboxes")), f"{_num(t.get('failed_mailboxes'))} failed"),
    ]
    if kind == "verify":
        cards += [
            ("Source messages", _num(t.get("source_messages")), _mb(t.get("source_bytes"))),
            ("At destination", _num(t.get("at_destination")), ""),
            ("Skipped", _num(t.get("skipped")), "each with its reason"),
            ("Unaccounted", _num(t.get("unaccounted")), "must be 0"),
        ]
    else:
        cards += [
            ("Messages", _num(t.get("listed")), f"{_mb(t.get('listed_bytes'))} at the source"),
            ("Already there", _num(int(t.get("done", 0)) + int(t.get("matched", 0))), ""),
        ]
        if kind == "dry-run":
            est = data.get("estimate") or {}
            cards += [
                ("To copy", _num(t.get("to_copy")), _mb(t.get("bytes_to_copy"))),
                ("Skipped", _num(t.get("skipped")), "see the problems"),
                (
                    "Estimated duration",
                    _dur(est.get("total_seconds")),
                    (est.get("throughput") or {}).get("origin", "no throughput known"),
                ),
            ]
        else:
            cards += [
                ("Copied", _num(t.get("copied")), _mb(t.get("bytes"))),
                ("Skipped", _num(t.get("skipped")), ""),
                ("Failed", _num(t.get("failed")), "messages"),
                ("Duration", _dur(data.get("seconds")), ""),
            ]
    cards += [
        ("Errors", _num(t.get("errors")), ""),
        ("Warnings", _num(t.get("warnings")), ""),
    ]
    out = []
    for label, value, sub in cards:
        css = ""
        if label in ("Errors", "Unaccounted") and value != "0":
            css = " bad"
        elif label == "Warnings" and value != "0":
            css = " warn"
        out.append(
            f'<div class="card{css}"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div>'
            f'<div class="sub">{esc(sub)}</div></div>'
        )
    return f'<div class="cards">{"".join(out)}</div>'


def _info_rows(mb: Data, kind: str) -> str:
    rows = [("Sources", ", ".join(mb.get("sources") or [])), ("Destination", mb.get("destination"))]
    if mb.get("error"):
        rows.append(("Error", f"{mb.get('error_kind')}: {mb['error']}"))
    if "estimated_seconds" in mb and mb.get("estimated_seconds") is not None:
        rows.append(("Estimated duration", _dur(mb["estimated_seconds"])))
    if mb.get("seconds") and kind != "dry-run":
        rows.append(("Duration", _dur(mb["seconds"])))
    if mb.get("bytes_per_second"):
        rows.append(("Throughput", f"{_rate_mb(mb['bytes_per_second'])} MB/s, {mb.get('msgs_per_second')} msg/s"))
    info = mb.get("destination_info") or {}
    if info.get("server_capabilities"):
        rows.append(("Destination capabilities", " ".join(info["server_capabilities"])))
    if info.get("max_message_bytes"):
        rows.append(("Destination size limit", f"{_num(info['max_message_bytes'])} bytes per message"))
    q = info.get("quota")
    if q and q.get("storage_limit"):
        rows.append(("Destination quota", f"{_mb(q.get('storage_used'))} used of {_mb(q['storage_limit'])}"))
    return "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)


def _folder_table(mb: Data, kind: str, i: int) -> str:
    if not mb["folders"]:
        return ""
    if kind == "verify":
        spec = [
            ("source", "Source folder", "text"),
            ("destination", "Destination folder", "text"),
            ("source_messages", "Source msgs", "num"),
            ("destination_messages", "Dest. msgs", "num"),
            ("at_destination", "At destination", "num"),
            ("skipped", "Skipped", "num"),
            ("unaccounted", "Unaccounted", "num"),
            ("extra_at_destination", "Extra at dest.", "num"),
            ("flag_differences", "Flag diffs", "num"),
        ]
    else:
        spec = [
            ("source", "Source folder", "text"),
            ("destination", "Destination folder", "text"),
            ("listed", "Messages", "num"),
            ("source_bytes", "Size", "num"),
            ("already_there", "Already there", "num"),
            ("to_copy", "To copy", "num"),
            ("copied", "Copied", "num"),
            ("skipped", "Skipped", "num"),
            ("failed", "Failed", "num"),
            ("notes", "Notes", "text"),
        ]
    rows = []
    for f in mb["folders"]:
        row = []
        for key, _, typ in spec:
            v = f.get(key)
            if key == "notes":
                text = "; ".join(v or [])
                row.append((esc(text), text, "msg"))
            elif key == "source_bytes":
                row.append((esc(_mb(v)), str(v or 0), "num"))
            elif typ == "num":
                row.append((esc(_num(v)), str(v or 0), "num"))
            else:
                css = "renamed" if key == "destination" and f.get("renamed") else ""
                row.append((esc(v), str(v), css))
        rows.append(row)
    return _table(f"folders-{i}", [(h, t) for _, h, t in spec], rows)


def _message_list(title: str, items: Sequence[Data], fields: Sequence[tuple[str, str]]) -> str:
    if not items:
        return ""
    head = "".join(f"<th>{esc(h)}</th>" for _, h in fields)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(it.get(k))}</td>" for k, _ in fields) + "</tr>" for it in items[:MAX_ROWS]
    )
    more = f'<p class="note">{len(items) - MAX_ROWS:,} more in the JSON report.</p>' if len(items) > MAX_ROWS else ""
    table = f"<table class='plain'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<h4>{esc(title)} ({len(items):,})</h4>{table}{more}"


def _details(data: Data) -> str:
    kind = data["kind"]
    out = []
    for i, mb in enumerate(data["mailboxes"]):
        open_attr = " open" if mb["trouble"] == "error" and len(data["mailboxes"]) <= 50 else ""
        parts = [
            f'<details id="mb-{i}"{open_attr}><summary><span class="badge {esc(mb["trouble"])}">'
            f"{esc(mb['trouble'])}</span> <b>{esc(mb['id'])}</b> — {esc(mb['status'])}</summary>",
            f"<table class='info'>{_info_rows(mb, kind)}</table>",
            _folder_table(mb, kind, i),
        ]
        if mb["problems"]:
            parts.append("<h4>Problems</h4>" + _problem_table(mb["problems"], f"problems-{i}", with_mailbox=False))
        if kind == "verify":
            parts.append(
                _message_list(
                    "Unaccounted source messages",
                    mb.get("unaccounted_messages", []),
                    [
                        ("folder", "Folder"),
                        ("id", "Id"),
                        ("message_id", "Message-ID"),
                        ("size", "Size"),
                        ("reason", "Why"),
                    ],
                )
            )
            parts.append(
                _message_list(
                    "Flag differences",
                    mb.get("flag_differences_list", []),
                    [("folder", "Folder"), ("id", "Id"), ("source_flags", "Source"), ("destination_flags", "Dest.")],
                )
            )
        else:
            parts.append(
                _message_list(
                    "Failed messages",
                    mb.get("failed_messages", []),
                    [("folder", "Folder"), ("id", "Id"), ("reason", "Error")],
                )
            )
        parts.append(
            _message_list(
                "Skipped messages",
                mb.get("skipped_messages", []),
                [("folder", "Folder"), ("id", "Id"), ("reason", "Reason")],
            )
        )
        excluded = mb.get("excluded") or []
        if excluded:
            parts.append(_message_list("Folders not copied", excluded, [("folder", "Folder"), ("reason", "Reason")]))
        parts.append("</details>")
        out.append("".join(parts))
    return "".join(out)


CSS = """
:root{--bad:#b42318;--warn:#b54708;--ok:#067647;--muted:#667085;--line:#e4e7ec;--bg:#f9fafb;--bar:#84adea;--bar2:#1f5fbf}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#101828;background:#fff}
header,section{padding:12px 24px}header{background:var(--bg);border-bottom:1px solid var(--line)}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:18px 0 8px}h4{margin:14px 0 6px}
.meta,.note,.none,.sub,.label{color:var(--muted)}.note,.sub{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid var(--line);border-radius:8px;padding:8px 12px;
min-width:130px;background:#fff}
.card .value{font-size:20px;font-weight:600}.card.bad .value{color:var(--bad)}.card.warn .value{color:var(--warn)}
table{border-collapse:collapse;margin:4px 0 10px}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
table.sortable th{cursor:pointer;user-select:none;background:var(--bg)}
section{overflow-x:auto}
table.sortable th::after{content:" \\2195";color:#98a2b3}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:#101828}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:#101828}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.bad{color:var(--bad);font-weight:600}td.msg{max-width:60em}
td.renamed{color:var(--warn)}table.info th{width:14em;background:none}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;background:#eef4ff;color:#3538cd}
.badge.error{background:#fee4e2;color:var(--bad)}.badge.warning{background:#fef0c7;color:var(--warn)}.badge.ok{background:#dcfae6;color:var(--ok)}
details{border:1px solid var(--line);border-radius:8px;padding:6px 12px;margin:6px 0}summary{cursor:pointer}
figure{margin:8px 0 16px}figcaption{font-weight:600;margin-bottom:4px}
svg text{font-size:12px;fill:#344054}svg rect.outer{fill:var(--bar)}svg rect.inner{fill:var(--bar2)}
svg g.error rect.outer{fill:#f97066}svg g.error rect.inner{fill:var(--bad)}
#filter{padding:4px 8px;margin:0 0 6px;width:20em}
@media print{#filter{display:none}details{break-inside:avoid}}
"""

JS = """
(function () {
  "use strict";
  function sortKey(cell, type) {
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    if (type === "num") { var n = parseFloat(v); return isNaN(n) ? -Infinity : n; }
    return v.toLowerCase();
  }
  function makeSortable(table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      function sort() {
        var type = th.getAttribute("data-type") || "text";
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = sortKey(a.cells[col], type), y = sortKey(b.cells[col], type);
          var c = x < y ? -1 : (x > y ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
  var filter = document.getElementById("filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase();
      Array.prototype.forEach.call(document.querySelectorAll("#mailbox-table tbody tr"), function (r) {
        r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  }
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id ? document.getElementById(id) : null;
    if (el && el.tagName === "DETAILS") { el.open = true; }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
})();
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def render_html(data: Data) -> str:
    """The whole report as one HTML document (UTF-8)."""
    kind = data["kind"]
    title = f"{KIND_TITLE.get(kind, kind)} of plan {data['plan']}"
    problems = data["problems"]
    n_info = sum(1 for p in problems if p["severity"] == "info")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<header><h1>{esc(title)}</h1>
<p class="meta">Generated {esc(data.get("generated"))} by migrator {esc(data.get("migrator"))};
report schema {esc(data.get("schema"))}.
{"Nothing was written at any destination." if kind == "dry-run" else ""}</p></header>
<section id="summary"><h2>Summary</h2>{_cards(data)}</section>
<section id="charts"><h2>Charts</h2>{_charts(data)}</section>
<section id="mailboxes"><h2>Mailboxes</h2>
<input id="filter" type="search" placeholder="Filter mailboxes" aria-label="Filter mailboxes">
{_mailbox_table(data)}</section>
<section id="problems"><h2>Problems ({len(problems) - n_info:,} errors and warnings, {n_info:,} notes)</h2>
{_problem_table(problems, "problem-table")}</section>
<section id="details"><h2>Mailbox details</h2>{_details(data)}</section>
<script>{JS}</script>
</body></html>
"""
