"""Shared plumbing of `dcs bench` scenarios: machine description, peak memory, table + JSON report.

>>> result = report("demo", {"n": 1}, [{"name": "a", "seconds": 0.5}], show=False)  # show: a rich table
>>> result["scenario"], result["rows"], sorted(result["machine"])
('demo', [{'name': 'a', 'seconds': 0.5}], ['cpus', 'device', 'platform', 'python', 'torch'])

With a `json_path`, `report` also writes that object as JSON. Benchmarks compare contenders side by side
in one run; ratios matter, absolute times are context.
"""

from __future__ import annotations

import os
import platform
import queue as queue_mod
import resource
import time
from pathlib import Path

from dcs_cli.console import print_table
from dcs_cli.fsutil import write_json_atomic


def machine(cpu_only: bool = False) -> dict:
    """Where the figures were measured; `device` is the GPU only for scenarios that run on one."""
    import torch  # imported here: `dcs --help` must not pay for torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not cpu_only else "cpu"
    return {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


POLL_S = 2.0  # how often a parent waiting on its workers checks that they are still alive


class WorkerDied(RuntimeError):
    """A bench's worker process ended (killed, out of memory, a native crash) without reporting, or ran past
    the time allowed."""


def collect(results, workers: list, count: int, timeout_s: float | None = None, failed=None) -> list:
    """`count` items from the `results` queue the spawned `workers` put there, waiting while they live.

    Stops early at an item `failed(item)` calls a failure (the others may then wait for it forever, e.g. in a
    collective). `WorkerDied` when a worker ended abnormally, or all ended, with items still owed (a queue's
    `get` alone would wait for good), or after `timeout_s` seconds."""
    got, start = [], time.monotonic()
    while len(got) < count:
        try:
            item = results.get(timeout=POLL_S)
        except queue_mod.Empty:
            codes = [w.exitcode for w in workers]
            if any(c not in (0, None) for c in codes) or all(c is not None for c in codes):
                if results.empty():
                    raise WorkerDied(f"a worker ended without its figures (exit codes {codes}: out of memory, "
                                     "or killed?)") from None
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise WorkerDied(f"no figures after {timeout_s:.0f} s (a worker stuck?)") from None
            continue
        got.append(item)
        if failed is not None and failed(item):
            break
    return got


def report(scenario: str, params: dict, rows: list[dict], json_path: str | Path | None = None,
           show: bool = True, cpu_only: bool = False) -> dict:
    """Print the rows as a table (unless `show` is false) and, with `json_path`, write the BENCHMARKS.md
    JSON object; `cpu_only` scenarios (CPU stores and indexes whatever the machine) report device "cpu"."""
    result = {"scenario": scenario, "params": params, "machine": machine(cpu_only), "rows": rows}
    if show:
        print_table(f"dcs bench {scenario}  " + "  ".join(f"{k}={v}" for k, v in params.items()), rows)
    if json_path:
        write_json_atomic(json_path, result)
    return result


def recall_at_k(selector, weights, feats, k: int, metric: str = "dot") -> float:
    """Share of the exact top-k classes of `feats` (by `weights` and `metric`) among the selector's k
    neighbours, asked for exactly as a training step asks (same k, so the same index search)."""
    from dcs_cli.selection.exact import exact_topk

    truth = exact_topk(feats, weights, k, metric)[1]
    found = selector.neighbours(feats, k)
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.numel()
