"""`SampledClassifier.set_lr`: the class store's LR follows the schedule; a shared (remote) store is set by
the main rank only, and only when the LR changes."""

from __future__ import annotations

import pytest

import dcs_cli.config  # noqa: F401 - section import order
from dcs_cli.config import SelectionConfig
from dcs_cli.models.heads import SoftmaxHead
from dcs_cli.selection import build_selector
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.train.classifier import SampledClassifier


class CountingStore(LocalStore):
    def __init__(self, *args, remote: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.sets = 0
        if remote:
            self.address = "tcp://127.0.0.1:5570"  # what tells a shared paramserver store apart

    def set_optim(self, params) -> None:
        self.sets += 1
        super().set_optim(params)


def _classifier(store) -> SampledClassifier:
    selector = build_selector(SelectionConfig(mode="random", sample_num=8), store.num_classes, 4)
    return SampledClassifier(selector, store, SoftmaxHead())


@pytest.mark.parametrize(("remote", "is_main", "sets"), [(False, True, 2), (False, False, 2), (True, True, 2),
                                                         (True, False, 0)])
def test_the_store_lr_is_set_when_it_changes(remote, is_main, sets):
    store = CountingStore(20, 4, remote=remote)
    clf = _classifier(store)
    for lr in (0.1, 0.1, 0.05, 0.05):
        clf.set_lr(lr, is_main)
    assert store.sets == sets
    if sets:
        assert store.get_optim().lr == 0.05


def test_mixed_precision_holds_in_dataparallels_replica_threads():
    # DataParallel runs each replica's forward in a thread of its own, and autocast state is per thread:
    # entered outside the replicated module (as full mode once did) the replicas ran in fp16, unscaled
    import threading
    import warnings

    import torch

    from dcs_cli.train.classifier import Autocast

    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen[threading.current_thread().name] = torch.get_autocast_dtype("cuda")
            return x

    def in_thread(name, module):
        thread = threading.Thread(target=lambda: module(torch.zeros(1)), name=name)
        thread.start()
        thread.join()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA here: the dtype is still set, per thread
        in_thread("replica", Autocast(Probe(), torch.bfloat16))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            in_thread("entered outside", Probe())
    assert seen == {"replica": torch.bfloat16, "entered outside": torch.float16}


@pytest.mark.parametrize("mode", ["full", "random"])
def test_every_backbone_forward_runs_inside_its_own_autocast(tmp_path, synthetic_config, tiny, mode):
    from dcs_cli.config import load_config
    from dcs_cli.train.classifier import Autocast, FullModel
    from dcs_cli.train.dist import DistContext
    from dcs_cli.train.parts import build_parts

    parts = build_parts(load_config(synthetic_config, tiny(tmp_path / "r", mode)), 200, (32,), DistContext(), None)
    try:  # in full mode the module DataParallel would replicate on several GPUs is the Autocast itself
        backbone = parts.model.backbone if isinstance(parts.model, FullModel) else parts.model
        assert isinstance(backbone, Autocast) and backbone.module is parts.backbone
    finally:
        parts.close()
