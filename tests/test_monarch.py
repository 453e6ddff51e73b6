"""monarch_matmul / blockdiag_matmul on CPU: fly semantics, gradients, shapes, dtypes, errors."""

import itertools
import math

import pytest
import torch

import structops
from structops import reference

from conftest import available_isas

# (k, q, p, l, s, r): square, sqrt(n) blocks (lane regime), rectangular k != l, odd sizes,
# a single block, and large blocks (fused kernels with P_mid folded on CPU; STRUCTOPS_CPU_BLAS=1
# forces the BLAS path, which test_narrow_second_factor_transposes covers).
SHAPES = [
    (4, 4, 4, 4, 4, 4),
    (16, 16, 16, 16, 16, 16),
    (32, 8, 8, 32, 8, 8),
    (8, 24, 12, 24, 16, 8),
    (3, 5, 2, 5, 7, 3),
    (2, 10, 3, 4, 6, 5),
    (1, 6, 5, 1, 4, 6),
]
LARGE = (2, 128, 128, 2, 128, 128)
LEADS = [(), (1,), (0,), (5,), (2, 3), (2, 0, 3), (37,)]


def make(k, q, p, l, s, r, lead=(7,), dtype=torch.float64, requires_grad=False):
    x = torch.randn(*lead, k * p, dtype=dtype, requires_grad=requires_grad)
    w1 = torch.randn(k, q, p, dtype=dtype, requires_grad=requires_grad)
    w2 = torch.randn(l, s, r, dtype=dtype, requires_grad=requires_grad)
    return x, w1, w2


def fly_four_steps(x, w1, w2):
    """The four steps of fly's blockdiag_butterfly_multiply written out index by index (the
    reference note's §2.2), independent of structops.reference."""
    lead = x.shape[:-1]
    xb = x.reshape(-1, x.shape[-1])
    k, q, p = w1.shape
    l, s, r = w2.shape
    B = xb.shape[0]
    u = xb.new_zeros(B, k * q)
    for i, a in itertools.product(range(k), range(q)):
        u[:, i * q + a] = xb[:, i * p:(i + 1) * p] @ w1[i, a]
    v = xb.new_zeros(B, k * q)
    for lm, rh in itertools.product(range(l), range(r)):
        v[:, lm * r + rh] = u[:, rh * l + lm]
    w = xb.new_zeros(B, l * s)
    for lm, sg in itertools.product(range(l), range(s)):
        w[:, lm * s + sg] = v[:, lm * r:(lm + 1) * r] @ w2[lm, sg]
    y = xb.new_zeros(B, l * s)
    for sg, lm in itertools.product(range(s), range(l)):
        y[:, sg * l + lm] = w[:, lm * s + sg]
    return y.reshape(*lead, l * s)


@pytest.mark.parametrize("shape", SHAPES + [LARGE])
def test_fly_semantics_dense_product(shape):
    """monarch_matmul == x @ M.T with M = P_out BD(w2) P_mid BD(w1), and == fly's four steps."""
    x, w1, w2 = make(*shape, lead=(9,))
    y = structops.monarch_matmul(x, w1, w2)
    M = reference.monarch_dense(w1, w2)
    torch.testing.assert_close(y, x @ M.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, fly_four_steps(x, w1, w2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference.monarch_matmul(x, w1, w2), y, rtol=1e-12, atol=1e-12)


def test_square_monarch_is_PLPR():
    """Square sqrt(n) case: both permutations are the same involution P: M = P L P^T R."""
    b = 4
    _, w1, w2 = make(b, b, b, b, b, b)
    P = torch.zeros(b * b, b * b, dtype=torch.float64)
    for i, j in itertools.product(range(b), range(b)):
        P[i * b + j, j * b + i] = 1
    M = P @ torch.block_diag(*w2) @ P.T @ torch.block_diag(*w1)
    torch.testing.assert_close(reference.monarch_dense(w1, w2), M)
    x = torch.randn(3, b * b, dtype=torch.float64)
    torch.testing.assert_close(structops.monarch_matmul(x, w1, w2), x @ M.T)


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_backward_every_cpu_variant(isa, shape, dtype, cpu_isa):
    """Each compiled CPU variant (AVX-512 / AVX2 / generic) against the einsum reference,
    forward and all three gradients, saved-intermediate and recompute paths."""
    cpu_isa(isa)
    assert structops._C.cpu_isa() == isa
    x, w1, w2 = make(*shape, lead=(53,), dtype=dtype, requires_grad=True)
    g = torch.randn(53, shape[3] * shape[4], dtype=dtype)
    yr = reference.monarch_matmul(x, w1, w2)
    gr = torch.autograd.grad(yr, (x, w1, w2), g)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-4)
    for recompute in (False, True):
        y = structops.monarch_matmul(x, w1, w2, recompute=recompute)
        torch.testing.assert_close(y, yr, **tol)
        for a, b in zip(torch.autograd.grad(y, (x, w1, w2), g), gr):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("blas", ["0", "1"])
