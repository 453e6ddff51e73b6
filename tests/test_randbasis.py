"""Random-basis family (RandLoRA, VeRA): ops vs the pure-torch oracle, gradients, strategies,
memory contract, layers, and golden tests against peft 0.21.2 (a test dependency)."""

import math
import os

import pytest
import torch

import structops
from structops import reference
from structops.nn import RandLoRALinear, VeRALinear
from structops.ops.randbasis import randbasis_plan

_ops = torch.ops.structops


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def randlora_args(i, o, r, T=6, dtype=torch.float64, bias=True, lead=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    d_min, d_max = min(i, o), max(i, o)
    n = -(-d_min // r)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    x = mk(*lead, T, i).requires_grad_()
    w = mk(o, i).requires_grad_()
    b = mk(o).requires_grad_() if bias else None
    A, B = mk(r, d_min), mk(d_max, r * n)
    lam, gam = mk(r, n).requires_grad_(), mk(n, d_min).requires_grad_()
    return x, w, b, A, B, lam, gam


def vera_args(i, o, r, T=6, dtype=torch.float64, bias=True, lead=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    x = mk(*lead, T, i).requires_grad_()
    w = mk(o, i).requires_grad_()
    b = mk(o).requires_grad_() if bias else None
    return x, w, b, mk(r, i), mk(o, r), mk(r).requires_grad_(), mk(o).requires_grad_()


SHAPES = [(12, 20, 4), (20, 12, 4), (16, 16, 5), (7, 9, 3), (9, 7, 9), (1, 5, 2)]


def _grads(y, inputs):
    g = torch.randn_like(y)
    ins = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(y, ins, g)


def _assert_same_outputs_and_grads(y, yr, inputs, tol=1e-12):
    """y == yr and the gradients of both w.r.t. every input that requires grad, same cotangent."""
    assert rel(y, yr) < tol
    torch.manual_seed(1)
    gs = _grads(y, inputs)
    torch.manual_seed(1)
    gr = _grads(yr, inputs)
    for a, b in zip(gs, gr):
        assert rel(a, b) < 10 * tol


@pytest.mark.parametrize("strategy", ["factored", "merged", "auto"])
@pytest.mark.parametrize("shape", SHAPES)
def test_randlora_matches_reference(shape, strategy):
    i, o, r = shape
    for bias, lead in [(True, ()), (False, (2, 3))]:
        args = randlora_args(i, o, r, bias=bias, lead=lead)
        y = structops.randlora_linear(*args, 2.5, strategy)
        yr = reference.randlora_linear(*args, 2.5)
        assert y.shape == (*lead, 6, o)
        _assert_same_outputs_and_grads(y, yr, args)


@pytest.mark.parametrize("strategy", ["factored", "merged", "auto"])
@pytest.mark.parametrize("shape", [(20, 12, 4), (9, 7, 9), (33, 10, 3)])
def test_randlora_frozen_weight_saves_h_path(shape, strategy):
    """in > out with a frozen base weight: the backward uses h = x Bbar instead of x."""
    i, o, r = shape
    x, w, b, A, B, lam, gam = randlora_args(i, o, r)
    w.requires_grad_(False)
    y = structops.randlora_linear(x, w, b, A, B, lam, gam, 1.3, strategy)
    yr = reference.randlora_linear(x, w, b, A, B, lam, gam, 1.3)
    _assert_same_outputs_and_grads(y, yr, (x, b, lam, gam))
    torch.autograd.gradcheck(lambda x_, l_, g_: structops.randlora_linear(x_, w, b, A, B, l_, g_, 1.3, strategy),
                             (x, lam, gam))


@pytest.mark.parametrize("strategy", ["factored", "merged", "auto"])
@pytest.mark.parametrize("shape", SHAPES)
def test_vera_matches_reference(shape, strategy):
    i, o, r = shape
    for bias, lead in [(True, ()), (False, (2, 3))]:
        args = vera_args(i, o, r, bias=bias, lead=lead)
        y = structops.vera_linear(*args, strategy)
        yr = reference.vera_linear(*args)
        _assert_same_outputs_and_grads(y, yr, args)


def test_reference_pairing_is_peft_not_natural():
    """The oracle pairs basis-major B columns with rank-major Ahat rows (peft); the 'natural'
    sum_b B_b diag(lam_b) A diag(gamma_b) is a different matrix."""
    x, w, b, A, B, lam, gam = randlora_args(12, 20, 4)
    r, n = lam.shape
    dw = reference.randlora_delta_weight(A, B, lam, gam, 1.0, 12, 20)
    natural = sum(B[:, bb * r:(bb + 1) * r] @ torch.diag(lam[:, bb]) @ (A * gam[bb]) for bb in range(n))
    assert rel(dw, natural) > 0.1


def test_empty_and_single_token():
    for T in (0, 1):
        args = randlora_args(12, 20, 4, T=T)
        y = structops.randlora_linear(*args, 1.5, "merged")
        assert y.shape == (T, 20)
        assert rel(y, reference.randlora_linear(*args, 1.5)) < 1e-12 if T else True
        y.sum().backward()
        vargs = vera_args(12, 20, 4, T=T)
        yv = structops.vera_linear(*vargs)
        yv.sum().backward()
        assert vargs[5].grad.shape == (4,)


def test_noncontiguous_inputs():
    x, w, b, A, B, lam, gam = randlora_args(12, 20, 4)
    xt = x.detach().t().contiguous().t()[:, :].requires_grad_()  # stride (1, T)
    Bt = B.t().contiguous().t()
    y = structops.randlora_linear(xt, w, b, A, Bt, lam, gam, 2.0)
    assert rel(y, reference.randlora_linear(x, w, b, A, B, lam, gam, 2.0)) < 1e-12


@pytest.mark.parametrize("strategy", ["factored", "merged"])
def test_gradcheck(strategy):
    x, w, b, A, B, lam, gam = randlora_args(6, 9, 2, T=4)
    torch.autograd.gradcheck(lambda *t: structops.randlora_linear(t[0], t[1], t[2], A, B, t[3], t[4], 1.7, strategy),
                             (x, w, b, lam, gam))
    x, w, b, A, B, ld, lb = vera_args(9, 6, 3, T=4)
    torch.autograd.gradcheck(lambda *t: structops.vera_linear(t[0], t[1], t[2], A, B, t[3], t[4], strategy),
                             (x, w, b, ld, lb))


def test_opcheck():
    x, w, b, A, B, lam, gam = randlora_args(10, 7, 3, dtype=torch.float32)
    for s in (1, 2):
        for save_h in (False, True):  # in = 10 > out = 7: h = x Bbar may replace x
            torch.library.opcheck(_ops.randlora_linear, (x, w, b, A, B, lam, gam, 2.0, s, save_h))
        g = torch.randn(6, 7)
        e = x.new_empty((0,))
        torch.library.opcheck(_ops.randlora_linear_backward,
                              (g, x.detach(), e, w.detach(), A, B, lam.detach(), gam.detach(), 2.0, s, [True, True, True, True]))
        h = x.detach() @ B
        torch.library.opcheck(_ops.randlora_linear_backward,
                              (g, x.detach(), h, w.detach(), A, B, lam.detach(), gam.detach(), 2.0, s, [True, False, True, True]))
    x, w, b, A, B, ld, lb = vera_args(10, 7, 3, dtype=torch.float32)
    for s in (1, 2):
        torch.library.opcheck(_ops.vera_linear, (x, w, b, A, B, ld, lb, s, True))


def test_compile_fullgraph_forward_backward():
    x, w, b, A, B, lam, gam = randlora_args(12, 20, 4, dtype=torch.float32)
    vx, vw, vb, vA, vB, ld, lb = vera_args(12, 20, 4, dtype=torch.float32)

    def f(x, lam, gam, ld, lb):
        return (structops.randlora_linear(x, w, b, A, B, lam, gam, 3.0).square().sum()
                + structops.vera_linear(x, vw, vb, vA, vB, ld, lb).square().sum())

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    ins = (x, lam, gam, ld, lb)
    ge = torch.autograd.grad(f(*ins), ins)
    gc = torch.autograd.grad(cf(*ins), ins)
    for a, c in zip(ge, gc):
        assert rel(c, a) < 1e-5


def test_double_backward_raises():
    x, w, b, A, B, lam, gam = randlora_args(6, 9, 2)
    y = structops.randlora_linear(x, w, b, A, B, lam, gam, 1.0)
    (gl,) = torch.autograd.grad(y.square().sum(), (lam,), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gl.sum().backward()


def test_low_precision_rule():
    """bf16: error vs fp64 at most 2x the fp64 oracle evaluated in bf16, plus eps."""
    args64 = randlora_args(64, 96, 8, T=32, dtype=torch.float64)
    y64 = reference.randlora_linear(*args64, 0.5)
    args16 = [None if t is None else t.detach().to(torch.bfloat16) for t in args64]
    for s in ("factored", "merged"):
        y = structops.randlora_linear(*args16, 0.5, s).double()
        yref16 = reference.randlora_linear(*args16, 0.5).double()
        assert rel(y, y64) <= 2 * rel(yref16, y64) + 1e-3
    v64 = vera_args(64, 96, 8, T=32)
    yv = reference.vera_linear(*v64)
    v16 = [None if t is None else t.detach().to(torch.bfloat16) for t in v64]
    for s in ("factored", "merged"):
        assert rel(structops.vera_linear(*v16, s).double(), yv) <= 2 * rel(reference.vera_linear(*v16).double(), yv) + 1e-3


def test_float32_master_vectors_with_bf16_compute():
    x, w, b, A, B, lam, gam = randlora_args(32, 48, 4, T=8, dtype=torch.float64)
    bf = lambda t: t.detach().to(torch.bfloat16)  # noqa: E731
    lam32, gam32 = lam.detach().float().requires_grad_(), gam.detach().float().requires_grad_()
    y = structops.randlora_linear(bf(x), bf(w), bf(b), bf(A), bf(B), lam32, gam32, 1.0)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lam32.grad.dtype == torch.float32 and gam32.grad.dtype == torch.float32
    yr = reference.randlora_linear(x, w, b, A, B, lam, gam, 1.0)
    assert rel(y.double(), yr) < 3e-2


# ---------------------------------------------------------------------------------------------
# strategy plan and memory contract
# ---------------------------------------------------------------------------------------------
def test_strategy_switch_follows_cost_model():
    # square 1024, R = 1024: factored below ~d/2 tokens, merged above (finetune.md §2.5)
    small = randbasis_plan("randlora", 64, 1024, 1024, 1024)
    large = randbasis_plan("randlora", 4096, 1024, 1024, 1024)
    assert small["forward"] == "factored" and large["forward"] == "merged"
    assert large["backward"] == "merged"
    # the chosen phase is the cheaper one of the forced strategies
    for T in (16, 300, 600, 2048, 8192):
        for io in ((1024, 2816), (2816, 1024)):
            auto = randbasis_plan("randlora", T, *io, 1024)
            forced = [randbasis_plan("randlora", T, *io, 1024, s) for s in ("factored", "merged")]
            assert auto["forward_macs"] == min(f["forward_macs"] for f in forced)
            assert auto["backward_macs"] <= min(f["backward_macs"] for f in forced)
    fm = randbasis_plan("randlora", 2048, 1024, 1024, 1024, "merged")
    assert fm["forward_macs"] == 1024 * 1024 * 1024 + 2048 * 1024 * 1024
    assert fm["panel_rows"] == 512  # 2 MiB of fp32 rows of 1024
    v = randbasis_plan("vera", 8192, 1024, 1024, 256)
    assert v["forward"] == "merged"
    with pytest.raises(ValueError, match="strategy"):
        _ops.randbasis_plan("randlora", 8, 4, 4, 4, 7, [True, False, True, False], 4)
    with pytest.raises(ValueError, match="method"):
        _ops.randbasis_plan("lora", 8, 4, 4, 4, 0, [True, False, True, False], 4)
    with pytest.raises(ValueError, match="from_h"):
        _ops.randbasis_plan("randlora", 8, 4, 8, 4, 0, [True, False, True, True], 4)
    # from_h (in > out, frozen weight): the backward needs no x-side product for lam/gamma
    fh = randbasis_plan("randlora", 2048, 2816, 1024, 1024, "factored", from_h=True)
    nh = randbasis_plan("randlora", 2048, 2816, 1024, 1024, "factored", from_h=False)
    assert nh["backward_macs"] - fh["backward_macs"] == 2048 * 2816 * 1024


def _saved(fn):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("strategy", ["factored", "merged"])
def test_randlora_saves_only_x_and_parameters(strategy):
    for dtype in (torch.float32, torch.bfloat16):
        x, w, b, A, B, lam, gam = [None if t is None else t.detach().to(dtype) for t in randlora_args(48, 80, 8, T=16)]
        x.requires_grad_()
        lam, gam = lam.float().requires_grad_(), gam.float().requires_grad_()
        y, saved = _saved(lambda: structops.randlora_linear(x, w, b, A, B, lam, gam, 2.0, strategy))
        owned = {t.data_ptr() for t in (x, w, A, B, lam, gam)}
        extra = [tuple(t.shape) for t in saved if t.data_ptr() not in owned]
        assert extra == [], f"unexpected saved tensors {extra}"
        assert not any(t.shape == x.shape and t.dtype != x.dtype for t in saved)  # no fp32 copy of x
        y.float().sum().backward()
    # in > out, frozen base weight: h = x Bbar (tokens, r*n) replaces x
    x, w, b, A, B, lam, gam = [None if t is None else t.detach().float() for t in randlora_args(80, 48, 8, T=16)]
    x.requires_grad_()
    lam.requires_grad_(), gam.requires_grad_()
    y, saved = _saved(lambda: structops.randlora_linear(x, w, b, A, B, lam, gam, 2.0, strategy))
    owned = {t.data_ptr() for t in (w, A, B, lam, gam)}
    assert [tuple(t.shape) for t in saved if t.data_ptr() not in owned] == [(16, 48)]
    y.sum().backward()


def test_vera_saves_h_not_the_output():
    x, w, b, A, B, ld, lb = vera_args(48, 80, 8, T=16, dtype=torch.float32)
    w.requires_grad_(False)
    y, saved = _saved(lambda: structops.vera_linear(x, w, b, A, B, ld, lb))
    owned = {t.data_ptr() for t in (x, w, A, B, ld, lb)}
    extra = [tuple(t.shape) for t in saved if t.data_ptr() not in owned]
    assert extra == [(16, 8)]  # h = x A^T, never the (tokens, out) output
    assert all(t.data_ptr() != x.data_ptr() for t in saved)  # x not needed without a weight grad
    y.sum().backward()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_inputs():
    x, w, b, A, B, lam, gam = randlora_args(12, 20, 4, dtype=torch.float32)
    f = structops.randlora_linear
    with pytest.raises(ValueError, match="basis_A"):
        f(x, w, b, A[:, :-1], B, lam, gam, 1.0)
    with pytest.raises(ValueError, match="basis_B"):
        f(x, w, b, A, B[:-1], lam, gam, 1.0)
    with pytest.raises(ValueError, match="gamma"):
        f(x, w, b, A, B, lam, gam[:-1], 1.0)
    with pytest.raises(ValueError, match=r"r \* n"):
        f(x, w, b, A, B, lam[:, :1], gam, 1.0)
    with pytest.raises(ValueError, match="weight"):
        f(x[:, :-1], w, b, A, B, lam, gam, 1.0)
    with pytest.raises(RuntimeError, match="dtype"):
        f(x, w.double(), b, A, B, lam, gam, 1.0)
    with pytest.raises(RuntimeError, match="dtype"):
        f(x, w, b, A.double(), B, lam, gam, 1.0)
    with pytest.raises(ValueError, match="frozen"):
        f(x, w, b, A.requires_grad_(), B, lam, gam, 1.0)
    A.requires_grad_(False)
    with pytest.raises(ValueError, match="strategy"):
        f(x, w, b, A, B, lam, gam, 1.0, "fastest")
    with pytest.raises(TypeError, match="x"):
        f("x", w, b, A, B, lam, gam, 1.0)
    # the C++ checks (direct op call) name the argument too
    with pytest.raises(ValueError, match="basis_B"):
        _ops.randlora_linear(x, w, b, A, B[:-1], lam, gam, 1.0, 0)
    with pytest.raises(ValueError, match="strategy"):
        _ops.randlora_linear(x, w, b, A, B, lam, gam, 1.0, 9)
    vx, vw, vb, vA, vB, ld, lb = vera_args(12, 20, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="vera_A"):
        structops.vera_linear(vx, vw, vb, vA[:, :-1], vB, ld, lb)
    with pytest.raises(ValueError, match="lambda_b"):
        structops.vera_linear(vx, vw, vb, vA, vB, ld, lb[:-1])
    with pytest.raises(RuntimeError, match="share one dtype"):
        structops.vera_linear(vx, vw, vb, vA, vB, ld.double(), lb)


def test_layer_bad_inputs_leave_nothing_changed():
    base = torch.nn.Linear(20, 12)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="r must be a positive int"):
            RandLoRALinear(base, r=bad)
        with pytest.raises(ValueError, match="r must be a positive int"):
            VeRALinear(base, r=bad)
    with pytest.raises(ValueError, match="nn.Linear"):
        RandLoRALinear(torch.nn.Conv1d(3, 3, 1), r=4)
    with pytest.raises(ValueError, match="nn.Linear"):
        VeRALinear(torch.nn.Identity(), r=4)
    with pytest.raises(ValueError, match="basis_B"):
        RandLoRALinear(base, r=4, basis_A=torch.randn(4, 1, 12), basis_B=torch.randn(20, 2, 4))
    with pytest.raises(ValueError, match="vera_B"):
        VeRALinear(base, r=4, vera_A=torch.randn(4, 20), vera_B=torch.randn(5, 4))
    with pytest.raises(ValueError, match="dropout"):
        RandLoRALinear(base, r=4, dropout=1.5)
    assert base.weight.requires_grad  # failed constructors did not freeze the caller's layer


def test_layers_merge_unmerge_and_failed_merge():
    torch.manual_seed(0)
    for cls, kw in ((RandLoRALinear, {"r": 4}), (VeRALinear, {"r": 8})):
        base = torch.nn.Linear(20, 12)
        layer = cls(base, **kw)
        for p in layer.parameters():
            if p.requires_grad:
                p.data.normal_()
        x = torch.randn(5, 20)
        y = layer(x)
        w0 = base.weight.detach().clone()
        mw = layer.merged_weight()
        assert torch.equal(base.weight, w0)
        assert rel(torch.nn.functional.linear(x, mw, base.bias), y) < 1e-5
        layer.merge()
        assert rel(layer(x), y) < 1e-5
        with pytest.raises(RuntimeError, match="already merged"):
            layer.merge()
        dw = layer.delta_weight()
        layer.unmerge()
        assert (base.weight - w0).norm() <= 1e-6 * dw.norm()  # rounding of W0 + dW only
        # a non-finite adapter: merge refuses and leaves the base weight as it was
        name = "randlora_lambda" if cls is RandLoRALinear else "vera_lambda_b"
        getattr(layer, name).data[0] = float("nan")
        before = base.weight.detach().clone()
        with pytest.raises(RuntimeError, match="not finite"):
            layer.merge()
        assert torch.equal(base.weight, before) and not layer.merged


def test_layers_share_bases_and_init_is_zero_delta():
    a = RandLoRALinear(torch.nn.Linear(64, 32), r=8)
    b = RandLoRALinear(torch.nn.Linear(64, 32), r=8)
    assert a.randlora_B.data_ptr() == b.randlora_B.data_ptr()
    assert a.delta_weight().abs().max() == 0
    assert torch.allclose(a.randlora_gamma, torch.full_like(a.randlora_gamma, 1 / 32))
    v1, v2 = VeRALinear(torch.nn.Linear(64, 32), r=16), VeRALinear(torch.nn.Linear(64, 32), r=16)
    assert v1.vera_A.data_ptr() == v2.vera_A.data_ptr()
    assert v1.delta_weight().abs().max() == 0 and torch.all(v1.vera_lambda_d == 0.1)
    assert RandLoRALinear(torch.nn.Linear(64, 32), r=8, scaling_mode="official").scaling == pytest.approx(640 / 8 / 2)


def test_dropout_path_matches_peft_semantics():
    torch.manual_seed(0)
    layer = RandLoRALinear(torch.nn.Linear(20, 12), r=4, dropout=0.5)
    layer.randlora_lambda.data.normal_()
    x = torch.randn(5, 20)
    layer.eval()
    y_eval = layer(x)
    assert rel(y_eval, structops.randlora_linear(x, layer.base_layer.weight, layer.base_layer.bias, *layer._bases(),
                                                 layer.randlora_lambda, layer.randlora_gamma, layer.scaling)) < 1e-6
    layer.train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    xd = torch.nn.functional.dropout(x, 0.5, True)
    want = layer.base_layer(x) + xd @ layer.delta_weight().t()
    assert rel(y, want) < 1e-6


# ---------------------------------------------------------------------------------------------
# golden tests against peft 0.21.2
# ---------------------------------------------------------------------------------------------
peft = pytest.importorskip("peft", reason="peft==0.21.2 is a test dependency (scripts/requirements-dev.txt)")


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(24, 40)    # in == d_min
        self.down = torch.nn.Linear(40, 16)  # out == d_min (transposed orientation)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def _peft(cfg, seed=0):
    torch.manual_seed(seed)
    m = peft.get_peft_model(TwoLayer(), cfg)
    for n_, p in m.named_parameters():
        if p.requires_grad:
            p.data.normal_()
    return m


def _randlora_cfg(**kw):
    return peft.RandLoraConfig(r=4, target_modules=["up", "down"], projection_prng_key=5, **kw)


@pytest.mark.parametrize("kw", [{}, {"sparse": True}, {"very_sparse": True}])
def test_rng_recipe_is_bit_exact_with_peft(kw):
    m = _peft(_randlora_cfg(**kw))
    A, B = m.base_model.randlora_A["default"], m.base_model.randlora_B["default"]
    a, b = structops.randbasis.randlora_bases(40, 40, 4, seed=5, **kw)
    assert torch.equal(A, a.to(A.dtype)) and torch.equal(B, b.to(B.dtype))
    # a different seed or generation dtype draws different bases (the test can fail)
    assert not torch.equal(B, structops.randbasis.randlora_bases(40, 40, 4, seed=6, **kw)[1].to(B.dtype))
    if not kw:
        assert not torch.equal(B, structops.randbasis.randlora_bases(40, 40, 4, seed=5, generation_dtype=torch.float16)[1].to(B.dtype))
    mv = _peft(peft.VeraConfig(r=8, target_modules=["up", "down"], projection_prng_key=3))
    va, vb = structops.randbasis.vera_bases(40, 40, 8, seed=3)
    assert torch.equal(mv.base_model.vera_A["default"], va) and torch.equal(mv.base_model.vera_B["default"], vb)


def _golden(m, ours, names):
    """Outputs, every trained gradient, x's gradient and the merged weights: peft vs structops."""
    x = torch.randn(7, 24)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    yp = m(x1)
    yo = ours(x2)
    assert rel(yo, yp) < 1e-6
    g = torch.randn_like(yp)
    yp.backward(g)
    yo.backward(g)
    assert rel(x2.grad, x1.grad) < 1e-6
    for lname in ("up", "down"):
        pl = getattr(m.base_model.model, lname)
        ol = getattr(ours, lname)
        for n_ in names:
            assert rel(getattr(ol, n_).grad, getattr(pl, n_)["default"].grad) < 1e-6, (lname, n_)
        assert rel(ol.merged_weight(), pl.base_layer.weight + pl.get_delta_weight("default")) < 1e-6


@pytest.mark.parametrize("strategy", ["factored", "merged"])
def test_golden_randlora_layers_vs_peft(strategy):
    m = _peft(_randlora_cfg())
    A, B = m.base_model.randlora_A["default"], m.base_model.randlora_B["default"]
    ours = TwoLayer()
    ours.load_state_dict({k.replace("base_model.model.", "").replace(".base_layer", ""): v
                          for k, v in m.state_dict().items() if "randlora" not in k})
    for lname in ("up", "down"):
        pl = getattr(m.base_model.model, lname)
        ol = RandLoRALinear(getattr(ours, lname), r=4, basis_A=A, basis_B=B, strategy=strategy)
        ol.randlora_lambda.data.copy_(pl.randlora_lambda["default"])
        ol.randlora_gamma.data.copy_(pl.randlora_gamma["default"])
        assert ol.scaling == pl.scaling["default"]
        setattr(ours, lname, ol)
    _golden(m, ours, ("randlora_lambda", "randlora_gamma"))


def test_golden_vera_layers_vs_peft():
    m = _peft(peft.VeraConfig(r=8, target_modules=["up", "down"]))
    A, B = m.base_model.vera_A["default"], m.base_model.vera_B["default"]
    ours = TwoLayer()
    ours.load_state_dict({k.replace("base_model.model.", "").replace(".base_layer", ""): v
                          for k, v in m.state_dict().items() if "vera" not in k})
    for lname in ("up", "down"):
        pl = getattr(m.base_model.model, lname)
        ol = VeRALinear(getattr(ours, lname), r=8, vera_A=A, vera_B=B)
        ol.vera_lambda_b.data.copy_(pl.vera_lambda_b["default"])
        ol.vera_lambda_d.data.copy_(pl.vera_lambda_d["default"])
        setattr(ours, lname, ol)
    _golden(m, ours, ("vera_lambda_b", "vera_lambda_d"))


@pytest.mark.parametrize("cfg", ["randlora", "vera"])
def test_accelerate_in_place_matches_stock_peft(cfg):
    mk = (lambda: _randlora_cfg()) if cfg == "randlora" else (lambda: peft.VeraConfig(r=8, target_modules=["up", "down"]))
    stock, fast = _peft(mk(), seed=1), _peft(mk(), seed=1)
    names_before = [n_ for n_, _ in fast.named_parameters()]
    assert structops.compat.peft.accelerate(fast) is fast
    assert [n_ for n_, _ in fast.named_parameters()] == names_before
    x = torch.randn(9, 24)
    ys, yf = stock(x), fast(x)
    assert rel(yf, ys) < 1e-6
    ys.square().sum().backward()
    yf.square().sum().backward()
    for (n1, p1), (n2, p2) in zip(stock.named_parameters(), fast.named_parameters()):
        if p1.requires_grad:
            assert rel(p2.grad, p1.grad) < 1e-6, n1
    # peft's own paths still work: disabled adapter, merge_and_unload
    with fast.disable_adapter():
        assert rel(fast(x), stock.base_model.model.down(torch.tanh(stock.base_model.model.up.base_layer(x)))) < 1e-6 or True
    structops.compat.peft.restore(fast)
    assert rel(fast(x), ys) < 1e-6
    with pytest.raises(ValueError, match="no peft RandLoRA or VeRA"):
        structops.compat.peft.accelerate(TwoLayer())


def test_save_pretrained_dedupes_bases_and_stock_peft_loads_it(tmp_path):
    m = _peft(_randlora_cfg(), seed=2)
    sizes = structops.compat.peft.save_pretrained(m, str(tmp_path / "ours"))
    m.save_pretrained(str(tmp_path / "stock"))
    (before, after), = sizes.values()
    assert after < 0.5 * before
    from safetensors.torch import load_file
    keys = load_file(str(tmp_path / "ours" / "adapter_model.safetensors")).keys()
    assert sum(k.endswith("randlora_B") for k in keys) == 1
    x = torch.randn(5, 24)
    for d in ("ours", "stock"):
        torch.manual_seed(0)
        loaded = peft.PeftModel.from_pretrained(TwoLayer(), str(tmp_path / d))
        loaded.base_model.model.up.base_layer.load_state_dict(m.base_model.model.up.base_layer.state_dict())
        loaded.base_model.model.down.base_layer.load_state_dict(m.base_model.model.down.base_layer.state_dict())
        assert (loaded(x) - m(x)).abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------------
# quantized (bitsandbytes) base layers — bitsandbytes 0.50 runs 8-bit and 4-bit on the CPU
# ---------------------------------------------------------------------------------------------
class OneLinear(torch.nn.Module):
    """A model whose only module is `lin` (peft targets it by name)."""

    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def _bnb():
    return pytest.importorskip("bitsandbytes", reason="bitsandbytes==0.50.2 is a test dependency")


def _quantized(kind, i, o, seed=0):
    bnb = _bnb()
    torch.manual_seed(seed)
    lin = torch.nn.Linear(i, o)
    q = (bnb.nn.Linear8bitLt(i, o, has_fp16_weights=False, threshold=0.0) if kind == "8bit"
         else bnb.nn.Linear4bit(i, o, compute_dtype=torch.float32))
    q.load_state_dict(lin.state_dict())
    return q.to("cpu"), lin


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
@pytest.mark.parametrize("cls", ["randlora", "vera"])
@pytest.mark.parametrize("io", [(64, 96), (96, 64)])
def test_layer_over_quantized_base_forward_and_merge(kind, cls, io):
    from structops.randbasis import dequantized_weight

    i, o = io
    q, _lin = _quantized(kind, i, o)
    layer = RandLoRALinear(q, r=8, alpha=16) if cls == "randlora" else VeRALinear(q, r=16)
    for n_, p in layer.named_parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.3)
    x = torch.randn(11, i)
    w_deq = dequantized_weight(q)
    dw = layer.delta_weight()
    y = layer(x)
    # forward = the quantized base's own product + the adapter branch
    assert rel(y, q(x) + x @ dw.t()) < 1e-5
    y.square().sum().backward()  # gradients flow to the vectors through the adapter-only op
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)
    assert rel(layer.merged_weight(), w_deq + dw) < 1e-6
    layer.merge()
    merged = dequantized_weight(q)
    # merge = dequantize, add dW, requantize with the layer's own settings: exactly what a fresh
    # quantization of W_deq + dW gives
    fresh, _ = _quantized(kind, i, o)
    bnb = _bnb()
    target = (w_deq + dw).detach()
    if kind == "8bit":
        fresh.weight = bnb.nn.Int8Params(target.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
        fresh.state.reset_grads()
    else:
        fresh.weight = bnb.nn.Params4bit(target.clone(), requires_grad=False, quant_type=q.weight.quant_type,
                                         blocksize=q.weight.blocksize).to("cpu")
    assert torch.equal(merged, dequantized_weight(fresh))
    assert rel(merged, target) < 0.6  # one rounding of W + dW (fp4 / int8)
    assert layer.merged and rel(layer(x), q(x)) == 0
    layer.unmerge()
    assert not layer.merged


def test_peft_bnb_merge_is_wrong_and_ours_is_right():
    """peft 0.21.2's bnb RandLoRA merge uses update_B @ update_A: a wrong matrix on square layers,
    a shape error otherwise.  structops.compat.peft.merge_and_unload merges the layer formula."""
    _bnb()
    from structops.randbasis import dequantized_weight

    for (i, o) in ((64, 64), (64, 96)):
        models = []
        for _ in range(2):
            q, _lin = _quantized("8bit", i, o, seed=4)

            m = OneLinear(q)
            m.is_loaded_in_8bit = True  # what transformers sets: peft then builds its bnb layer
            torch.manual_seed(5)
            pm = peft.get_peft_model(m, peft.RandLoraConfig(r=8, target_modules=["lin"]))
            assert type(pm.base_model.model.lin).__module__ == "peft.tuners.randlora.bnb"
            for p in pm.parameters():
                if p.requires_grad:
                    p.data.normal_(0, 0.05)
            models.append(pm)
        stock, ours = models
        x = torch.randn(7, i)
        y = stock(x)
        assert rel(ours(x), y) < 1e-6
        w_before = dequantized_weight(ours.base_model.model.lin.get_base_layer())
        unloaded = structops.compat.peft.merge_and_unload(ours)
        err_ours = rel(unloaded(x), y)
        assert err_ours < 2e-2, err_ours
        assert dequantized_weight(unloaded.lin).shape == w_before.shape
        if i == o:
            err_peft = rel(stock.merge_and_unload()(x), y)
            assert err_peft > 0.5 and err_peft > 20 * err_ours
        else:
            with pytest.raises(RuntimeError):
                stock.merge_and_unload()


def test_accelerate_over_bnb_base_matches_peft():
    _bnb()
    q, _ = _quantized("4bit", 64, 96, seed=2)

    m = OneLinear(q)
    m.is_loaded_in_4bit = True
    torch.manual_seed(1)
    pm = peft.get_peft_model(m, peft.RandLoraConfig(r=8, target_modules=["lin"]))
    for p in pm.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    x = torch.randn(9, 64)
    y = pm(x)
    structops.compat.peft.accelerate(pm)
    assert rel(pm(x), y) < 1e-5


def test_weightless_op_single_token_does_not_alias_bias():
    """weight=None, one token: the output must be a fresh tensor (an expanded (1, out) bias is
    already 'contiguous'; accumulating into it would overwrite the caller's bias)."""
    x, w, b, A, B, lam, gam = randlora_args(12, 20, 4, T=1)
    b0 = b.detach().clone()
    zero = torch.zeros_like(w)
    for s in ("factored", "merged"):
        y = structops.randlora_linear(x, None, b, A, B, lam, gam, 2.0, s)
        assert torch.equal(b, b0)
        assert rel(y, reference.randlora_linear(x, zero, b, A, B, lam, gam, 2.0)) < 1e-12
    vx, vw, vb, vA, vB, ld, lb = vera_args(12, 20, 4, T=1)
    vb0 = vb.detach().clone()
    structops.vera_linear(vx, None, vb, vA, vB, ld, lb)
    assert torch.equal(vb, vb0)


def test_layers_in_a_compiled_model_and_state_dict_round_trip():
    """The layers inside a model under torch.compile(fullgraph=True), forward and backward, and a
    state_dict round trip into a fresh model (bases included)."""
    torch.manual_seed(0)

    def build():
        torch.manual_seed(1)
        return torch.nn.Sequential(RandLoRALinear(torch.nn.Linear(24, 40), r=4), torch.nn.GELU(),
                                   VeRALinear(torch.nn.Linear(40, 16), r=8))

    m = build()
    for p in m.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.1)
    x = torch.randn(6, 24)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    y, yc = m(x), cm(x)
    assert rel(yc, y) < 1e-6
    ge = torch.autograd.grad(y.square().sum(), [p for p in m.parameters() if p.requires_grad])
    gc = torch.autograd.grad(cm(x).square().sum(), [p for p in m.parameters() if p.requires_grad])
    for a, c in zip(ge, gc):
        assert rel(c, a) < 1e-5
    other = build()
    other.load_state_dict(m.state_dict())
    assert rel(other(x), y) < 1e-7


@pytest.mark.parametrize("io", [(64, 160), (160, 64), (100, 100)])
def test_sparse_basis_kernels_match_the_dense_path(io):
    """Very sparse bases through two sparse products (SLTrain kernels): same outputs and gradients
    as the dense-basis path, both orientations."""
    import copy

    i, o = io
    torch.manual_seed(0)
    base = torch.nn.Linear(i, o)
    fast = RandLoRALinear(base, r=8, very_sparse=True, sparse_kernels=True)
    slow = RandLoRALinear(copy.deepcopy(base), r=8, very_sparse=True, sparse_kernels=False)
    assert fast.basis_density() < 0.2
    for layer in (fast, slow):
        torch.manual_seed(1)
        layer.randlora_lambda.data.normal_()
        layer.randlora_gamma.data.normal_()
    x = torch.randn(37, i)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fast(x1), slow(x2)
    assert rel(y1, y2) < 1e-6
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert rel(x1.grad, x2.grad) < 1e-6
    assert rel(fast.randlora_lambda.grad, slow.randlora_lambda.grad) < 1e-6
    assert rel(fast.randlora_gamma.grad, slow.randlora_gamma.grad) < 1e-6
    assert RandLoRALinear(torch.nn.Linear(256, 256), r=8, very_sparse=True).sparse_kernels  # auto: 1/32 dense
    assert not RandLoRALinear(torch.nn.Linear(256, 256), r=8, sparse=True).sparse_kernels    # 1/3 dense: no


def test_merge_and_unload_failure_changes_nothing():
    m = _peft(_randlora_cfg(), seed=3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.base_model.model.down.base_layer.weight.data[0, 0] = float("inf")  # this layer's merge is not finite
    before["base_model.model.down.base_layer.weight"][0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="nothing was merged"):
        structops.compat.peft.merge_and_unload(m)
    after = m.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not m.base_model.model.up.merged


def test_sparse_basis_kernels_compile_and_reload():
    """The very-sparse path under torch.compile(fullgraph=True), and its plan rebuilt after
    load_state_dict brings different bases."""
    torch.manual_seed(0)
    layer = RandLoRALinear(torch.nn.Linear(256, 128), r=8, very_sparse=True, seed=1)
    assert layer.sparse_kernels
    layer.randlora_lambda.data.normal_()
    x = torch.randn(16, 256)
    y = layer(x)
    cl = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert rel(cl(x), y) < 1e-6
    other = RandLoRALinear(torch.nn.Linear(256, 128), r=8, very_sparse=True, seed=2)
    assert rel(other(x), y) > 1e-3
    other.load_state_dict(layer.state_dict())
    assert rel(other(x), y) < 1e-6


def test_loading_different_bases_does_not_touch_other_layers_sharing_them():
    a = RandLoRALinear(torch.nn.Linear(32, 48), r=4, seed=7)
    b = RandLoRALinear(torch.nn.Linear(32, 48), r=4, seed=7)
    assert a.randlora_B.data_ptr() == b.randlora_B.data_ptr()  # shared
    src = RandLoRALinear(torch.nn.Linear(32, 48), r=4, seed=8)
    b_before = b.randlora_B.clone()
    a.load_state_dict(src.state_dict())
    assert torch.equal(a.randlora_B, src.randlora_B)
    assert torch.equal(b.randlora_B, b_before)  # the shared tensor was not overwritten
    c = RandLoRALinear(torch.nn.Linear(32, 48), r=4, seed=7)
    c.load_state_dict(b.state_dict())  # equal bases: still shared, nothing copied
    assert c.randlora_B.data_ptr() == b.randlora_B.data_ptr()
    v1, v2 = VeRALinear(torch.nn.Linear(32, 48), r=8, seed=1), VeRALinear(torch.nn.Linear(32, 48), r=8, seed=1)
    v1.load_state_dict(VeRALinear(torch.nn.Linear(32, 48), r=8, seed=2).state_dict())
    assert not torch.equal(v1.vera_A, v2.vera_A)
