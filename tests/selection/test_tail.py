"""The inactive classes' estimated share of the softmax denominator (`selection.tail_samples`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dcs_cli.models.heads import ArcFaceHead, CosFaceHead, SoftmaxHead
from dcs_cli.selection.base import Selection, Selector
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.sampled import SampledSoftmax
from dcs_cli.selection.tail import TailSampler, resolve_tail_near, resolve_tail_samples


def test_draws_only_inactive_ids_with_their_log_weight():
    active = torch.tensor([3, 9, 9, 40])  # a repeat counts once
    ids, log_weight = TailSampler(1000, 256, seed=1).draw(active)
    assert ids.numel() == 256
    assert not torch.isin(ids, active).any()
    assert log_weight == pytest.approx(math.log(997 / 256))
    assert ids.unique().numel() > 200  # uniform over 997 ids, not a few repeated


def test_takes_every_inactive_id_once_when_they_are_few():
    ids, log_weight = TailSampler(10, 8, seed=0).draw(torch.tensor([0, 5, 7]))
    assert sorted(ids.tolist()) == [1, 2, 3, 4, 6, 8, 9] and log_weight == 0.0
    ids, log_weight = TailSampler(10, 8, seed=0).draw(torch.arange(10))
    assert ids.numel() == 0


def test_mostly_active_classes_still_draw_uniformly_from_the_rest():
    active = torch.arange(90)  # 10 inactive of 100: the listing path, not rejection
    ids, log_weight = TailSampler(100, 4, seed=0).draw(active)
    assert ids.numel() == 4 and bool((ids >= 90).all())
    assert log_weight == pytest.approx(math.log(10 / 4))


def test_auto_is_on_for_angular_heads_only():
    assert resolve_tail_samples(-1, "angular") > 0
    assert resolve_tail_samples(-1, "dot") == 0
    assert resolve_tail_samples(7, "dot") == 7


class Fixed(Selector):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def select(self, features, labels):
        pos = {int(c): i for i, c in enumerate(self.ids)}
        return Selection(ids=self.ids, local_labels=torch.tensor([pos[int(y)] for y in labels]), stats={})


@pytest.mark.parametrize("head", [CosFaceHead(scale=16.0, margin=0.3), SoftmaxHead()])
def test_rows_get_full_softmax_gradient_and_backbone_the_sampled_one(head):
    """With the whole tail drawn (k >= inactive) the rows' gradient is exactly full softmax's on the active
    rows, while the loss value and the features' gradient stay the plain sampled softmax's."""
    n, d, b = 30, 6, 5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, generator=gen)
    y = torch.tensor([1, 4, 4, 11, 20])
    active = torch.tensor([1, 4, 11, 20, 2, 25])
    store = LocalStore(n, d, seed=3, init_std=0.5)
    weight = store.weight.clone()

    feats = x.clone().requires_grad_(True)
    sampled = SampledSoftmax(Fixed(active), store, head, tail_samples=n)
    loss, stats = sampled(feats, y)
    loss.backward()
    assert stats["tail"] == n - active.numel()
    rows_grad = sampled._pending[1].grad

    w_full = weight.clone().requires_grad_(True)
    F.cross_entropy(head(x, w_full, None, y), y).backward()  # full softmax over all n rows
    torch.testing.assert_close(rows_grad, w_full.grad[active], atol=1e-6, rtol=1e-5)

    plain_feats = x.clone().requires_grad_(True)
    local = torch.tensor([0, 1, 1, 2, 3])
    plain = F.cross_entropy(head(plain_feats, weight[active], None, local), local)
    plain.backward()
    assert float(loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)
    torch.testing.assert_close(feats.grad, plain_feats.grad, atol=1e-6, rtol=1e-5)
    plain_rows = weight[active].clone().requires_grad_(True)
    F.cross_entropy(head(x, plain_rows, None, local), local).backward()
    assert not torch.allclose(rows_grad, plain_rows.grad, atol=1e-4)  # the tail did change the rows' step


def test_compose_keeps_near_ids_past_the_active_ones():
    from dcs_cli.selection.compose import compose

    sel = compose(torch.tensor([1, 2]), torch.tensor([5, 6]), 4, 20, torch.Generator().manual_seed(0),
                  near=torch.tensor([[6, 7, -1], [7, 9, 1]]))
    assert sel.ids.tolist() == [1, 2, 5, 6]
    assert sel.near.tolist() == [7, 9] and sel.stats["near"] == 2  # unique, not active, no padding


def test_near_rows_taken_whole_make_the_estimate_exact():
    """With every inactive class among the near ones (no draw needed) the rows' gradient is exactly full
    softmax's on the active rows, through an index-free selector that honours `near` (exact)."""
    from dcs_cli.selection.exact import ExactSelector

    n, d = 30, 6
    head = CosFaceHead(scale=16.0, margin=0.3)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, d, generator=gen), torch.tensor([1, 4, 4, 11, 20])
    store = LocalStore(n, d, seed=3, init_std=0.5)
    weight = store.weight.clone()
    sampled = SampledSoftmax(ExactSelector(n, sample_num=8, batch_size=5), store, head, tail_samples=1, tail_near=n)
    loss, stats = sampled(x.clone().requires_grad_(True), y)
    loss.backward()
    ids, rows = sampled._pending[0], sampled._pending[1]
    assert stats["near"] == n - ids.numel() and stats["tail"] == n - ids.numel()
    w_full = weight.clone().requires_grad_(True)
    F.cross_entropy(head(x, w_full, None, y), y).backward()
    torch.testing.assert_close(rows.grad, w_full.grad[ids], atol=1e-6, rtol=1e-5)


