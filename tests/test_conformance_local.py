"""The connector conformance suite against the local stores (Maildir, mbox)."""

from __future__ import annotations

import pytest

from migrator.connectors.local import open_maildir, open_mbox
from migrator.model import Account
from tests.conformance import ConnectorContract


class TestMaildirContract(ConnectorContract):
    @pytest.fixture
    def account(self, tmp_path):
        return Account(type="maildir", path=str(tmp_path / "Maildir"))

    @pytest.fixture
    def store(self, account):
        s = open_maildir(account, "destination")
        yield s
        s.close()

    @pytest.fixture
    def reopen(self, account):
        return lambda: open_maildir(account, "source")


class TestMboxContract(ConnectorContract):
    @pytest.fixture
    def account(self, tmp_path):
        return Account(type="mbox", path=str(tmp_path / "mail"))

    @pytest.fixture
    def store(self, account):
        s = open_mbox(account, "destination")
        yield s
        s.close()

    @pytest.fixture
    def reopen(self, account):
        return lambda: open_mbox(account, "source")
