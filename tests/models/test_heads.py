import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dcs_cli.config import HeadConfig, SelectionConfig
from dcs_cli.errors import ConfigError
from dcs_cli.models.heads import ArcFaceHead, CosFaceHead, SoftmaxHead, build_head
from dcs_cli.selection import build_selector
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.sampled import SampledSoftmax
from dcs_cli.selection.store import OptimParams

HEADS = [SoftmaxHead(bias=True), CosFaceHead(8.0, 0.35), ArcFaceHead(8.0, 0.5)]


@pytest.mark.parametrize("head", HEADS, ids=["softmax", "cosface", "arcface"])
def test_finite_difference_gradients(head):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 6, 3])

    def loss(x, w, b):
        return F.cross_entropy(head(x, w, b, y), y)

    assert torch.autograd.gradcheck(loss, (x, w, b), eps=1e-6, atol=1e-5)


def test_arcface_continuous_past_threshold():
    head = ArcFaceHead(1.0, 0.5)
    th = math.cos(math.pi - 0.5)
    c = torch.tensor([[th - 1e-7], [th + 1e-7]], dtype=torch.float64)
    t = head.target_logit(c)
    assert abs(float(t[0] - t[1])) < 1e-5 and abs(float(t[1]) + 1.0) < 1e-5
    grid = torch.linspace(-1, 1, 2001, dtype=torch.float64).view(-1, 1)
    assert (head.target_logit(grid).diff(dim=0) > 0).all()  # monotone: farther never scores higher


def test_cosface_margin_at_target_only():
    head = CosFaceHead(2.0, 0.3)
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    y = torch.tensor([1, 2, 4])
    plain = 2.0 * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    diff = plain - head(x, w, None, y)
    expect = torch.zeros_like(diff)
    expect[torch.arange(3), y] = 0.6
    torch.testing.assert_close(diff, expect)


def test_build_head_errors():
    assert isinstance(build_head(HeadConfig(type="arcface")), ArcFaceHead)
    with pytest.raises(ConfigError, match="bias"):
        build_head(HeadConfig(type="cosface", bias=True))


@pytest.mark.parametrize("head_type", ["softmax", "cosface", "arcface"])
@pytest.mark.parametrize("mode", ["random", "hf", "exact"])
def test_sampled_with_all_classes_equals_full(head_type, mode):
    n, d, b = 40, 6, 10
    head = build_head(HeadConfig(type=head_type, bias=head_type == "softmax", scale=4.0))
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, d, generator=gen)
    y = torch.randint(0, n, (b,), generator=gen)
    results = []
    for m, s in (("full", n), (mode, n)):
        cfg = dataclasses.replace(SelectionConfig(), mode=m, sample_num=s, background=False, build_jobs=1)
        store = LocalStore(n, d, bias=head_type == "softmax", seed=3, params=params, init_std=0.5)
        sampled = SampledSoftmax(build_selector(cfg, n, b), store, head)
        feats = x.clone().requires_grad_(True)
        loss, stats = sampled(feats, y)
        loss.backward()
        sampled.push()
        assert stats["active"] == n
        results.append((loss.detach(), feats.grad, store.weight.clone(), store.bias))
    (l0, g0, w0, b0), (l1, g1, w1, b1) = results
    torch.testing.assert_close(l0, l1)
    torch.testing.assert_close(g0, g1)
    torch.testing.assert_close(w0, w1)
    if b0 is not None:
        torch.testing.assert_close(b0, b1)


def test_push_without_backward_is_an_error():
    from dcs_cli.errors import DcsError
    cfg = dataclasses.replace(SelectionConfig(), mode="random", sample_num=5)
    sampled = SampledSoftmax(build_selector(cfg, 20, 4), LocalStore(20, 3), SoftmaxHead())
    with pytest.raises(DcsError, match="forward"):
        sampled.push()
    sampled(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(DcsError, match="backward"):
        sampled.push()
