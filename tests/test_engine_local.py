"""Engine rules on local stores (no server needed): refused messages, merges, filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.connectors.local import open_maildir, open_mbox
from migrator.errors import TransientError
from migrator.model import Account, MessageMeta, crlf_size
from migrator.ratelimit import ByteBudget
from migrator.state import FolderRef, State
from migrator.transfer import FolderCopy

runner = CliRunner()


def raw(n: int, mid: bool = True) -> bytes:
    head = f"From: a@example.org\r\nSubject: m{n}\r\n" + (f"Message-ID: <m{n}@example.org>\r\n" if mid else "")
    return (head + f"\r\nbody {n}\r\n").encode()


def fill_mbox(path: Path, items: list[tuple[bytes, frozenset[str]]], folder: tuple[str, ...] = ("INBOX",)) -> None:
    store = open_mbox(Account(type="mbox", path=str(path)), "destination")
    f = store.ensure_folder(folder)
    date = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    store.append(f, [(MessageMeta(f"s{i}", crlf_size(r), fl, date), r) for i, (r, fl) in enumerate(items)])
    store.close()


def maildir_messages(path: Path) -> list[tuple[bytes, frozenset[str]]]:
    store = open_maildir(Account(type="maildir", path=str(path)), "source")
    out = []
    for f in store.list_folders():
        metas = store.list_messages(f)
        out += [(r, m.flags) for m, r in store.fetch(f, metas)]
    return out


def copy(src: Path, dst: Path, state: Path, *extra: str):
    return runner.invoke(app, ["copy", f"mbox:{src}", f"maildir:{dst}", "--state", str(state), *extra])


def test_a_refused_message_fails_alone_with_its_reason_and_is_retried(tmp_path: Path):
    # 27 distinct keywords: a Maildir folder can hold only 26, so one message is refused
    items = [(raw(i), frozenset({f"kw{i:02d}"})) for i in range(27)]
    fill_mbox(tmp_path / "src", items)
    res = copy(tmp_path / "src", tmp_path / "dst", tmp_path / "s.db")
    assert res.exit_code == 1, res.output
    assert "26 keywords" in res.output and "1 failed" in res.output
    got = maildir_messages(tmp_path / "dst")
    assert len(got) == 26 and len({r for r, _ in got}) == 26  # no duplicate from the one-by-one retry
    status = runner.invoke(
        app, ["copy", f"mbox:{tmp_path / 'src'}", f"maildir:{tmp_path / 'dst'}", "--state", str(tmp_path / "s.db")]
    )
    assert status.exit_code == 1  # still refused on the re-run, still reported, still no duplicate
    assert len(maildir_messages(tmp_path / "dst")) == 26


def test_merge_two_sources_into_one_destination_without_duplicates(tmp_path: Path):
    a = [(raw(i), frozenset({"\\Seen"})) for i in range(10)]
    b = [(raw(i), frozenset({"\\Seen"})) for i in range(5, 15)]  # 5 overlap with a
    b.append((raw(99, mid=False), frozenset()))
    fill_mbox(tmp_path / "a", a)
    fill_mbox(tmp_path / "b", b)
    dst = tmp_path / "dst"
    assert copy(tmp_path / "a", dst, tmp_path / "a.db").exit_code == 0
    res = copy(tmp_path / "b", dst, tmp_path / "b.db")
    assert res.exit_code == 0, res.output
    assert "copied 6 message(s)" in res.output and "5 already there" in res.output
    got = sorted(r for r, _ in maildir_messages(dst))
    assert got == sorted({r for r, _ in a + b})


def test_true_duplicates_and_shared_message_ids_are_all_copied(tmp_path: Path):
    same = raw(1)
    other_with_same_id = same.replace(b"body 1", b"a different body")
    items = [
        (same, frozenset()),
        (same, frozenset()),
        (other_with_same_id, frozenset()),
        (raw(5, mid=False), frozenset()),
        (raw(5, mid=False), frozenset()),
    ]
    fill_mbox(tmp_path / "src", items)
    res = copy(tmp_path / "src", tmp_path / "dst", tmp_path / "s.db")
    assert res.exit_code == 0, res.output
    assert sorted(r for r, _ in maildir_messages(tmp_path / "dst")) == sorted(r for r, _ in items)
    # and a fresh state (lost checkpoints) matches all five instead of copying them again
    again = copy(tmp_path / "src", tmp_path / "dst", tmp_path / "fresh.db")
    assert again.exit_code == 0 and "5 already there" in again.output
    assert len(maildir_messages(tmp_path / "dst")) == 5


@pytest.mark.parametrize("per_batch", [50, 4], ids=["one-batch-in-this-thread", "batches-fetched-ahead"])
def test_folder_copy_holds_no_memory_after_it_ends_well_or_badly(tmp_path, per_batch):
    """The byte budget is back to zero after a copy, and after a copy whose fetch
    failed half way (the batch being fetched released its reservation too)."""
    fill_mbox(tmp_path / "src.mbox", [(raw(i), frozenset()) for i in range(12)])
    src = open_mbox(Account(type="mbox", path=str(tmp_path / "src.mbox")), "source")
    (inbox,) = src.list_folders()
    todo = src.list_messages(inbox)

    class Failing:  # the source, failing on its second fetch
        capabilities = src.capabilities
        calls = 0

        def fetch(self, folder, msgs):
            Failing.calls += 1
            if Failing.calls == 2 or per_batch == 50:
                raise TransientError("connection lost")
            yield from src.fetch(folder, msgs)

    for source, ok in ((src, True), (Failing(), False)):
        dst = open_maildir(Account(type="maildir", path=str(tmp_path / f"dst{ok}")), "destination")
        state = State.open(tmp_path / f"s{ok}.db")
        memory = ByteBudget(1 << 20)
        copy_ = FolderCopy(
            ref=FolderRef("j", "src", ("INBOX",), None, ("INBOX",)), src=source, dst=dst, src_folder=inbox,  # type: ignore[arg-type]
            dst_folder=dst.ensure_folder(("INBOX",)), state=state, run_id=1, batch_bytes=1 << 20,
            batch_messages=per_batch, on_copied=lambda n, b: None, on_failed=lambda m, r: None,
            on_vanished=lambda m: None, memory=memory,
        )  # fmt: skip
        if ok:
            copy_.run(todo)
            assert len(dst.list_messages(dst.ensure_folder(("INBOX",)))) == 12
        else:
            with pytest.raises(TransientError):
                copy_.run(todo)
        assert memory.used == 0
        state.close()
        dst.close()
    src.close()
