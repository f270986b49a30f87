"""The benchmark: migrator against mbsync and OfflineIMAP in one run, on one private Dovecot
whose mail lives on tmpfs.

For each corpus (one mailbox of 10,000 generated messages; 20 mailboxes of 500) and
each tool, on a fresh destination: a first copy, a re-run with nothing changed, then
(after 100 new messages arrived at the sources, through IMAP APPEND) a re-run that
must bring exactly those. Every run is measured (wall time, messages/s, MB/s, the
client's peak RSS and CPU, the server's CPU), and the destination is compared with
the source after the first copy and after the last run (bytes, flags, keywords,
internal dates, counts per folder). Ratios are against mbsync, within this run. The
"state s" column is the CPU time migrator spent in its state store (checkpoints and
reads, timed by integration/bench/statetime.py). What checkpoints cost the wall time
(target: under 5 %) is measured by ``--tools migrator,migrator-nockpt,...``: the same
first copies with no message rows written.

    python -m integration.bench                     # everything (OfflineIMAP takes minutes)
    python -m integration.bench --quick             # 1,000 messages, 4 mailboxes of 100
    python -m integration.bench --tools migrator,mbsync --json bench.json
    python -m integration.bench --corpus courier    # a server with Courier's capabilities

The "courier" corpus runs on a second Dovecot in the Courier layout ("INBOX." and
".") that advertises what Courier-IMAP 5 does (no MULTIAPPEND, LITERAL+, CONDSTORE,
QRESYNC, LIST-STATUS, ESEARCH): what each client's protocol fallbacks cost, on the
same server engine. (Real Courier also differs in its own per-command cost.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from integration.bench.measure import Measured, run_measured
from integration.bench.tools import TOOLS, Pair, Tool
from integration.corpus import deliver_imap, generate, load_maildir
from integration.dovecot import DovecotServer
from integration.snapshot import Snapshot, snapshot_imap

PASSWORD = "bench-pw"
# what Courier-IMAP 5.0 advertises after login (ACL left out: this server has none)
COURIER_CAPABILITY = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT IDLE"


class CourierLikeDovecot(DovecotServer):
    """Dovecot in the Courier layout, advertising Courier's capabilities only."""

    def __init__(self, parent_dir: str | None) -> None:
        super().__init__(layout="courier", parent_dir=parent_dir)

    def _config(self, login_user: str, internal_user: str) -> str:
        return super()._config(login_user, internal_user) + f"imap_capability = {COURIER_CAPABILITY}\n"


TARGETS = {"first_ratio": 1.5, "unchanged_s": 0.3, "added_s": 0.5, "rss_mb": 200.0, "checkpoint_share": 0.05}


@dataclass
class Corpus:
    key: str  # "single" / "batch": names users and work directories
    label: str
    sources: list[str]
    seeds: list[int]
    count: int  # messages per source
    added: int  # new messages per source before the third run
    messages: int = 0
    bytes: int = 0
    added_bytes: int = 0
    snapshots: dict[str, Snapshot] = field(default_factory=dict)


@dataclass
class Row:
    corpus: str
    tool: str
    run: str  # "first copy", "no change", "+N new"
    wall: float
    messages: int
    bytes: int
    client_cpu: float
    server_cpu: float
    peak_rss: int
    returncode: int
    fidelity: str
    repeats: int = 1  # the row is the best of this many runs
    state_cpu: float | None = None  # CPU seconds in the state store (checkpoints), where known
    walls: list[float] = field(default_factory=list)  # of the repeats the row is the best of

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.wall if self.wall > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall if self.wall > 0 else 0.0


