"""Margin heads (CosFace, ArcFace) train in every sampled mode, and the index modes rank by angle for them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from dcs_cli.config import load_config
from dcs_cli.models.config import HeadConfig
from dcs_cli.models.heads import build_head
from dcs_cli.selection import build_selector
from dcs_cli.selection.config import SelectionConfig
from dcs_cli.selection.exact import exact_topk
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.sampled import SampledSoftmax
from dcs_cli.train.runner import run_train

SAMPLED_MODES = ["hf", "ivf", "hnsw", "random", "exact"]
INDEX_MODES = ["hf", "ivf", "hnsw", "exact"]


@pytest.mark.parametrize("head", ["cosface", "arcface"])
@pytest.mark.parametrize("mode", SAMPLED_MODES)
def test_margin_head_learns_in_every_sampled_mode(tmp_path, synthetic_config, tiny, mode, head):
    cfg = load_config(synthetic_config, tiny(tmp_path / mode, mode) + [f"head.type={head}"])
    summary = run_train(cfg)
    # 200 classes (chance 0.5 %), 2 short epochs at 20 % of the classes with the head's default s and m:
    # full softmax reaches 0.22 (CosFace) and 0.24 (ArcFace), the sampled modes 0.20-0.30. An end-to-end
    # check that each mode trains the head; the accuracy against full softmax is the train-quality bench's.
    assert summary["val_top1"] > 0.15, summary


def test_the_margin_head_recipe_trains(tmp_path, synthetic_config, tiny):
    """configs/face_cosface.yaml's head (s=64, m=0.35) and selection (its mode, tail auto), on the tiny data."""
    recipe = yaml.safe_load((synthetic_config.parent / "face_cosface.yaml").read_text())
    sets = [f"head.{key}={value}" for key, value in recipe["head"].items()]
    sets += [f"selection.{key}={value}" for key, value in recipe["selection"].items()
             if key not in ("mode", "sample_num", "interval")]  # 5,000 of 85,742 classes: the tiny data keep 40
    summary = run_train(load_config(synthetic_config, tiny(tmp_path, recipe["selection"]["mode"]) + sets))
    assert summary["val_top1"] > 0.15, summary


@pytest.mark.parametrize("head", ["cosface", "arcface", "softmax"])
@pytest.mark.parametrize("mode", INDEX_MODES)
def test_index_modes_rank_classes_by_the_heads_metric(mode, head):
    """`selection.metric: auto` follows the head: a margin head's logits rank rows by angle, so its index
    must too. Rows of very different norms make angle and dot product disagree on the nearest classes."""
    n, d, b, k = 300, 8, 16, 10
    gen = torch.Generator().manual_seed(0)
    store = LocalStore(n, d, seed=1)
    store.weight.copy_(torch.randn(n, d, generator=gen) * torch.rand(n, 1, generator=gen).pow(3).mul(20))
    cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=64, background=False, build_jobs=1)
    sampled = SampledSoftmax(build_selector(cfg, n, b), store, build_head(HeadConfig(type=head)))
    metric = "dot" if head == "softmax" else "angular"
    assert sampled.selector.metric == metric
    features = torch.randn(b, d, generator=gen)
    found = sampled.selector.neighbours(features, k)
    for wanted_metric in ("angular", "dot"):
        truth = exact_topk(features, store.weight, k, wanted_metric)[1]
        overlap = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)) / truth.numel()
        if wanted_metric == metric:
            assert overlap > 0.8, (wanted_metric, overlap)
        else:
            assert overlap < 0.5, (wanted_metric, overlap)