@pytest.mark.parametrize("shape", [(4, 8, 6, 4, 5, 8), (2, 12, 5, 3, 7, 8), LARGE])
def test_blas_and_fused_paths_agree(blas, shape, monkeypatch):
    """The CPU BLAS path (large blocks) and the fused kernels compute the same thing."""
    monkeypatch.setenv("STRUCTOPS_CPU_BLAS", blas)
    x, w1, w2 = make(*shape, lead=(19,), requires_grad=True)
    g = torch.randn(19, shape[3] * shape[4], dtype=torch.float64)
    for recompute in (False, True):
        y = structops.monarch_matmul(x, w1, w2, recompute=recompute)
        torch.testing.assert_close(y, reference.monarch_matmul(x, w1, w2))
        got = torch.autograd.grad(y, (x, w1, w2), g)
        want = torch.autograd.grad(reference.monarch_matmul(x, w1, w2), (x, w1, w2), g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    yb = structops.blockdiag_matmul(x, w1)
    torch.testing.assert_close(yb, reference.blockdiag_matmul(x, w1))
    for a, b in zip(torch.autograd.grad(yb, (x, w1), torch.ones_like(yb)),
                    torch.autograd.grad(reference.blockdiag_matmul(x, w1), (x, w1), torch.ones_like(yb))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lead", LEADS)
def test_leading_dims(lead):
    shape = (3, 5, 2, 5, 7, 3)
    x, w1, w2 = make(*shape, lead=lead, requires_grad=True)
    y = structops.monarch_matmul(x, w1, w2)
    assert y.shape == (*lead, 35)
    torch.testing.assert_close(y, reference.monarch_matmul(x, w1, w2))
    gx, gw1, gw2 = torch.autograd.grad(y.sum(), (x, w1, w2))
    rx, rw1, rw2 = torch.autograd.grad(reference.monarch_matmul(x, w1, w2).sum(), (x, w1, w2))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw1, rw1)
    torch.testing.assert_close(gw2, rw2)
    yb = structops.blockdiag_matmul(x, w1)
    assert yb.shape == (*lead, 15)
    torch.testing.assert_close(yb, reference.blockdiag_matmul(x, w1))


def test_empty_batch_gradients_are_zero():
    x, w1, w2 = make(4, 4, 4, 4, 4, 4, lead=(0,), requires_grad=True)
    y = structops.monarch_matmul(x, w1, w2)
    gx, gw1, gw2 = torch.autograd.grad(y.sum(), (x, w1, w2), allow_unused=False)
    assert gx.shape == (0, 16)
    assert torch.count_nonzero(gw1) == 0 and torch.count_nonzero(gw2) == 0


def test_non_contiguous_inputs():
    shape = (8, 24, 12, 24, 16, 8)
    base = torch.randn(40, 2 * 96, dtype=torch.float64)
    x = base[::2, ::2]  # row stride 384, column stride 2
    assert not x.is_contiguous()
    _, w1, w2 = make(*shape)
    w1t = w1.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous weights, same values
    assert not w1t.is_contiguous()
    torch.testing.assert_close(structops.monarch_matmul(x, w1t, w2), reference.monarch_matmul(x, w1, w2))
    xt = torch.randn(96, 30, dtype=torch.float64).t()  # column-major x
    torch.testing.assert_close(structops.monarch_matmul(xt, w1, w2), reference.monarch_matmul(xt, w1, w2))
    torch.testing.assert_close(structops.blockdiag_matmul(x, w1t), reference.blockdiag_matmul(x, w1))


@pytest.mark.parametrize("shape", [(4, 4, 4, 4, 4, 4), (3, 5, 2, 5, 7, 3), (2, 4, 3, 4, 3, 2), (8, 2, 2, 8, 2, 2)])
@pytest.mark.parametrize("recompute", [False, True])
def test_gradcheck_fp64(shape, recompute):
    x, w1, w2 = make(*shape, lead=(2, 3), requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: structops.monarch_matmul(a, b, c, recompute=recompute), (x, w1, w2))
    assert torch.autograd.gradcheck(structops.blockdiag_matmul, (x, w1))


def test_gradcheck_fp64_blas_path(monkeypatch):
    monkeypatch.setenv("STRUCTOPS_CPU_BLAS", "1")
    x, w1, w2 = make(2, 4, 3, 2, 3, 4, lead=(5,), requires_grad=True)
    assert torch.autograd.gradcheck(structops.monarch_matmul, (x, w1, w2))
    assert torch.autograd.gradcheck(structops.blockdiag_matmul, (x, w1))


def test_partial_requires_grad():
    """Only the requested gradients are computed; the others are None."""
    x, w1, w2 = make(3, 5, 2, 5, 7, 3)
    for flags in itertools.product([False, True], repeat=3):
        if not any(flags):
            continue
        ts = [t.clone().requires_grad_(f) for t, f in zip((x, w1, w2), flags)]
        y = structops.monarch_matmul(*ts)
        y.sum().backward()
        r = [t.clone().requires_grad_(f) for t, f in zip((x, w1, w2), flags)]
        reference.monarch_matmul(*r).sum().backward()
        for a, b, f in zip(ts, r, flags):
            assert (a.grad is None) == (not f)
            if f:
                torch.testing.assert_close(a.grad, b.grad)


def test_double_backward_raises_clear_error():
    x, w1, w2 = make(4, 4, 4, 4, 4, 4, requires_grad=True)
    y = structops.monarch_matmul(x, w1, w2)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()
    yb = structops.blockdiag_matmul(x, w1)
    (gx,) = torch.autograd.grad(yb.pow(2).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_bfloat16_and_float16_on_cpu():
    """Computed in float32 and rounded: error no worse than twice the reference's own bf16 error."""
    shape = (8, 24, 12, 24, 16, 8)
    x, w1, w2 = make(*shape, lead=(31,), dtype=torch.float32)
    exact = reference.monarch_matmul(x.double(), w1.double(), w2.double())
    for dt in (torch.bfloat16, torch.float16):
        y = structops.monarch_matmul(x.to(dt), w1.to(dt), w2.to(dt))
        assert y.dtype == dt
        ref_lp = reference.monarch_matmul(x.to(dt), w1.to(dt), w2.to(dt))
        err = (y.double() - exact).abs().max()
        ref_err = (ref_lp.double() - exact).abs().max()
        assert err <= 2 * ref_err + 1e-6


def test_cpu_autocast_follows_active_dtype():
    x, w1, w2 = make(4, 4, 4, 4, 4, 4, dtype=torch.float32)
    for dt in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dt):
            y = structops.monarch_matmul(x, w1, w2)
            yb = structops.blockdiag_matmul(x, w1)
        assert y.dtype == dt and yb.dtype == dt
        torch.testing.assert_close(y.float(), reference.monarch_matmul(x, w1, w2), rtol=3e-2, atol=3e-1)
    # mixed dtypes are fine under autocast (they are cast to the autocast dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = structops.monarch_matmul(x.bfloat16(), w1, w2)
    assert y.dtype == torch.bfloat16
    # float64 is not autocast-eligible
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert structops.monarch_matmul(x.double(), w1.double(), w2.double()).dtype == torch.float64


def test_deterministic_weight_gradients():
    x, w1, w2 = make(16, 16, 16, 16, 16, 16, lead=(1000,), dtype=torch.float32, requires_grad=True)
    g = torch.randn(1000, 256)
    first = torch.autograd.grad(structops.monarch_matmul(x, w1, w2), (x, w1, w2), g)
    for _ in range(3):
        again = torch.autograd.grad(structops.monarch_matmul(x, w1, w2), (x, w1, w2), g)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_intermediate_is_v_on_cpu():
    """monarch_matmul_fwd's second output on CPU is v = P_mid BD(w1) x (fly's out1 layout)."""
    k, q, p, l, s, r = 2, 10, 3, 4, 6, 5
    x, w1, w2 = make(k, q, p, l, s, r, lead=(6,))
    y, v = torch.ops.structops.monarch_matmul_fwd(x, w1, w2)
    u = reference.blockdiag_matmul(x, w1)
    torch.testing.assert_close(v, u.reshape(6, r, l).transpose(1, 2).reshape(6, k * q))
    torch.testing.assert_close(y, reference.monarch_matmul(x, w1, w2))


# ---------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 4, 4, 4, 4, 4), (3, 5, 2, 5, 7, 3)])
@pytest.mark.parametrize("lead", [(3,), (2, 3), ()])
def test_opcheck(shape, lead):
    x, w1, w2 = make(*shape, lead=lead, dtype=torch.float32, requires_grad=True)
    ops = torch.ops.structops
    torch.library.opcheck(ops.monarch_matmul.default, (x, w1, w2))
    torch.library.opcheck(ops.monarch_matmul_fwd.default, (x, w1, w2))
    torch.library.opcheck(ops.blockdiag_matmul.default, (x, w1))
    g = torch.randn(*lead, shape[3] * shape[4])
    xd, w1d, w2d = x.detach(), w1.detach(), w2.detach()
    _, v = ops.monarch_matmul_fwd(xd, w1d, w2d)
    for mask in ([True, True, True], [True, False, True], [False, True, False]):
        torch.library.opcheck(ops.monarch_matmul_backward.default, (g, xd, w1d, w2d, v, mask))
        torch.library.opcheck(ops.monarch_matmul_backward.default, (g, xd, w1d, w2d, None, mask))
    gb = torch.randn(*lead, shape[0] * shape[1])
    torch.library.opcheck(ops.blockdiag_matmul_backward.default, (gb, xd, w1d, [True, True]))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_argument_and_shape():
    x, w1, w2 = make(4, 4, 4, 4, 4, 4, dtype=torch.float32)
    f = structops.monarch_matmul
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., n\).*0-d"):
        f(torch.tensor(1.0), w1, w2)
    with pytest.raises(ValueError, match=r"w1 must be a 3-D tensor \(k, q, p\).*\(4, 16\)"):
        f(x, w1.reshape(4, 16), w2)
    with pytest.raises(ValueError, match=r"w2 must be a 3-D tensor \(l, s, r\)"):
        f(x, w1, w2[0])
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must equal k\*p = 4\*4 = 16.*\(7, 15\)"):
        f(torch.randn(7, 15), w1, w2)
    with pytest.raises(ValueError, match=r"needs l\*r == k\*q = 16.*got l\*r = 12"):
        f(x, w1, torch.randn(4, 4, 3))
    with pytest.raises(RuntimeError, match=r"same dtype.*x: torch.float32.*w1: torch.float64"):
        f(x, w1.double(), w2)
    with pytest.raises(RuntimeError, match=r"same device.*meta"):
        f(x, w1, w2.to("meta"))
    with pytest.raises(RuntimeError, match="floating-point"):
        f(x.long(), w1.long(), w2.long())
    with pytest.raises(TypeError, match="w2 must be a torch.Tensor"):
        f(x, w1, None)
    with pytest.raises(ValueError, match=r"w must be a 3-D tensor \(k, q, p\)"):
        structops.blockdiag_matmul(x, w1[0])
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must equal k\*p"):
        structops.blockdiag_matmul(torch.randn(3, 5), w1)