# --------------------------------------------------------------------------- fidelity
def fidelity(source: Snapshot, dest: Snapshot) -> str:
    """ "exact", or what differs: messages missing / extra / with other bytes, and for
    byte-identical ones other flags, keywords or internal dates."""
    missing = extra = bytes_changed = flags = keywords = keywords_lost = dates = 0
    for folder in set(source) | set(dest):
        src, dst = source.get(folder, []), dest.get(folder, [])
        by_sha: dict[str, list] = {}
        for f in dst:
            by_sha.setdefault(f.sha256, []).append(f)
        unmatched_src = 0
        for f in src:
            candidates = by_sha.get(f.sha256)
            if not candidates:
                unmatched_src += 1
                continue
            # prefer an exact twin, else any with the same bytes
            twin = next((c for c in candidates if c == f), candidates[0])
            candidates.remove(twin)
            flags += twin.flags != f.flags
            if twin.keywords != f.keywords:
                keywords += 1
                keywords_lost += bool(f.keywords) and not twin.keywords
            dates += twin.internal_date != f.internal_date
        unmatched_dst = sum(len(v) for v in by_sha.values())
        pairs = min(unmatched_src, unmatched_dst)
        bytes_changed += pairs
        missing += unmatched_src - pairs
        extra += unmatched_dst - pairs
    parts = []
    for n, what in (
        (missing, "missing"),
        (extra, "extra"),
        (bytes_changed, "bytes changed"),
        (flags, "flags differ"),
        (keywords, f"keywords differ ({keywords_lost} lost)" if keywords_lost else "keywords differ"),
        (dates, "dates differ"),
    ):
        if n:
            parts.append(f"{n} {what}")
    return "exact" if not parts else "; ".join(parts)


def snapshot_users(server: DovecotServer, users: Sequence[str]) -> dict[str, Snapshot]:
    return {u: snapshot_imap(server.host, server.imap_port, u, PASSWORD) for u in users}


def fidelity_of(server: DovecotServer, corpus: Corpus, pairs: Sequence[Pair]) -> str:
    merged_src: Snapshot = {}
    merged_dst: Snapshot = {}
    for src, dst in pairs:
        for folder, facts in corpus.snapshots[src].items():
            merged_src[(src, *folder)] = facts
        for folder, facts in snapshot_imap(server.host, server.imap_port, dst, PASSWORD).items():
            merged_dst[(src, *folder)] = facts
    return fidelity(merged_src, merged_dst)


# --------------------------------------------------------------------------- corpora
def load_corpus(server: DovecotServer, corpus: Corpus) -> None:
    for user, seed in zip(corpus.sources, corpus.seeds, strict=True):
        server.add_user(user, PASSWORD)
        info = load_maildir(
            generate(corpus.count, seed=seed),
            server.maildir(user),
            layout=server.layout,
            uid=server.mail_uid,
            gid=server.mail_gid,
        )
        server.force_resync(user)
        corpus.messages += int(info["messages"])  # type: ignore[call-overload]
        corpus.bytes += int(info["bytes"])  # type: ignore[call-overload]
    corpus.snapshots = snapshot_users(server, corpus.sources)


def add_new(server: DovecotServer, corpus: Corpus) -> int:
    """Deliver ``corpus.added`` new messages to each source (the next ones of its seed)."""
    total = 0
    for user, seed in zip(corpus.sources, corpus.seeds, strict=True):
        fresh = list(generate(corpus.count + corpus.added, seed=seed))[corpus.count :]
        deliver_imap(fresh, server.host, server.imap_port, user, PASSWORD, separator=server.separator,
                     prefix=server.prefix)  # fmt: skip
        total += sum(len(m.raw) for m in fresh)
    corpus.snapshots = snapshot_users(server, corpus.sources)
    return total


# --------------------------------------------------------------------------- running
def run_tool(server: DovecotServer, tool: Tool, corpus: Corpus, pairs: Sequence[Pair], run: str) -> Row:
    m: Measured = run_measured(
        tool.argv(pairs), server_pid=server_pid(server), env=tool.env(), cwd=tool.workdir, timeout=7200
    )
    if run == "first copy":
        messages, size = corpus.messages, corpus.bytes
    elif run == "no change":
        messages, size = 0, 0
    else:
        messages, size = corpus.added * len(corpus.sources), corpus.added_bytes
    verdict = "" if m.returncode == 0 else f"exit {m.returncode}: {m.output.strip().splitlines()[-1:]}"
    row = Row(
        corpus.label,
        tool.name,
        run,
        m.wall,
        messages,
        size,
        m.client_cpu,
        m.server_cpu,
        m.peak_rss,
        m.returncode,
        verdict,
    )
    row.state_cpu = tool.state_cpu()
    return row


def server_pid(server: DovecotServer) -> int:
    pid = server._pid  # the master
    if pid is None:
        raise RuntimeError("server not running")
    return pid


