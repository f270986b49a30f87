"""Test-wide settings. In CI (CI=true) hypothesis runs derandomized, so a run is
repeatable; locally it explores new examples each time."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    """Plans the tests run are cached (migrator/plancache.py) in a directory of this
    session, not in the user's ~/.cache."""
    import tempfile

    if "MIGRATOR_CACHE_DIR" not in os.environ:
        config._migrator_cache = tempfile.TemporaryDirectory(prefix="migrator-test-cache-")  # type: ignore[attr-defined]
        os.environ["MIGRATOR_CACHE_DIR"] = config._migrator_cache.name  # type: ignore[attr-defined]


def pytest_unconfigure(config) -> None:  # type: ignore[no-untyped-def]
    cache = getattr(config, "_migrator_cache", None)
    if cache is not None:
        os.environ.pop("MIGRATOR_CACHE_DIR", None)
        cache.cleanup()
