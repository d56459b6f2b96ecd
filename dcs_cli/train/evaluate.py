"""Validation top-1 over the whole classifier (all N classes), sharded across ranks.

>>> import torch
>>> features, labels = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]]), torch.tensor([1, 2])
>>> predict(features, torch.eye(3), None, angular=False).tolist()
[1, 0]
>>> evaluate_top1(torch.nn.Identity(), torch.eye(3), None, [(features, labels)], torch.device("cpu"), False)
(0.5, 2)

The prediction is argmax over every class: W·f (+ b) for the softmax head, cosine for the margin heads
(whose training logits are scaled cosines; the margin only applies to the target during training).
`evaluate_top1` returns (accuracy, samples) summed over the ranks, each rank scoring its own loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcs_cli.train.dist import all_reduce_sum

CLASS_CHUNK = 65536  # classes scored at once: bounds the B×chunk logits block


@torch.no_grad()
def predict(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, angular: bool) -> torch.Tensor:
    """argmax class of each feature row over all rows of `weight` (scored in class chunks)."""
    if angular:
        features = F.normalize(features, dim=1)
    best_val = torch.full((features.shape[0],), float("-inf"), device=features.device)
    best_idx = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
    for start in range(0, weight.shape[0], CLASS_CHUNK):
        w = weight[start:start + CLASS_CHUNK].to(features.device, features.dtype)
        if angular:
            w = F.normalize(w, dim=1)
        logits = features @ w.T
        if bias is not None and not angular:
            logits += bias[start:start + CLASS_CHUNK].to(features.device, features.dtype)
        val, idx = logits.max(1)
        better = val > best_val
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + start, best_idx)
    return best_idx


@torch.no_grad()
def evaluate_top1(backbone: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, loader,
                  device: torch.device, angular: bool) -> tuple[float, int]:
    """(top-1 accuracy, samples) of this rank's shard, summed over all ranks."""
    was_training = backbone.training
    backbone.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    weight = weight.to(device)
    bias = bias.to(device) if bias is not None else None
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        feats = backbone(x).float()
        pred = predict(feats, weight, bias, angular)
        correct[0] += (pred == y).sum()
        correct[1] += y.numel()
    backbone.train(was_training)
    all_reduce_sum(correct)
    total = int(correct[1].item())
    return (float(correct[0].item()) / total if total else 0.0), total