def best(rows: Sequence[Row]) -> Row:
    """The fastest of repeated runs; its fidelity is the worst any of them had, and
    a failed repeat makes the whole row failed."""
    failed = [r for r in rows if r.returncode != 0]
    if failed:
        return failed[0]
    top = min(rows, key=lambda r: r.wall)
    verdicts = sorted({r.fidelity for r in rows}, key=lambda v: (v != "exact", v))
    top.fidelity = verdicts[-1]
    top.repeats = len(rows)
    top.walls = sorted(r.wall for r in rows)
    return top


def bench_corpus(
    server: DovecotServer, corpus: Corpus, tools: Sequence[str], work: Path, args: argparse.Namespace
) -> list[Row]:
    """Each tool's first copy ``args.repeat`` times (each on a fresh destination, the
    tools' order alternating between repeats, so that neither always meets cold server
    caches), then its no-change re-run as often on the last copy, then one +N re-run;
    the best time of the repeats is reported."""
    print(f"\n== {corpus.label}: loading ...", flush=True)
    started = time.perf_counter()
    load_corpus(server, corpus)
    took = time.perf_counter() - started
    print(f"   {corpus.messages:,} messages, {corpus.bytes / 1e6:,.0f} MB in {took:.0f} s", flush=True)
    available = []
    for name in tools:
        if TOOLS[name](name=name, workdir=work, host="", port=0, password="").available():
            available.append(name)
        else:
            print(f"   {name}: not installed, skipped", flush=True)
    instances: dict[str, tuple[Tool, list[Pair]]] = {}
    firsts: dict[str, list[Row]] = {name: [] for name in available}

    def runs_first_copy(name: str, rep: int) -> bool:
        return rep == 0 or name != "offlineimap" or args.repeat_slow

    for rep in range(args.repeat):
        for name in available if rep % 2 == 0 else list(reversed(available)):
            if not runs_first_copy(name, rep):
                continue
            tool = TOOLS[name](
                name=name,
                workdir=work / f"{name}-{corpus.key}-{rep}",
                host=server.host,
                port=server.imap_port,
                password=PASSWORD,
                extra_args=tuple(args.migrator_args.split()) if name.startswith("migrator") else (),
            )
            pairs = []
            for i, src in enumerate(corpus.sources):
                dst = f"{tool.tag}{corpus.key}{rep}x{i:02d}"
                server.add_user(dst, PASSWORD)
                pairs.append((src, dst))
            tool.prepare(pairs)
            if not tool.first_copy_only:
                instances[name] = (tool, pairs)
            row = run_tool(server, tool, corpus, pairs, "first copy")
            if row.returncode == 0:
                row.fidelity = fidelity_of(server, corpus, pairs)
            firsts[name].append(row)
            later = any(runs_first_copy(name, r) for r in range(rep + 1, args.repeat))
            if later or tool.first_copy_only:  # only a tool's last copy is run again: tmpfs keeps no more
                purge(server, [dst for _src, dst in pairs])
            print(f"   {name:12} {'first copy':12} {row.wall:8.2f} s  {row.fidelity}", flush=True)
    rows = [best(firsts[name]) for name in available if firsts[name]]
    for name, (tool, pairs) in instances.items():
        again = []
        for _ in range(args.repeat):
            row = run_tool(server, tool, corpus, pairs, "no change")
            again.append(row)
            print(f"   {name:12} {'no change':12} {row.wall:8.2f} s", flush=True)
        rows.append(best(again))
    corpus.added_bytes = add_new(server, corpus)
    for name, (tool, pairs) in instances.items():
        run = f"+{corpus.added * len(corpus.sources)} new"
        row = run_tool(server, tool, corpus, pairs, run)
        if row.returncode == 0:
            row.fidelity = fidelity_of(server, corpus, pairs)
        rows.append(row)
        print(f"   {name:12} {run:12} {row.wall:8.2f} s  {row.fidelity}", flush=True)
    for _tool, pairs in instances.values():
        purge(server, [dst for _src, dst in pairs])
    return rows


def purge(server: DovecotServer, users: Sequence[str]) -> None:
    """Delete what these (destination) users hold once it is measured: the corpora's
    copies would fill tmpfs (the three corpora's repeats: 11 GB of a 24 GB machine),
    and the kernel's reclaiming then shows in the timings."""
    for user in users:
        shutil.rmtree(server.home(user), ignore_errors=True)


