"""How much memory the machine can still give, for checks before a large allocation.

    >>> mem_available() >= 0
    True
"""

from __future__ import annotations

from pathlib import Path


def mem_available() -> int:
    """Bytes the kernel could give without swapping (MemAvailable), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