def test_bad_inputs_through_torch_ops_directly():
    """The C++ checks guard callers that bypass the Python wrappers."""
    ops = torch.ops.structops
    x, w1, w2 = make(4, 4, 4, 4, 4, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must equal k\*p = 4\*4 = 16"):
        ops.monarch_matmul(torch.randn(3, 15), w1, w2)
    with pytest.raises(ValueError, match=r"needs l\*r == k\*q"):
        ops.monarch_matmul(x, w1, torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="0-d"):
        ops.blockdiag_matmul(torch.tensor(1.0), w1)
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.monarch_matmul(x, w1, w2.double())
    with pytest.raises(ValueError, match="grad must have the output shape"):
        ops.monarch_matmul_backward(torch.randn(7, 15), x, w1, w2, None, [True, True, True])
    with pytest.raises(ValueError, match="v must have shape"):
        ops.monarch_matmul_backward(torch.randn(7, 16), x, w1, w2, torch.randn(7, 3), [True, True, True])


def test_reference_bmm_baseline_matches():
    """The fly-style bmm baseline used by the benchmark computes the same op and gradients."""
    x, w1, w2 = make(8, 24, 12, 24, 16, 8, lead=(11,), requires_grad=True)
    y = reference.monarch_matmul_bmm(x, w1, w2)
    torch.testing.assert_close(y, reference.monarch_matmul(x, w1, w2))
    assert torch.autograd.gradcheck(reference.monarch_matmul_bmm, make(3, 5, 2, 5, 7, 3, lead=(4,), requires_grad=True))


def _torch_structured(submodule):
    pytest.importorskip("torch_structured", reason="torch-structured is not installed")
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"torch_structured.monarch.{submodule}")


