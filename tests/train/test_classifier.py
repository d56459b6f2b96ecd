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