# --------------------------------------------------------------------------- reporting
def machine() -> dict[str, str]:
    def out(*argv: str) -> str:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
            return (proc.stdout or proc.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dovecot": out("dovecot", "--version"),
        "mail storage": "tmpfs (/dev/shm)",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def table(rows: Sequence[Row]) -> str:
    base = {(r.corpus, r.run): r for r in rows if r.tool == "mbsync" and r.returncode == 0}
    head = (
        f"{'corpus':22} {'tool':15} {'run':12} {'wall s':>8} {'msgs/s':>8} {'MB/s':>7} {'RSS MB':>7} "
        f"{'cli CPU':>7} {'srv CPU':>7} {'state s':>7} {'vs mbsync':>9}  fidelity"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ref = base.get((r.corpus, r.run))
        ratio = f"{ref.wall / r.wall:8.2f}x" if ref and r.wall > 0 and r.returncode == 0 else "        -"
        rate = f"{r.msgs_per_s:8,.0f}" if r.messages else "       -"
        mbs = f"{r.mb_per_s:7.1f}" if r.bytes else "      -"
        state = f"{r.state_cpu:7.2f}" if r.state_cpu is not None else "      -"
        lines.append(
            f"{r.corpus:22} {r.tool:15} {r.run:12} {r.wall:8.2f} {rate} {mbs} {r.peak_rss / 1e6:7.0f} "
            f"{r.client_cpu:7.2f} {r.server_cpu:7.2f} {state} {ratio}  {r.fidelity}"
            + (f" (best of {r.repeats})" if r.repeats > 1 else "")
        )
    return "\n".join(lines)


def targets(rows: Sequence[Row]) -> list[str]:
    """The issue's targets for migrator, each with its verdict: first copy >= 1.5x
    mbsync (>= 1.0x against Courier's capabilities); the re-run times for the
    10,000-message mailbox (for the other corpora they are printed for information);
    peak RSS everywhere."""
    out = []
    by = {(r.corpus, r.tool, r.run): r for r in rows}
    for corpus in dict.fromkeys(r.corpus for r in rows):
        mig = {r.run: r for r in rows if r.corpus == corpus and r.tool == "migrator"}
        if not mig:
            continue
        courier = "Courier" in corpus
        single = "1 mailbox" in corpus
        want = 1.0 if courier else TARGETS["first_ratio"]
        first, ref = mig.get("first copy"), by.get((corpus, "mbsync", "first copy"))
        if first and ref:
            ratio = ref.wall / first.wall
            ok = ratio >= want and first.fidelity == "exact"
            verdict = f"fidelity {first.fidelity}: {'MET' if ok else 'not met'}"
            out.append(f"{corpus}: first copy {ratio:.2f}x mbsync (>= {want:.1f}x), {verdict}")
        bare = by.get((corpus, "migrator-nockpt", "first copy"))
        if first and bare and bare.returncode == 0 and bare.wall > 0:
            # medians: the repeats swing more than checkpoints cost, and the best of a few
            # is as much luck as the worst
            with_, without = (
                statistics.median(first.walls or [first.wall]),
                statistics.median(bare.walls or [bare.wall]),
            )
            share = with_ / without - 1
            verdict = "MET" if share < TARGETS["checkpoint_share"] else "not met"
            out.append(
                f"{corpus}: checkpoints cost {100 * share:+.1f} % of the first copy's wall"
                f" (medians {with_:.2f} s with, {without:.2f} s without; < 5 %): {verdict}"
            )
        unchanged = mig.get("no change")
        if unchanged:
            ok = unchanged.wall <= TARGETS["unchanged_s"]
            verdict = ("MET" if ok else "not met") if single else "no target"
            out.append(f"{corpus}: no-change re-run {unchanged.wall:.2f} s (<= 0.3 s): {verdict}")
        added = next((r for run, r in mig.items() if run.startswith("+")), None)
        if added:
            ok = added.wall <= TARGETS["added_s"] and added.fidelity == "exact"
            verdict = ("MET" if ok else "not met") if single else f"no target, fidelity {added.fidelity}"
            out.append(f"{corpus}: {added.run} re-run {added.wall:.2f} s (<= 0.5 s): {verdict}")
        peak = max(r.peak_rss for r in mig.values()) / 1e6
        out.append(f"{corpus}: peak RSS {peak:.0f} MB (<= 200 MB): {'MET' if peak <= TARGETS['rss_mb'] else 'not met'}")
    return out


# --------------------------------------------------------------------------- main
def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m integration.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000, help="messages in the single mailbox (default 10,000)")
    p.add_argument("--mailboxes", type=int, default=20, help="mailboxes in the batch corpus (default 20)")
    p.add_argument("--per-mailbox", type=int, default=500, help="messages per batch mailbox (default 500)")
    p.add_argument("--added", type=int, default=100, help="new messages before the third run (default 100)")
    p.add_argument("--tools", default="migrator,mbsync,offlineimap", help="comma-separated: " + ",".join(TOOLS))
    p.add_argument(
        "--corpus",
        action="append",
        choices=["single", "batch", "courier"],
        help="which corpora (repeatable; default: single and batch)",
    )
    p.add_argument("--quick", action="store_true", help="1,000 messages; 4 mailboxes of 100")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each first copy and no-change re-run N times and keep the best (shared machines)",
    )
    p.add_argument("--repeat-slow", action="store_true", help="repeat OfflineIMAP's first copy too (minutes each)")
    p.add_argument("--migrator-args", default="", help="extra arguments for migrator copy/run")
    p.add_argument("--json", type=Path, help="also write the rows and the machine as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the server's directory (for inspection)")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.mailboxes, args.per_mailbox = 1000, 4, 100
    args.corpus = args.corpus or ["single", "batch"]
    unknown = set(args.tools.split(",")) - set(TOOLS)
    if unknown:
        p.error(f"unknown tool(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    tools = [t for t in args.tools.split(",") if t]
    parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    if parent is None:
        print("warning: no tmpfs at /dev/shm; numbers on disk swing 1.5-3x between runs", file=sys.stderr)
    info = machine()
    servers: dict[str, DovecotServer] = {}
    work = Path(tempfile.mkdtemp(prefix="migrator-bench-", dir=parent))
    work.chmod(0o755)  # the servers' mail processes (another uid) reach their homes through it
    rows: list[Row] = []
    try:
        added = max(args.added // max(args.mailboxes, 1), 1)
        corpora: list[tuple[str, Corpus]] = []
        if "single" in args.corpus:
            label = f"{args.messages:,} msgs, 1 mailbox"
            corpora.append(("dovecot", Corpus("single", label, ["srcsingle"], [args.seed], args.messages, args.added)))
        if "batch" in args.corpus:
            users = [f"srcbatch{i:02d}" for i in range(args.mailboxes)]
            seeds = [args.seed * 1000 + i for i in range(args.mailboxes)]
            label = f"{args.mailboxes} mailboxes x {args.per_mailbox}"
            corpora.append(("dovecot", Corpus("batch", label, users, seeds, args.per_mailbox, added)))
        if "courier" in args.corpus:
            label = f"{args.messages:,} msgs, Courier caps"
            corpora.append(
                ("courier", Corpus("courier", label, ["srccourier"], [args.seed], args.messages, args.added))
            )
        for kind, corpus in corpora:
            if kind not in servers:  # under the work directory: private, removed as one
                server = CourierLikeDovecot(str(work)) if kind == "courier" else DovecotServer("slash", str(work))
                servers[kind] = server.start()
            rows.extend(bench_corpus(servers[kind], corpus, tools, work, args))
    finally:
        if not args.keep:
            for server in servers.values():
                server.stop()
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: servers {[str(s.root) for s in servers.values()]}, work {work}")
    print()
    for key, value in info.items():
        print(f"{key}: {value}")
    for name in tools:
        tool_cls = TOOLS[name]
        probe = tool_cls(name=name, workdir=Path("."), host="", port=0, password="")
        if probe.available():
            print(f"{name}: {probe.version()}")
    print()
    print(table(rows))
    print()
    for line in targets(rows):
        print(line)
    if args.json:
        payload = {
            "machine": info,
            "rows": [{**asdict(r), "msgs_per_s": r.msgs_per_s, "mb_per_s": r.mb_per_s} for r in rows],
            "targets": targets(rows),
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    failed = Counter(r.tool for r in rows if r.returncode != 0)
    return 1 if failed.get("migrator") else 0
