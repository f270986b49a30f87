"""Benchmark of migrator against mbsync and OfflineIMAP (issue 6). Not part of the test
suite: run it with ``python -m integration.bench`` (see ``integration/bench/run.py``).
Needs Dovecot, and isync / offlineimap3 for the peers (Debian packages)."""
