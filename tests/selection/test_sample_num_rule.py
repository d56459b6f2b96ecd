"""`selection.sample_num` has one rule (base.check_sample_num) and every check of it says the same thing."""

import dataclasses
import typing

import pytest
import torch

from dcs_cli.config import SelectionConfig, load_config
from dcs_cli.errors import ConfigError
from dcs_cli.selection import MODES, SELECTORS, build_selector
from dcs_cli.selection.annoy_hf import AnnoySelector
from dcs_cli.selection.base import check_sample_num
from dcs_cli.selection.compose import compose
from dcs_cli.selection.exact import ExactSelector
from dcs_cli.selection.hnsw import HnswSelector
from dcs_cli.selection.ivf import IvfSelector
from dcs_cli.selection.random_sel import RandomSelector
from dcs_cli.train.data import build_data

TOO_MANY = "selection.sample_num = 21 exceeds the 20 classes; lower it or use selection.mode=full (--mode full)"


def message(call) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    return str(err.value)


def test_the_rule():
    check_sample_num(20, 20, 20)
    check_sample_num(21, 20, mode="full")  # full softmax trains every class; sample_num does not apply
    assert message(lambda: check_sample_num(21, 20)) == TOO_MANY
    assert message(lambda: check_sample_num(5, 20, 6)) == (
        "selection.sample_num = 5 is smaller than the 6 distinct labels of this batch; raise sample_num or "
        "lower data.batch_size")


@pytest.mark.parametrize("mode", [m for m in MODES if m != "full"])
def test_every_sampled_mode_checks_against_the_classes(mode):
    cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=21)
    assert message(lambda: build_selector(cfg, 20, 4)) == TOO_MANY


def test_full_mode_ignores_sample_num():
    cfg = dataclasses.replace(SelectionConfig(), mode="full", sample_num=21)
    assert build_selector(cfg, 20, 4).select(torch.zeros(2, 3), torch.tensor([0, 19])).ids.numel() == 20


@pytest.mark.parametrize("make", [
    lambda: RandomSelector(20, 21),
    lambda: ExactSelector(20, 21, 4),
    lambda: AnnoySelector(20, 21, 4),
    lambda: HnswSelector(20, 21, 4),
    lambda: IvfSelector(20, 21, 4),
])
def test_selectors_built_directly_say_the_same(make):
    assert message(make) == TOO_MANY


def test_compose_checks_the_batch_labels():
    labels = torch.arange(6)
    assert "the 6 distinct labels of this batch" in message(
        lambda: compose(labels, None, 5, 20, torch.Generator()))


def test_the_data_check_says_the_same():
    cfg = load_config(None, ["data.source=synthetic", "data.synthetic.num_classes=20", "data.synthetic.dim=4",
                             "data.synthetic.train_per_class=1", "data.synthetic.val_per_class=0",
                             "selection.mode=hf", "selection.sample_num=21"])
    assert message(lambda: build_data(cfg)) == TOO_MANY
    build_data(dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, mode="full")))


def test_the_registry_is_the_list_of_modes():
    hints = typing.get_type_hints(SelectionConfig)
    assert typing.get_args(hints["mode"]) == tuple(SELECTORS) == MODES
    help_text = next(f for f in dataclasses.fields(SelectionConfig) if f.name == "mode").metadata["help"]
    assert all(f"{name} ({entry.help})" in help_text for name, entry in SELECTORS.items())
    assert "choose one of: full, hf, hnsw, random, exact, ivf" in message(
        lambda: load_config(None, ["selection.mode=fast"]))
