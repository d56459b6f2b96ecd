"""A tiny synthetic recipe shared by the training tests (seconds per run on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(out: Path, mode: str = "hf", epochs: int = 2) -> list[str]:
    return [
        f"output.dir={out}", f"selection.mode={mode}", f"optim.epochs={epochs}",
        "data.synthetic.num_classes=200", "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=2",
        "data.synthetic.dim=32", "data.batch_size=32", "model.feature_dim=32", "model.mlp_hidden=64",
        "selection.sample_num=40", "selection.interval=10", "selection.ntrees=4", "output.print_freq=10",
        "optim.warmup_epochs=0", "optim.lr=0.5", "optim.sampled_lr=0.5",
    ]


@pytest.fixture
def tiny():
    """`tiny(out, mode, epochs)` → --set overrides for a 200-class, 50-steps-per-epoch run."""
    return tiny_overrides


@pytest.fixture
def synthetic_config() -> Path:
    return REPO / "configs" / "synthetic.yaml"
