"""Sparse plus low-rank (SLTrain): the op against the materialise-W reference (SLTrain's own
algorithm), gradients, the sparse kernels' edge cases and determinism, support sampling, the
layer (upstream init order and names, int64 checkpoints, fine-tuning variant, merge), bad input."""

import math

import pytest
import torch

import structops
from structops import reference
from structops.nn import SLTrainLinear
from structops.nn.sltrain import random_support, support_from_seed

_ops = torch.ops.structops


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make(T, i, o, r, density, dtype=torch.float64, base=False, bias=True, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    x = mk(*lead, T, i).requires_grad_()
    B, A = mk(o, r).requires_grad_(), mk(r, i).requires_grad_()
    idx = random_support(o, i, density, g)
    v = mk(idx.numel()).requires_grad_()
    b = mk(o).requires_grad_() if bias else None
    W0 = mk(o, i).requires_grad_() if base else None
    return x, B, A, v, idx, b, W0


@pytest.fixture(params=["native", "aten"])
def engine(request, monkeypatch):
    """The CPU's own sparse kernels, or the ATen sparse engine the CUDA path uses
    (STRUCTOPS_SPARSE_KERNEL=aten), so both are checked here."""
    if request.param == "aten":
        monkeypatch.setenv("STRUCTOPS_SPARSE_KERNEL", "aten")
    else:
        monkeypatch.delenv("STRUCTOPS_SPARSE_KERNEL", raising=False)
    return request.param


CASES = [(5, 12, 20, 3, 0.2), (130, 33, 17, 4, 0.3), (64, 64, 64, 8, 0.05), (200, 70, 130, 1, 0.5),
         (1, 9, 9, 2, 0.9), (65, 300, 40, 16, 0.02)]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("base", [False, True])
def test_matches_materialised_reference(case, base, engine):
    T, i, o, r, d = case
    for lead, bias in (((), True), ((2,), False)):
        x, B, A, v, idx, b, W0 = make(T, i, o, r, d, base=base, bias=bias, lead=lead)
        y = structops.sparse_lowrank_linear(x, B, A, v, idx, 0.7, b, W0)
        yr = reference.sparse_lowrank_linear(x, B, A, v, idx, 0.7, b, W0)
        assert y.shape == (*lead, T, o)
        assert rel(y, yr) < 1e-12
        ins = [t for t in (x, B, A, v, b, W0) if t is not None]
        g = torch.randn_like(y)
        for a, c in zip(torch.autograd.grad(y, ins, g), torch.autograd.grad(yr, ins, g)):
            assert rel(a, c) < 1e-11


def test_gradcheck():
    x, B, A, v, idx, b, W0 = make(7, 12, 20, 3, 0.2, base=True)
    torch.autograd.gradcheck(lambda *t: structops.sparse_lowrank_linear(t[0], t[1], t[2], t[3], idx, 0.5, t[4], t[5]),
                             (x, B, A, v, b, W0))
    torch.autograd.gradcheck(lambda *t: structops.sparse_lowrank_linear(t[0], t[1], t[2], t[3], idx, 0.5),
                             (x, B, A, v))


def test_float32_and_low_precision_rule():
    x, B, A, v, idx, b, _ = make(300, 96, 160, 8, 0.05)
    y64 = reference.sparse_lowrank_linear(x, B, A, v, idx, 0.3, b)
    f32 = [t.detach().float() if t.is_floating_point() else t for t in (x, B, A, v, idx, b)]
    assert rel(structops.sparse_lowrank_linear(*f32[:5], 0.3, f32[5]).double(), y64) < 1e-6
    for dt in (torch.bfloat16, torch.float16):
        lp = [t.detach().to(dt) if t.is_floating_point() else t for t in (x, B, A, v, idx, b)]
        y = structops.sparse_lowrank_linear(*lp[:5], 0.3, lp[5])
        assert y.dtype == dt
        ref_lp = reference.sparse_lowrank_linear(*[t.double() if t.is_floating_point() else t for t in lp[:5]], 0.3,
                                                 lp[5].double()).to(dt)
        assert rel(y.double(), y64) <= 2 * rel(ref_lp.double(), y64) + 1e-3


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_empty_support_rank_zero_and_no_tokens(engine):
    x, B, A, v, idx, b, _ = make(10, 8, 6, 2, 0.5)
    e_idx, e_v = idx[:0], v.detach()[:0].requires_grad_()
    y = structops.sparse_lowrank_linear(x, B, A, e_v, e_idx, 1.0, b)
    assert rel(y, x @ (B @ A).t() + b) < 1e-12
    y.sum().backward()
    assert e_v.grad.shape == (0,)
    B0, A0 = B.detach()[:, :0].requires_grad_(), A.detach()[:0].requires_grad_()
    y = structops.sparse_lowrank_linear(x, B0, A0, v, idx, 1.0)
    assert rel(y, reference.sparse_lowrank_linear(x, B0, A0, v, idx, 1.0)) < 1e-12
    y.sum().backward()
    xe = x.detach()[:0].requires_grad_()
    y = structops.sparse_lowrank_linear(xe, B, A, v, idx, 1.0, b)
    assert y.shape == (0, 6)
    (gv,) = torch.autograd.grad(y.sum(), (v,))
    assert torch.all(gv == 0)


def test_grad_values_bitwise_identical_across_thread_counts():
    x, B, A, v, idx, b, _ = make(1000, 128, 96, 4, 0.1, dtype=torch.float32)
    grads = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y = structops.sparse_lowrank_linear(x, B, A, v, idx, 0.5, b)
            grads.append(torch.autograd.grad(y.square().sum(), (v, x)))
    finally:
        torch.set_num_threads(old)
    for gv, gx in grads[1:]:
        assert torch.equal(gv, grads[0][0]) and torch.equal(gx, grads[0][1])


def test_opcheck_and_compile():
    x, B, A, v, idx, b, W0 = make(9, 12, 20, 3, 0.2, dtype=torch.float32, base=True)
    torch.library.opcheck(_ops.sparse_lowrank_linear, (x, B, A, v, idx, 0.5, b, W0))
    torch.library.opcheck(_ops.sparse_lowrank_linear, (x, B, A, v, idx, 0.5, None, None))
    g = torch.randn(9, 20)
    torch.library.opcheck(_ops.sparse_lowrank_linear_backward,
                          (g, x.detach(), B.detach(), A.detach(), v.detach(), idx, 0.5, W0.detach(), [True] * 5))

    def f(x, B, A, v):
        return structops.sparse_lowrank_linear(x, B, A, v, idx, 0.5, b).square().sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    ge = torch.autograd.grad(f(x, B, A, v), (x, B, A, v))
    gc = torch.autograd.grad(cf(x, B, A, v), (x, B, A, v))
    for a, c in zip(ge, gc):
        assert rel(c, a) < 1e-5


def test_double_backward_raises():
    x, B, A, v, idx, b, _ = make(5, 12, 20, 3, 0.2)
    y = structops.sparse_lowrank_linear(x, B, A, v, idx, 0.5, b)
    (gv,) = torch.autograd.grad(y.square().sum(), (v,), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gv.sum().backward()


def test_saves_only_x_and_parameters():
    x, B, A, v, idx, b, _ = make(64, 48, 80, 4, 0.1, dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        structops.sparse_lowrank_linear(x, B, A, v, idx, 0.5, b)
    owned = {t.data_ptr() for t in (x, B, A, v, idx)}
    assert [tuple(t.shape) for t in saved if t.data_ptr() not in owned] == []  # no W, no G, no (T, r) temp


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_bad_inputs(engine):
    x, B, A, v, idx, b, _ = make(5, 12, 20, 3, 0.2, dtype=torch.float32)
    f = structops.sparse_lowrank_linear
    with pytest.raises(ValueError, match="strictly increasing"):
        f(x, B, A, v, idx.flip(0).contiguous(), 0.5)
    dup = idx.clone()
    dup[3] = dup[2]
    with pytest.raises(ValueError, match=r"indices\[3\]"):
        f(x, B, A, v, dup, 0.5)
    oob = idx.clone()
    oob[-1] = 20 * 12
    with pytest.raises(ValueError, match="out of range"):
        f(x, B, A, v, oob, 0.5)
    neg = idx.clone()
    neg[0] = -1
    with pytest.raises(ValueError, match="out of range"):
        f(x, B, A, v, neg, 0.5)
    with pytest.raises(ValueError, match="same length"):
        f(x, B, A, v[:-1], idx, 0.5)
    with pytest.raises(RuntimeError, match="int32"):
        f(x, B, A, v, idx.long(), 0.5)
    with pytest.raises(RuntimeError, match="dtype"):
        f(x, B, A, v.double(), idx, 0.5)
    with pytest.raises(ValueError, match="same r"):
        f(x, B[:, :2], A, v, idx, 0.5)
    with pytest.raises(ValueError, match="in_features"):
        f(x[:, :-1], B, A, v, idx, 0.5)
    with pytest.raises(ValueError, match="base_weight"):
        f(x, B, A, v, idx, 0.5, None, torch.randn(3, 3))
    with pytest.raises(ValueError, match="strictly increasing"):  # the C++ check, direct op call
        _ops.sparse_lowrank_linear(x, B, A, v, dup, 0.5, None, None)


# ---------------------------------------------------------------------------------------------
# support sampling and the layer
# ---------------------------------------------------------------------------------------------
def test_support_statistics():
    o, i, d = 200, 300, 0.03
    idx = random_support(o, i, d)
    assert idx.dtype == torch.int32 and idx.numel() == int(d * o * i)
    assert torch.all(idx[1:] > idx[:-1]) and idx.min() >= 0 and idx.max() < o * i  # sorted, unique
    # uniform: row and column counts are binomial(nnz, 1/o) / (nnz, 1/i); chi-square within 5 sigma
    for counts, bins in ((torch.bincount(idx.long() // i, minlength=o), o), (torch.bincount(idx.long() % i, minlength=i), i)):
        e = idx.numel() / bins
        chi2 = ((counts.double() - e) ** 2 / e).sum().item()
        assert abs(chi2 - (bins - 1)) < 5 * math.sqrt(2 * (bins - 1))
    a, b = support_from_seed(o, i, d, 7), support_from_seed(o, i, d, 7)
    assert torch.equal(a, b) and not torch.equal(a, support_from_seed(o, i, d, 8))


def test_layer_init_matches_upstream_rng_order_and_names():
    torch.manual_seed(3)
    layer = SLTrainLinear(40, 24, 4, 0.1, alpha=8)
    torch.manual_seed(3)  # SLTrain's SpLoRaLinear.__init__, step by step
    bias = torch.nn.init.uniform_(torch.zeros(24), -1 / math.sqrt(24), 1 / math.sqrt(24))
    A = torch.nn.init.kaiming_uniform_(torch.empty(4, 40), a=math.sqrt(5))
    idx = torch.sort(torch.randperm(960)[: int(0.1 * 960)]).values
    vals = torch.nn.init.uniform_(torch.empty(idx.numel()), -1 / math.sqrt(40), 1 / math.sqrt(40))
    assert torch.equal(layer.bias, bias) and torch.equal(layer.lora_A, A) and torch.all(layer.lora_B == 0)
    assert torch.equal(layer.sparse_index.long(), idx) and torch.equal(layer.sparse_value, vals)
    assert layer.scale == 2.0
    sd = layer.state_dict()
    assert set(sd) == {"bias", "lora_A", "lora_B", "sparse_index", "sparse_value"}
    sd64 = {k: (v.long() if k == "sparse_index" else v) for k, v in sd.items()}  # upstream's int64 index
    other = SLTrainLinear(40, 24, 4, 0.1, alpha=8)
    other.load_state_dict(sd64)
    assert other.sparse_index.dtype == torch.int32 and torch.equal(other.sparse_index, layer.sparse_index)


def test_layer_forward_merge_and_fine_tuning_variant():
    torch.manual_seed(0)
    layer = SLTrainLinear(32, 48, 4, 0.1, alpha=8)
    layer.lora_B.data.normal_()
    x = torch.randn(3, 7, 32)
    y = layer(x)
    assert rel(y, torch.nn.functional.linear(x, layer.dense_weight(), layer.bias)) < 1e-6
    assert rel(layer.merge()(x), y) < 1e-6
    lin = torch.nn.Linear(32, 48)
    ft = SLTrainLinear.from_linear(lin, 4, 0.05)
    assert rel(ft(x), lin(x)) < 1e-7  # W0 at init
    assert not any(n == "base_weight" for n, _ in ft.named_parameters())  # frozen
    ft.sparse_value.data.normal_()
    ft(x).sum().backward()
    assert ft.sparse_value.grad is not None and ft.lora_A.grad is not None
    with pytest.raises(ValueError, match="nn.Linear"):
        SLTrainLinear.from_linear(torch.nn.Conv1d(2, 2, 1), 4)
    for bad in ({"rank": 0}, {"density": 0.0}, {"density": 1.0}):
        kw = {"rank": 4, "density": 0.1, **bad}
        with pytest.raises(ValueError):
            SLTrainLinear(32, 48, kw["rank"], kw["density"])


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 16)
        self.attn = torch.nn.ModuleDict({"q": torch.nn.Linear(16, 16), "o": torch.nn.Linear(16, 16)})
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        self.lm_head = torch.nn.Linear(16, 10)

    def forward(self, t):
        h = self.embed(t)
        h = h + self.attn["o"](self.attn["q"](h))
        return self.lm_head(h + self.mlp(h))


def test_convert_linears_follows_the_name_rule():
    from structops.nn.sltrain import convert_linears

    torch.manual_seed(0)
    m = Block()
    t = torch.randint(0, 10, (4, 5))
    y0 = m(t)
    names = convert_linears(m, rank=2, density=0.1, fine_tune=True)
    assert sorted(names) == ["attn.o", "attn.q", "mlp.0", "mlp.2"]
    assert type(m.lm_head) is torch.nn.Linear and isinstance(m.mlp[0], SLTrainLinear)
    assert rel(m(t), y0) < 1e-6  # fine-tuning variant equals the model at init
    m2 = Block()
    assert len(convert_linears(m2, rank=2, density=0.1)) == 4 and m2.attn["q"].base_weight is None
    with pytest.raises(ValueError):
        convert_linears(Block(), rank=0)


@pytest.mark.parametrize("eight_bit", [False, None])
def test_per_layer_optimizer_steps_from_the_grad_hook(eight_bit):
    from structops.nn.sltrain import attach_per_layer_optimizer, detach_per_layer_optimizer

    if eight_bit is None:
        pytest.importorskip("bitsandbytes", reason="8-bit state needs bitsandbytes (a test dependency)")
    torch.manual_seed(0)
    m = torch.nn.Sequential(SLTrainLinear(64, 96, 8, 0.1, alpha=8), torch.nn.GELU(), SLTrainLinear(96, 8, 4, 0.1))
    x, target = torch.randn(32, 64), torch.randn(32, 8)
    opts = attach_per_layer_optimizer(m, lr=1e-2, eight_bit=eight_bit)
    assert set(opts) == {n for n, p in m.named_parameters()}
    if eight_bit is None:
        assert any(type(o).__module__.startswith("bitsandbytes") for o in opts.values())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(m(x), target)
        loss.backward()  # each parameter is stepped inside backward, its grad freed
        losses.append(loss.item())
    assert all(p.grad is None for p in m.parameters())
    assert all(not torch.equal(before[n], p) for n, p in m.named_parameters())
    assert losses[-1] < 0.7 * losses[0]
    detach_per_layer_optimizer(m)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_layer_in_a_compiled_model_and_state_dict_round_trip():
    torch.manual_seed(0)
    m = torch.nn.Sequential(SLTrainLinear(24, 40, 4, 0.1, alpha=8), torch.nn.GELU(), SLTrainLinear(40, 16, 2, 0.2))
    for layer in (m[0], m[2]):
        layer.lora_B.data.normal_(0, 0.1)
    x = torch.randn(6, 24)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = m(x)
    assert rel(cm(x), y) < 1e-6
    params = list(m.parameters())
    for a, c in zip(torch.autograd.grad(y.square().sum(), params), torch.autograd.grad(cm(x).square().sum(), params)):
        assert rel(c, a) < 1e-5
    torch.manual_seed(5)
    other = torch.nn.Sequential(SLTrainLinear(24, 40, 4, 0.1, alpha=8), torch.nn.GELU(), SLTrainLinear(40, 16, 2, 0.2))
    other.load_state_dict(m.state_dict())  # a different random support is replaced by the saved one
    assert rel(other(x), y) < 1e-7
