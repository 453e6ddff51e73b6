"""BlockdiagLinear / MonarchLinear: fly's shape rule, parameter names, init, state_dict
compatibility, to_dense / from_dense, torch.compile."""

import math

import pytest
import torch
from torch import nn

import structops
from structops import reference
from structops.nn import BlockdiagLinear, MonarchLinear


class FlyMonarchLinear(nn.Module):
    """Just the parameter layout of HazyResearch/fly's MonarchLinear (names, shapes, rule),
    written here from the reference note §2.3 — a stand-in for a fly checkpoint."""

    def __init__(self, in_features, out_features, nblocks=4, bias=True):
        super().__init__()
        ib, ob = math.ceil(in_features / nblocks), math.ceil(out_features / nblocks)
        if ib * nblocks < ob * nblocks:
            self.blkdiag1 = nn.Parameter(torch.randn(nblocks, ib, ib))
            self.blkdiag2 = nn.Parameter(torch.randn(nblocks, ob, ib))
        else:
            self.blkdiag1 = nn.Parameter(torch.randn(nblocks, ob, ib))
            self.blkdiag2 = nn.Parameter(torch.randn(nblocks, ob, ob))
        self.bias = nn.Parameter(torch.randn(out_features)) if bias else None
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):  # fly: pad, blockdiag_butterfly_multiply, truncate, + bias
        in_ext = self.blkdiag1.shape[0] * self.blkdiag1.shape[2]
        x = torch.nn.functional.pad(x, (0, in_ext - self.in_features))
        y = reference.monarch_matmul(x, self.blkdiag1, self.blkdiag2)[..., : self.out_features]
        return y + self.bias if self.bias is not None else y


@pytest.mark.parametrize("fin,fout,nb", [(768, 3072, 4), (3072, 768, 4), (1000, 300, 4), (64, 64, 8), (10, 7, 3)])
def test_monarch_linear_fly_shapes_and_state_dict(fin, fout, nb):
    fly = FlyMonarchLinear(fin, fout, nb).double()
    ours = MonarchLinear(fin, fout, nblocks=nb, dtype=torch.float64)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in fly.state_dict().items()}
    ours.load_state_dict(fly.state_dict())  # a fly checkpoint loads unchanged
    x = torch.randn(3, 5, fin, dtype=torch.float64)
    torch.testing.assert_close(ours(x), fly(x))


def test_parameter_counts_match_fly():
    """fly's rule keeps the intermediate at min(in, out): fewer parameters than dense both ways
    (torch-structured's rule uses 125% of dense for 3072 -> 768)."""
    assert sum(p.numel() for n, p in MonarchLinear(768, 3072, bias=False).named_parameters()) == 737280
    assert sum(p.numel() for n, p in MonarchLinear(3072, 768, bias=False).named_parameters()) == 737280
    assert MonarchLinear(768, 3072).saving == pytest.approx(0.3125)


def test_monarch_linear_init_matches_fly_draws():
    """Same RNG consumption as fly: U(+-1/sqrt(fan_in)) for blkdiag1 then blkdiag2, then the
    bias with fan = out_features."""
    torch.manual_seed(123)
    layer = MonarchLinear(48, 80, nblocks=4)
    torch.manual_seed(123)
    b1 = torch.empty_like(layer.blkdiag1).uniform_(-1 / math.sqrt(12), 1 / math.sqrt(12))
    b2 = torch.empty_like(layer.blkdiag2).uniform_(-1 / math.sqrt(12), 1 / math.sqrt(12))
    bias = torch.empty(80).uniform_(-1 / math.sqrt(80), 1 / math.sqrt(80))
    torch.testing.assert_close(layer.blkdiag1.detach(), b1)
    torch.testing.assert_close(layer.blkdiag2.detach(), b2)
    torch.testing.assert_close(layer.bias.detach(), bias)


def test_blockdiag_linear_init_and_semantics():
    torch.manual_seed(5)
    layer = BlockdiagLinear(30, 20, nblocks=4)  # padded: in 32 (blk 8), out 20 (blk 5)
    assert layer.weight.shape == (4, 5, 8)
    torch.manual_seed(5)
    dense = torch.empty(20, 32)
    nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
    dense *= math.sqrt(dense.numel() / layer.weight.numel())
    torch.testing.assert_close(layer.weight.detach(), dense.reshape(4, 5, 4, 8).permute(0, 2, 1, 3)[0])
    x = torch.randn(6, 30)
    xp = torch.nn.functional.pad(x, (0, 2))
    want = reference.blockdiag_matmul(xp, layer.weight.detach())[:, :20] + layer.bias.detach()
    torch.testing.assert_close(layer(x), want)


