"""URLs of `migrator copy`."""

from __future__ import annotations

import pytest

from migrator.errors import PlanError
from migrator.urls import pair_state_name, parse_url, redact


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("imap://alice@mail.example", dict(type="imap", host="mail.example", port=143, security="starttls")),
        ("imap://alice@127.0.0.1:10143?tls=off", dict(port=10143, security="none", verify_tls=True)),
        ("imaps://alice@mail.example", dict(port=993, security="tls")),
        ("imaps://alice@mail.example:1993?verify=off", dict(port=1993, verify_tls=False)),
        ("imaps://alice%40corp.example@mail.example", dict(user="alice@corp.example")),
        ("imaps://alice@corp.example@mail.example", dict(user="alice@corp.example", host="mail.example")),
        ("pop3s://bob@pop.example", dict(type="pop3", port=995, security="tls")),
        ("imap://a@h?timeout=5", dict(timeout=5.0)),
    ],
)
def test_network_urls(url, expect):
    acc = parse_url(url)
    for key, value in expect.items():
        assert getattr(acc, key) == value, key


def test_local_urls(tmp_path):
    assert parse_url(f"maildir:{tmp_path}").path == str(tmp_path)
    assert parse_url(f"mbox://{tmp_path}/x.mbox").path == str(tmp_path / "x.mbox")
    assert parse_url(f"maildir:{tmp_path}").type == "maildir"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("imap://alice:secret123@host", "password may not be written"),
        ("imap://host", "no user"),
        ("ftp://a@b", "unknown scheme"),
        ("nonsense", "not a URL"),
        ("imaps://a@h?tls=off", "contradicts"),
        ("imap://a@h?tls=maybe", "on or off"),
        ("imap://a@h?colour=blue", "unknown option"),
        ("imap://a@h:99999", "out of range"),
        ("maildir:", "no path"),
    ],
)
def test_bad_urls_give_one_line(url, message):
    with pytest.raises(PlanError) as info:
        parse_url(url)
    assert len(info.value.problems) == 1
    assert message in info.value.problems[0]
    assert "secret123" not in str(info.value)


def test_redact_and_state_name():
    assert redact("imap://bob:hunter2@h:1") == "imap://bob:***@h:1"
    assert pair_state_name("a", "b") == pair_state_name("a", "b") != pair_state_name("b", "a")
    assert pair_state_name("a", "b").startswith("copy-")
