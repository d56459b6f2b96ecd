"""CPU placement: which cores a process may run on.

    >>> parse_cpu_list("0,2-3")                     # the notation of taskset and /sys
    [0, 2, 3]
    >>> format_cpu_list([3, 0, 1, 2, 7])
    '0-3,7'
    >>> mine = available_cpus()                     # the cores this process may use now
    >>> place([], 4, "paramserver.cpus", "paramserver.torch_threads")   # no cores named: not pinned
    4
    >>> pin_to_cpus([max(mine) + 1], key="paramserver.cpus")
    Traceback (most recent call last):
    ...
    dcs_cli.errors.ConfigError: paramserver.cpus: core ... is not available to this process (available: ...)...

`pin_to_cpus([0], key="paramserver.cpus")` restricts this process (and the threads it starts later) to
core 0; `place([0], 4, "paramserver.cpus", "paramserver.torch_threads")` pins the same way and returns 1,
the intra-op thread count to use (never more threads than pinned cores). Threads inherit the affinity of
the thread that starts them, so pinning before ZeroMQ and torch start their threads keeps a whole server
on the chosen cores.
"""

from __future__ import annotations

import os

from dcs_cli.console import info, warn
from dcs_cli.errors import ConfigError


def available_cpus() -> set[int]:
    """Cores this process may run on now (all of them where the platform cannot tell)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def share_of_cores(workers: int) -> int:
    """CPU threads for one of `workers` processes sharing this node: the cores this process may use
    (taskset, Slurm) split evenly, at least one."""
    return max(1, len(available_cpus()) // max(1, workers))


def format_cpu_list(cores) -> str:
    """[0, 1, 2, 5] → "0-2,5" (the notation of taskset and /sys)."""
    cores = sorted(set(cores))
    parts: list[str] = []
    i = 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        parts.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpu_list(text: str, key: str = "--cpus") -> list[int]:
    """ "0,2-3" → [0, 2, 3]; anything else is a ConfigError naming `key`."""
    cores: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            lo = int(low)
            hi = int(high) if sep else lo
        except ValueError:
            raise ConfigError(f"{key} {text!r} is not a core list; write it like 0 or 0,2-3") from None
        if lo < 0 or hi < lo:
            raise ConfigError(f"{key} {text!r}: range {part} is empty or negative; write it like 0 or 0,2-3")
        cores.update(range(lo, hi + 1))
    if not cores:
        raise ConfigError(f"{key} is empty; name at least one core, like 0 or 0,2-3")
    return sorted(cores)


def pin_to_cpus(cores, key: str) -> None:
    """Restrict this process to `cores`; a core it may not use is a ConfigError naming `key`."""
    cores = sorted(set(int(c) for c in cores))
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError(f"{key}: this platform cannot pin a process to cores; leave {key} empty")
    allowed = available_cpus()
    missing = [c for c in cores if c not in allowed]
    if missing:
        raise ConfigError(
            f"{key}: core {missing[0]} is not available to this process (available: "
            f"{format_cpu_list(allowed)}); choose among those"
        )
    os.sched_setaffinity(0, cores)


def place(cores, threads: int, key: str, threads_key: str) -> int:
    """Pin this process to `cores` (none: leave it) and return the intra-op thread count to use.

    Never more threads than pinned cores: spinning OpenMP threads sharing a core were measured 50x
    slower, which nobody wants. 0 threads means "one per pinned core" once pinned, torch's default
    otherwise.
    """
    if not cores:
        return threads
    pin_to_cpus(cores, key=key)
    count = len(set(cores))
    if threads > count:
        warn(f"{threads_key}={threads} > {count} pinned core(s); using {count} threads")
    info(f"pinned to cores {format_cpu_list(cores)}")
    return min(threads, count) if threads > 0 else count
