"""pytest fixtures for the EWS test server; import them into a test module::

from integration.ews.fixtures import ews, ews_schema  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.ews.server import EwsServer
from integration.ews.soap import SchemaValidator


@pytest.fixture(scope="session")
def ews_schema() -> SchemaValidator:
    """Microsoft's EWS schemas, loaded once per session (about two seconds)."""
    return SchemaValidator()


@pytest.fixture
def ews(ews_schema: SchemaValidator) -> Iterator[EwsServer]:
    """A fresh EWS test server; at teardown, every SOAP request and response it handled
    must have validated and every ErrorServerBusy back-off must have been obeyed."""
    server = EwsServer(ews_schema).start()
    try:
        yield server
    finally:
        server.stop()
    server.assert_clean()
