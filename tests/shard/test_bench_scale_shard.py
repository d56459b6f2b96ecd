"""`dcs bench scale` trains what `dcs train` would: sample_num per process, W × sample_num over the shards."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from shard_workers import run_ranks, scale_steps  # noqa: E402

PARAMS = {"dim": 8, "batch": 4, "sample_num": 40, "steps": 1, "full_steps": 1, "ntrees": 2, "index_dim": 0,
          "rerank": 1, "momentum_dtype": "float32", "threads": 1}


def test_two_processes_train_twice_the_active_classes_of_one(tmp_path):
    one = scale_steps(0, 1, "random", 400, PARAMS)
    two = run_ranks(scale_steps, 2, tmp_path, "random", 400, PARAMS)
    assert one["active"] == 40
    assert [r["active"] for r in two] == [80, 80]  # 40 per shard: what one process trains over its 400 classes