def test_blockdiag_linear_shuffle():
    layer = BlockdiagLinear(12, 12, nblocks=3, shuffle=True)
    x = torch.randn(2, 12)
    shuffled = x.reshape(2, 3, 4).transpose(1, 2).reshape(2, 12)  # '(g c) -> (c g)', g = 3
    torch.testing.assert_close(layer(x), reference.blockdiag_matmul(shuffled, layer.weight.detach()) + layer.bias.detach())


@pytest.mark.parametrize("cls", [MonarchLinear, BlockdiagLinear])
def test_to_dense(cls):
    layer = cls(40, 24, nblocks=4).double()
    x = torch.randn(7, 40, dtype=torch.float64)
    W = layer.to_dense()
    assert W.shape == (24, 40)
    torch.testing.assert_close(layer(x), x @ W.T + layer.bias)


def test_from_dense_exact_on_monarch_and_optimal_otherwise():
    src = MonarchLinear(64, 64, nblocks=4, bias=True)
    W = src.to_dense().detach()
    layer = MonarchLinear.from_dense(W, src.bias.detach(), nblocks=4)
    assert layer.projection_rel_err < 1e-5
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), src(x), rtol=1e-4, atol=1e-4)
    # a generic dense matrix: the projection is no worse than the layer it came from perturbed
    W2 = torch.randn(64, 64)
    proj = MonarchLinear.from_dense(W2, nblocks=4)
    err = float((proj.to_dense().detach() - W2).norm() / W2.norm())
    assert err == pytest.approx(proj.projection_rel_err, rel=1e-4)
    assert err < 1


def test_bad_layer_input():
    layer = MonarchLinear(14, 8)  # in_features_extended = 16
    with pytest.raises(ValueError, match="expected input with at most 16 features"):
        layer(torch.randn(3, 17))
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        MonarchLinear(0, 8)
    with pytest.raises(ValueError, match="bias must be a bool"):
        MonarchLinear(16, 8, 4)  # the old (in, out, nblocks) order: nblocks is keyword-only now
    with pytest.raises(TypeError, match="positional"):
        MonarchLinear(16, 8, True, None, None, 4)


def test_monarch_linear_autocast_bias_dtype():
    layer = MonarchLinear(16, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(4, 16))
    assert y.dtype == torch.bfloat16


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = MonarchLinear(64, 256, nblocks=4)
        self.fc2 = MonarchLinear(256, 64, nblocks=16)
        self.bd = BlockdiagLinear(64, 64, nblocks=8)

    def forward(self, x):
        return self.bd(self.fc2(torch.relu(self.fc1(x))))


@pytest.mark.parametrize("recompute", [False, True])
def test_torch_compile_fullgraph_forward_backward(recompute):
    torch._dynamo.reset()
    model = Mlp()
    for m in model.modules():
        if isinstance(m, MonarchLinear):
            m.recompute = recompute
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(10, 64, requires_grad=True)
    y = compiled(x)
    torch.testing.assert_close(y, model(x))
    params = [x, *model.parameters()]
    got = torch.autograd.grad(y.square().sum(), params)
    want = torch.autograd.grad(model(x).square().sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # a new batch size (dynamic shapes / recompile) still works
    y2 = compiled(torch.randn(3, 7, 64))
    assert y2.shape == (3, 7, 64)


def test_torch_compile_ops_directly():
    torch._dynamo.reset()
    x = torch.randn(9, 24, requires_grad=True)
    w1 = torch.randn(4, 6, 6, requires_grad=True)
    w2 = torch.randn(3, 5, 8, requires_grad=True)

    def f(x, w1, w2):
        return structops.monarch_matmul(x, w1, w2).sum() + structops.blockdiag_matmul(x, w1).sum()

    out = torch.compile(f, fullgraph=True)(x, w1, w2)
    torch.testing.assert_close(out, f(x, w1, w2))
    g = torch.autograd.grad(out, (x, w1, w2))
    r = torch.autograd.grad(f(x, w1, w2), (x, w1, w2))
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