def test_near_is_on_with_the_estimate_only():
    assert resolve_tail_near(-1, 64) > 0 and resolve_tail_near(-1, 0) == 0 and resolve_tail_near(3, 0) == 0
    assert resolve_tail_near(3, 64) == 3


def test_near_classes_make_the_rows_gradient_closer_to_full_softmax():
    """Where a few inactive classes lie close to each sample (look-alikes past the active set), most of the
    inactive mass is theirs: taking them whole (tail_near) brings the active rows' gradient far closer to full
    softmax's than the same number of uniform draws alone."""
    from dcs_cli.selection.exact import ExactSelector

    n, d, b = 2000, 64, 16
    gen = torch.Generator().manual_seed(4)
    x = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    y = torch.arange(b) * 100
    store = LocalStore(n, d, seed=5, init_std=1.0)
    for i in range(b):  # the label row and 6 look-alikes per sample
        close = F.normalize(x[i] + torch.randn(7, d, generator=gen) / d**0.5, dim=1)  # cosine ~0.7
        store.weight[y[i] + torch.arange(7)] = close
    weight = store.weight.clone()
    head = CosFaceHead(scale=32.0, margin=0.35)
    w_full = weight.clone().requires_grad_(True)
    F.cross_entropy(head(x, w_full, None, y), y).backward()

    def error(tail_near: int) -> float:
        errors = []
        for seed in range(5):
            store.weight = weight.clone()
            selector = ExactSelector(n, sample_num=2 * b, batch_size=b, seed=seed)
            sampled = SampledSoftmax(selector, store, head, tail_samples=64, tail_near=tail_near, seed=seed)
            loss, _ = sampled(x.clone().requires_grad_(True), y)
            loss.backward()
            ids, rows = sampled._pending[0], sampled._pending[1]
            errors.append(float((rows.grad - w_full.grad[ids]).norm() / w_full.grad[ids].norm()))
        return sum(errors) / len(errors)

    with_near, draws_only = error(10), error(0)
    assert with_near < 0.5 * draws_only, (with_near, draws_only)