@pytest.mark.parametrize("shape", [(4, 4, 4, 4, 4, 4), (8, 24, 12, 24, 16, 8), (2, 10, 3, 4, 6, 5)])
def test_torch_structured_monarch_compat(shape):
    """Same values and gradients as torch-structured's copy of fly's blockdiag_butterfly_multiply."""
    ts = _torch_structured("blockdiag_butterfly_multiply")
    x, w1, w2 = make(*shape, lead=(11,), dtype=torch.float32, requires_grad=True)
    y = structops.monarch_matmul(x, w1, w2)
    yt = ts.blockdiag_butterfly_multiply(x, w1, w2)
    torch.testing.assert_close(y, yt, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (x, w1, w2), g), torch.autograd.grad(yt, (x, w1, w2), g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_torch_structured_blockdiag_compat():
    ts = _torch_structured("blockdiag_multiply")
    x, w1, _ = make(8, 24, 12, 24, 16, 8, lead=(2, 5), dtype=torch.float32)
    torch.testing.assert_close(structops.blockdiag_matmul(x, w1), ts.blockdiag_multiply(x, w1), rtol=1e-5, atol=1e-5)


def test_large_sqrt_n_shape_float32():
    """A realistic sqrt(n) shape (n = 1024, 32 blocks) in float32 vs the float64 reference."""
    b = 32
    x, w1, w2 = make(b, b, b, b, b, b, lead=(300,), dtype=torch.float32)
    y = structops.monarch_matmul(x, w1 / math.sqrt(b), w2 / math.sqrt(b))
    exact = reference.monarch_matmul(x.double(), w1.double() / math.sqrt(b), w2.double() / math.sqrt(b))
    assert (y.double() - exact).abs().max() < 1e-4


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("blas", ["0", "1"])
@pytest.mark.parametrize("shape", [(2, 8, 5, 2, 7, 8), (4, 16, 3, 4, 5, 16), (8, 40, 6, 8, 3, 40), (4, 36, 2, 4, 9, 36),
                                   # s >= 16: P_out takes the shuffle-based interleave (narrow output)
                                   (4, 16, 3, 4, 37, 16), (2, 24, 5, 2, 64, 24), (8, 16, 7, 8, 16, 16),
                                   # q/l = 64: P_mid folded into the first factor's packed weights
                                   (2, 128, 8, 2, 16, 128), (4, 256, 3, 4, 5, 256)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_narrow_second_factor_transposes(isa, blas, shape, dtype, cpu_isa, monkeypatch):
    """l in {2, 4, 8} (fewer blocks than SIMD lanes) takes the shuffle-based narrow transposes for
    P_mid / P_out and their inverses: check y, the saved v and all gradients on every variant and
    both CPU paths."""
    cpu_isa(isa)
    monkeypatch.setenv("STRUCTOPS_CPU_BLAS", blas)
    k, q, p, l, s, r = shape
    x, w1, w2 = make(*shape, lead=(13,), dtype=dtype, requires_grad=True)
    y = structops.monarch_matmul(x, w1, w2, recompute=False)
    g = torch.randn_like(y)
    # float32: reductions of up to 256 products in a different order than the reference
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(y, reference.monarch_matmul(x, w1, w2), **tol)
    for a, b in zip(torch.autograd.grad(y, (x, w1, w2), g),
                    torch.autograd.grad(reference.monarch_matmul(x, w1, w2), (x, w1, w2), g)):
        torch.testing.assert_close(a, b, **tol)
    _, v = torch.ops.structops.monarch_matmul_fwd(x.detach(), w1.detach(), w2.detach())
    u = reference.blockdiag_matmul(x.detach(), w1.detach())
    torch.testing.assert_close(v, u.reshape(13, r, l).transpose(1, 2).reshape(13, k * q))
