"""``python -m integration.bench``: see integration/bench/run.py."""

import sys

from integration.bench.run import main

sys.exit(main())