def test_compose_leaves_the_random_share_to_the_fill_and_marks_the_retrieved():
    from dcs_cli.selection.compose import compose

    cand = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17])
    sel = compose(torch.tensor([1, 2]), cand, 8, 100, torch.Generator().manual_seed(0),
                  near=torch.tensor([[30, -1]]), random_share=0.5)
    assert sel.ids[:5].tolist() == [1, 2, 10, 11, 12] and sel.stats["random_fill"] == 3
    assert sel.near.tolist() == ([30] if 30 not in sel.ids else [])  # the near ones only, as without a share
    assert sel.retrieved.tolist() == [False, False, True, True, True, False, False, False]
    logits, targets = torch.arange(16.0).view(2, 8), torch.tensor([1, 6])
    kept, columns = sel.for_backbone(logits, targets)
    assert kept[0].tolist() == [0.0, 1.0, 5.0, 6.0, 7.0] and columns.tolist() == [1, 3]  # positives, then fill
    plain = compose(torch.tensor([1, 2]), cand, 8, 100, torch.Generator().manual_seed(0))
    assert plain.ids.tolist() == [1, 2, 10, 11, 12, 13, 14, 15] and plain.retrieved is None
    assert plain.for_backbone(logits, targets)[0] is logits


@pytest.mark.parametrize("head,tail", [(SoftmaxHead(), 0), (ArcFaceHead(scale=16.0, margin=0.5), 30)])
def test_backbone_learns_from_the_fill_and_rows_from_every_active_class(head, tail):
    """With a random share the features' gradient is the sampled softmax's over the positives and the fill
    only; the rows' is over every active class (hard negatives included: they still get pushed), with the
    inactive mass in the denominator when the tail estimate is on (30 draws cover all 30 - 16 inactive)."""
    from dcs_cli.selection.exact import ExactSelector

    n, d = 30, 6
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(5, d, generator=gen), torch.tensor([1, 4, 4, 11, 20])
    store = LocalStore(n, d, seed=3, init_std=0.5)
    weight = store.weight.clone()
    sampled = SampledSoftmax(ExactSelector(n, sample_num=16, batch_size=5), store, head, tail_samples=tail,
                             random_share=0.5)
    feats = x.clone().requires_grad_(True)
    loss, stats = sampled(feats, y)
    loss.backward()
    ids, rows = sampled._pending[0], sampled._pending[1]
    assert stats["positives"] == 4 and stats["retrieved"] == 6 and stats["random_fill"] == 6
    keep = torch.cat([ids[:4], ids[10:]])  # positives and fill
    local = torch.tensor([0, 1, 1, 2, 3])
    ref_x = x.clone().requires_grad_(True)
    ref = F.cross_entropy(head(ref_x, weight[keep], None, local), local)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    torch.testing.assert_close(feats.grad, ref_x.grad, atol=1e-6, rtol=1e-5)
    ref_rows = weight.clone().requires_grad_(True)
    row_ids = torch.arange(n) if tail else ids  # the whole tail drawn: the rows' gradient is full softmax's
    F.cross_entropy(head(x, ref_rows[row_ids], None, y if tail else local), y if tail else local).backward()
    torch.testing.assert_close(rows.grad, ref_rows.grad[ids], atol=1e-6, rtol=1e-5)
    assert rows.grad[4:10].abs().sum() > 0  # the retrieved rows were trained


def test_tail_draws_are_not_the_next_epochs_fill():
    """Each epoch's streams have their own seeds: the tail draws of epoch e are not the random fill of epoch
    e + 1 (an additive offset equal to the epoch stride made them the same stream)."""
    from dcs_cli.seeds import stream_seed
    from dcs_cli.selection.random_sel import RandomSelector
    from dcs_cli.selection.tail import TailSampler

    tail, fill = TailSampler(10_000, 64), RandomSelector(10_000, 64)
    tail.reseed(stream_seed(0, "selection", 0, 0))
    fill.reseed(stream_seed(0, "selection", 1, 0))
    assert not torch.equal(tail.gen.get_state(), fill.generator.get_state())
