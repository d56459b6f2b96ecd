"""`dcs train` runs with selection.mode=ivf under a softmax head (dot) and a margin head (angular)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcs_cli.config import load_config
from dcs_cli.train.runner import run_train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("head", ["softmax", "cosface"])
def test_ivf_mode_trains(tmp_path, head):
    sets = [  # the tiny recipe of tests/train (200 classes, 50 steps per epoch), in ivf mode
        f"output.dir={tmp_path / head}", "selection.mode=ivf", "optim.epochs=2", f"head.type={head}",
        "data.synthetic.num_classes=200", "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=2",
        "data.synthetic.dim=32", "data.batch_size=32", "model.feature_dim=32", "model.mlp_hidden=64",
        "selection.sample_num=40", "selection.interval=20", "output.print_freq=10",
        "optim.warmup_epochs=0", "optim.lr=0.5", "optim.sampled_lr=0.5",
    ]
    summary = run_train(load_config(REPO / "configs" / "synthetic.yaml", sets))
    # chance is 0.5%; full softmax reaches about 0.22 with either head in this budget
    assert summary["val_top1"] > 0.15, summary
