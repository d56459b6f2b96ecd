"""Worker of test_sharded_eval.py (a top-level module, so spawned ranks can unpickle it)."""

from __future__ import annotations

import torch


def top1_worker(rank: int, world: int, specs: list[dict]) -> list[dict]:
    """For each spec, the sharded top-1 and the gathered-weights top-1 of the same validation set."""
    return [_top1(rank, world, spec) for spec in specs]


def _top1(rank: int, world: int, spec: dict) -> dict:
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from dcs_cli.selection.sharded_store import ShardedStore
    from dcs_cli.train.evaluate import evaluate_top1
    from dcs_cli.train.sharded_softmax import sharded_top1

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(spec["samples"], spec["dim"], generator=gen)
    store = ShardedStore(spec["classes"], spec["dim"], rank=rank, world=world, bias=spec["bias"], init_std=1.0,
                         seed=1)
    if store.bias is not None:
        store.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(rank))
    full_w, full_b = store.gather_weights()
    # labels: the true argmax for two thirds of the samples, so the accuracy is neither 0 nor 1
    scores = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(full_w, dim=1).T \
        if spec["angular"] else x @ full_w.T + (full_b if full_b is not None else 0.0)
    y = scores.argmax(1)
    y[::3] = (y[::3] + 1) % spec["classes"]
    ds = TensorDataset(x, y)
    loader = DataLoader(Subset(ds, list(range(rank, len(ds), world))), batch_size=7)
    backbone = torch.nn.Identity()
    bias = full_b if not spec["angular"] else None
    gathered = evaluate_top1(backbone, full_w, bias, loader, torch.device("cpu"), spec["angular"])
    sharded = sharded_top1(backbone, store, loader, torch.device("cpu"), spec["angular"])
    return {"gathered": gathered, "sharded": sharded}
