"""Reading the operator's input files (plans, mailbox CSVs) with a size bound. A light
module: the plan cache uses it without importing the plan parser."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_INPUT_BYTES = 256 * 1024 * 1024  # a plan or mailbox CSV larger than this is a mistake (or /dev/zero)


def read_bounded(path: str | Path) -> bytes:
    """The bytes of a regular file of at most MAX_INPUT_BYTES; OSError (with strerror)
    for anything else, so that a device, a FIFO or a huge export is refused at once."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        if st.st_size > MAX_INPUT_BYTES:
            raise OSError(0, f"larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
        data = fh.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise OSError(0, f"larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    return data
