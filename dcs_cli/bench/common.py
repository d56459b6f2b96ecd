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
import resource
from pathlib import Path

from dcs_cli.console import print_table
from dcs_cli.fsutil import write_json_atomic


def machine() -> dict:
    import torch  # imported here: `dcs --help` must not pay for torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
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


def report(scenario: str, params: dict, rows: list[dict], json_path: str | Path | None = None,
           show: bool = True) -> dict:
    """Print the rows as a table (unless `show` is false) and, with `json_path`, write the BENCHMARKS.md
    JSON object."""
    result = {"scenario": scenario, "params": params, "machine": machine(), "rows": rows}
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
