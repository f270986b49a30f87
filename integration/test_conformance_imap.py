"""The connector conformance suite against a real Dovecot, in both namespace layouts."""

from __future__ import annotations

import pytest

from migrator.connectors.imap import open_imap
from tests.conformance import ConnectorContract


class TestImapSlashContract(ConnectorContract):
    @pytest.fixture
    def server(self, dovecot):
        return dovecot

    @pytest.fixture
    def account(self, server, new_user):
        return server.account(new_user(server))

    @pytest.fixture
    def store(self, account):
        s = open_imap(account, "destination")
        yield s
        s.close()

    @pytest.fixture
    def reopen(self, account):
        return lambda: open_imap(account, "source")


class TestImapCourierContract(TestImapSlashContract):
    @pytest.fixture
    def server(self, dovecot_courier):
        return dovecot_courier
