"""The classifier side of a training step, one interface for full and sampled modes.

`FullClassifier` (full mode): the N×d weight is an ordinary parameter trained by the backbone's optimiser
(under DDP in multi-process runs); `FullModel` puts it in one module with the backbone. `SampledClassifier`
(sampled modes): the rows live in a class store (in process, or a paramserver) and a selector picks the
active ones each step (`SampledSoftmax`); the loop calls its `loss`, then `after_step` to push the active
rows' gradients, and `top1` to validate over all N rows. `ShardedClassifier`
(`dcs_cli.train.sharded_softmax`) has the same methods over a sharded store.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcs_cli.selection.row_init import init_rows
from dcs_cli.selection.store import ClassStore, OptimParams, all_biases
from dcs_cli.train.evaluate import evaluate_top1


class FullClassifier(nn.Module):
    """`loss, logits = FullClassifier(N, d, head)(features, labels)`: the head over all N rows."""

    def __init__(self, num_classes: int, dim: int, head: nn.Module, bias: bool = False, seed: int = 0,
                 init_std: float = 0.01):
        super().__init__()
        # the same start as LocalStore(seed=seed)
        self.weight = nn.Parameter(init_rows(num_classes, dim, 0, num_classes, "normal", init_std, seed).clone())
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.head = head

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(features.float(), self.weight, self.bias, labels)
        return F.cross_entropy(logits, labels), logits.detach()


class Autocast(nn.Module):
    """`Autocast(module, dtype)(x)`: `module` under CUDA autocast to `dtype` (None: off). The autocast is
    entered inside this forward, so wrapped in DataParallel it holds in every replica's thread too (autocast
    state is per thread: entered outside, DataParallel's replicas would run in its default fp16)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, *args):
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None):
            return self.module(*args)


class FullModel(nn.Module):
    """Backbone + full classifier in one module, so DDP all-reduces the classifier like any parameter; the
    backbone (an `Autocast`, maybe in DataParallel) brings its own mixed precision, the classifier runs in
    float32."""

    def __init__(self, backbone: nn.Module, classifier: FullClassifier):
        super().__init__()
        self.backbone, self.classifier = backbone, classifier

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        return self.classifier(self.backbone(x), labels)


class _RecordingHead(nn.Module):
    """Wraps a head to keep the last logits, so sampled training reports accuracy among active classes."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.metric = getattr(head, "metric", "dot")
        self.last_logits: torch.Tensor | None = None
        self.last_labels: torch.Tensor | None = None

    def forward(self, features, weight_rows, bias_rows=None, local_labels=None):
        logits = self.head(features.float(), weight_rows, bias_rows, local_labels)
        if local_labels is not None:  # the active classes' logits, not a tail estimate's (tail.py)
            self.last_logits, self.last_labels = logits.detach(), local_labels
        return logits


class MeanGradStore(ClassStore):
    """Pushes `grad / world`: the server sums the ranks' pushes, so the rows see the mean over ranks,
    like the DDP-averaged backbone, and a recipe's learning rate does not depend on the worker count."""

    def __init__(self, store: ClassStore, world: int):
        self.inner, self.world = store, world
        self.num_classes, self.dim, self.has_bias = store.num_classes, store.dim, store.has_bias

    def rows(self, ids):
        return self.inner.rows(ids)

    def current_rows(self, ids):
        return self.inner.current_rows(ids)

    def push(self, ids, grad_w, grad_b=None):
        scale = 1.0 / self.world
        self.inner.push(ids, grad_w * scale, grad_b * scale if grad_b is not None else None)

    def weights(self):
        return self.inner.weights()

    def settle(self) -> None:
        self.inner.settle()

    def get_optim(self) -> OptimParams:
        return self.inner.get_optim()

    def set_optim(self, params: OptimParams) -> None:
        self.inner.set_optim(params)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class SampledClassifier:
    """`loss, correct, stats = SampledClassifier(selector, store, head).loss(features, labels)`."""

    def __init__(self, selector, store: ClassStore, head: nn.Module, world: int = 1, step: int = 0,
                 tail_samples: int = 0, seed: int = 0, tail_near: int = 0, random_share: float = 0.0):
        from dcs_cli.selection.sampled import SampledSoftmax

        self.store, self.selector = store, selector
        self.head = _RecordingHead(head)
        self.angular = self.head.metric == "angular"
        # The selector continues its refresh schedule from the resumed step.
        selector.load_state_dict({"step": step})
        self.sampled = SampledSoftmax(selector, MeanGradStore(store, world) if world > 1 else store, self.head,
                                      tail_samples=tail_samples, seed=seed, tail_near=tail_near,
                                      random_share=random_share)
        self.sampled.step = step
        self._lr: float | None = None

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, dict]:
        loss, stats = self.sampled(features.float(), labels)
        pred = self.head.last_logits.argmax(1)
        correct = int((pred == self.head.last_labels.to(pred.device)).sum())
        return loss, correct, stats

    def after_step(self) -> None:
        self.sampled.push()

    def reseed(self, seed: int) -> None:
        """Restart the random draws (the selector's fill, the tail's) from `seed`: each epoch, so a resumed
        run draws what an uninterrupted one would."""
        self.selector.reseed(seed)
        if self.sampled.tail is not None:
            self.sampled.tail.reseed(seed)

    def set_lr(self, lr: float, is_main: bool) -> None:
        # A remote store is shared: one rank sets its LR, and only when it changes (one round trip).
        if lr != self._lr and (is_main or not hasattr(self.store, "address")):
            self.store.set_lr(lr)
        self._lr = lr

    def top1(self, backbone: nn.Module, loader, device: torch.device) -> tuple[float, int]:
        """Validation top-1 over all N classes (every rank calls it: the counts are summed over ranks)."""
        weight, bias = self.class_weights()
        return evaluate_top1(backbone, weight, bias, loader, device, self.angular)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row and bias as of this step: an in-process store's own tables where they live (on a GPU,
        no N×d copy to the host and back), else the store's CPU copies."""
        self.store.settle()  # rows that sat out steps catch up first, so every row is as of this step
        if isinstance(getattr(self.store, "weight", None), torch.Tensor):
            return self.store.weight, getattr(self.store, "bias", None)
        return self.store.weights(), all_biases(self.store)

    def close(self) -> None:
        self.selector.close()
