"""Validation top-1 over a sharded class store equals top-1 over the gathered N×d table (2 gloo ranks)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_workers import top1_worker  # noqa: E402
from shard_workers import run_ranks  # noqa: E402


def test_sharded_top1_equals_gathered_top1(tmp_path):
    specs = [{"samples": 61, "dim": 8, "classes": 37, "bias": bias, "angular": angular}
             for bias, angular in [(False, False), (True, False), (False, True)]]
    for rank_results in run_ranks(top1_worker, 2, tmp_path, specs):
        for spec, r in zip(specs, rank_results, strict=True):
            assert r["sharded"] == r["gathered"], spec
            acc, total = r["sharded"]
            assert total == 61 and 0.5 < acc < 0.8, spec
