"""Steps whose labels land unevenly over the shards (2 gloo processes).

(a) a shard given more distinct labels than its share of sample_num trains them all that step, without
    negatives, instead of stopping the run; the step stats count it and the rank warns once;
(b) a shard with no positives whose random share rounds to no fill keeps no column for the backbone's loss;
(c) one process keeps the error when a batch has more distinct labels than sample_num.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from shard_workers import run_ranks, uneven_steps  # noqa: E402

from dcs_cli.errors import ConfigError  # noqa: E402


def test_a_shard_with_more_positives_than_its_share_trains_them_all(tmp_path):
    # 100 classes over 2 shards of 50; sample_num 20 over both: a share of 10 each. The global batch of 16
    # holds labels 0..11: 12 distinct, all in shard 0.
    spec = {"classes": 100, "sample_num": 20, "batch": 8, "labels": 12, "modes": ["random", "exact", "hnsw"]}
    ranks = run_ranks(uneven_steps, 2, tmp_path, spec)
    for mode in spec["modes"]:
        zero, one = ranks[0][mode], ranks[1][mode]
        for step, (a, b) in enumerate(zip(zero["steps"], one["steps"], strict=True)):
            assert a["loss"] == pytest.approx(b["loss"]) and torch.isfinite(torch.tensor(a["loss"])), mode
            assert a["grad_finite"] and b["grad_finite"]
            sa, sb = a["stats"], b["stats"]
            # shard 0: its 12 positives and nothing past them; shard 1: its share of 10 negatives, as usual.
            # The step's sizes are summed over the shards, the same on every rank (rank 0 logs them)
            assert (sa["active_shard"], sb["active_shard"]) == (12, 10), mode
            for key in ("active", "positives", "retrieved", "random_fill"):
                assert sa[key] == sb[key], (mode, key)
            assert (sa["active"], sa["positives"], sa["retrieved"] + sa["random_fill"]) == (22, 12, 10), mode
            assert sa["shard_overflow"] == sb["shard_overflow"] == step + 1  # steps so far, the same on every rank
            assert a["moved"].tolist() == list(range(12))  # every positive's row trained
        assert zero["share"] == one["share"] == 10  # the share is back after the step
        assert len(zero["warned"]) == 1 and "shard_overflow" in zero["warned"][0], mode  # once, not per step
        assert one["warned"] == []


def test_a_shard_without_positives_and_no_fill_keeps_no_backbone_column(tmp_path):
    # exact mode, random share 0.02 of a 10-slot share rounds to 0 fill slots: shard 1 (no positives) selects
    # 10 retrieved rows only, which the backbone's loss leaves out
    spec = {"classes": 100, "sample_num": 20, "batch": 4, "labels": 8, "modes": ["exact"], "random_share": 0.02}
    ranks = run_ranks(uneven_steps, 2, tmp_path, spec)
    for a, b in zip(ranks[0]["exact"]["steps"], ranks[1]["exact"]["steps"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"]) and a["grad_finite"] and b["grad_finite"]
        # summed over the shards: shard 0's 8 positives and 2 retrieved, shard 1's 10 retrieved, no fill
        assert b["stats"]["retrieved"] == a["stats"]["retrieved"] == 12 and b["stats"]["random_fill"] == 0
        assert b["stats"]["positives"] == 8 and b["stats"]["active_shard"] == 10
        assert a["stats"]["shard_overflow"] == 0
        assert b["moved"].numel() == 10  # its retrieved rows still train through the rows' loss


def test_one_process_keeps_the_distinct_labels_error():
    from dcs_cli.models.heads import SoftmaxHead
    from dcs_cli.selection.random_sel import RandomSelector
    from dcs_cli.selection.sharded_store import ShardedStore
    from dcs_cli.train.sharded_softmax import ShardedClassifier

    store = ShardedStore(100, 8, rank=0, world=1)
    clf = ShardedClassifier(RandomSelector(100, 4, seed=0), store, SoftmaxHead())
    with pytest.raises(ConfigError, match="smaller than the 6 distinct labels"):
        clf.loss(torch.randn(6, 8, requires_grad=True), torch.arange(6))
