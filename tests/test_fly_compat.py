"""fly drop-in: complex Monarch on CPU, exact DFT projection, structops.compat.fly call forms
(checked against torch-structured's copy of fly), fly's layer signature and methods."""

import inspect
import math
import warnings

import pytest
import torch

import structops
from structops import reference
from structops.compat import fly
from structops.nn import BlockdiagLinear, MonarchLinear

SHAPES = [(4, 4, 4, 4, 4, 4), (3, 5, 2, 5, 7, 3), (2, 10, 3, 4, 6, 5), (1, 6, 5, 1, 4, 6)]


def cmake(k, q, p, l, s, r, lead=(7,), dtype=torch.complex128, requires_grad=False):
    g = torch.Generator().manual_seed(k * 100 + q * 10 + l)
    ts = [torch.randn(*lead, k * p, dtype=dtype, generator=g), torch.randn(k, q, p, dtype=dtype, generator=g),
          torch.randn(l, s, r, dtype=dtype, generator=g)]
    return [t.requires_grad_(requires_grad) for t in ts]


def _torch_structured(submodule):
    pytest.importorskip("torch_structured", reason="torch-structured is not installed")
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"torch_structured.monarch.{submodule}")


# ---- complex ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("recompute", [False, True])
def test_complex_values_and_grads_match_reference(shape, dtype, recompute):
    x, w1, w2 = cmake(*shape, lead=(2, 5), dtype=dtype, requires_grad=True)
    y = structops.monarch_matmul(x, w1, w2, recompute=recompute)
    yr = reference.monarch_matmul(x, w1, w2)
    assert y.dtype == dtype and y.shape == yr.shape
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.complex64 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, yr, **tol)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, w1, w2), g)
    theirs = torch.autograd.grad(yr, (x, w1, w2), g)
    for a, b in zip(ours, theirs):  # torch's convention for complex gradients (conjugates)
        torch.testing.assert_close(a, b, **tol)
    # dense oracle: y = x @ M^T with M built from permutation matrices
    M = reference.monarch_dense(w1.detach(), w2.detach())
    torch.testing.assert_close(y.detach(), x.detach() @ M.T, **tol)


def test_complex_gradient_is_not_the_unconjugated_one():
    """A backward without the conjugates (a plausible bug) would give a different gradient."""
    x, w1, w2 = cmake(4, 4, 4, 4, 4, 4, requires_grad=True)
    y = structops.monarch_matmul(x, w1, w2)
    g = torch.randn_like(y)
    gx = torch.autograd.grad(y, x, g)[0]
    M = reference.monarch_dense(w1.detach(), w2.detach())
    torch.testing.assert_close(gx, g @ M.conj())
    assert (gx - g @ M).abs().max() > 1e-3


@pytest.mark.parametrize("recompute", [False, True])
def test_complex_gradcheck(recompute):
    x, w1, w2 = cmake(3, 5, 2, 5, 7, 3, lead=(4,), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: structops.monarch_matmul(a, b, c, recompute=recompute), (x, w1, w2))
    x, w, _ = cmake(3, 5, 2, 5, 7, 3, lead=(4,), requires_grad=True)
    assert torch.autograd.gradcheck(structops.blockdiag_matmul, (x, w))


def test_complex_opcheck_and_empty_batch():
    x, w1, w2 = cmake(3, 5, 2, 5, 7, 3, dtype=torch.complex64)
    ops = torch.ops.structops
    torch.library.opcheck(ops.monarch_matmul.default, (x, w1, w2))
    torch.library.opcheck(ops.monarch_matmul_fwd.default, (x, w1, w2))
    torch.library.opcheck(ops.blockdiag_matmul.default, (x, w1))
    x0, w1, w2 = cmake(3, 5, 2, 5, 7, 3, lead=(0,), requires_grad=True)
    y = structops.monarch_matmul(x0, w1, w2)
    g1, g2 = torch.autograd.grad(y.abs().sum(), (w1, w2), allow_unused=True)
    assert y.shape == (0, 35) and (g1 is None or torch.count_nonzero(g1) == 0)


def test_complex_and_real_mixed_is_rejected():
    x, w1, w2 = cmake(4, 4, 4, 4, 4, 4)
    with pytest.raises(RuntimeError, match="same dtype"):
        structops.monarch_matmul(x, w1.real.contiguous(), w2)


# ---- DFT: the stride-permuted DFT is exactly Monarch ------------------------------------------
@pytest.mark.parametrize("m", [4, 8, 16])
@pytest.mark.parametrize("dtype,tol", [(torch.complex64, 1e-5), (torch.complex128, 1e-10)])
def test_dft_with_permuted_input_projects_exactly(m, dtype, tol):
    n = m * m
    F = torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0)  # F[k, j] = exp(-2 pi i jk / n)
    perm = torch.arange(n).reshape(m, m).t().reshape(-1)  # P swaps the two sqrt(n) axes
    FP = F[:, perm].to(dtype)
    w1, w2 = fly.blockdiag_butterfly_project(FP)
    assert w1.shape == (m, m, m) and w2.shape == (m, m, m) and w1.dtype == dtype
    x = torch.randn(5, n, dtype=dtype)
    y = fly.blockdiag_butterfly_multiply(x, w1, w2)
    exact = torch.fft.fft(x.to(torch.complex128)[:, perm], dim=-1)  # x P^T F^T = FFT of the permuted x
    rel = ((y.to(torch.complex128) - exact).norm() / exact.norm()).item()
    assert rel <= tol, rel
    _, _, rel_err = structops.monarch_project(FP, m, m, n)
    assert rel_err <= tol
    # the unpermuted DFT is *not* Monarch in this layout: the projection must say so
    assert structops.monarch_project(F.to(dtype), m, m, n).rel_err > 0.5


# ---- compat.fly call forms ---------------------------------------------------------------------
def test_fly_signatures():
    assert list(inspect.signature(fly.blockdiag_multiply).parameters) == ["x", "weight"]
    assert list(inspect.signature(fly.blockdiag_butterfly_multiply).parameters) == ["x", "w1_bfly", "w2_bfly"]
    sig = inspect.signature(fly.blockdiag_butterfly_project)
    assert list(sig.parameters) == ["M", "sizes"] and sig.parameters["sizes"].default is None
    for cls in (MonarchLinear, BlockdiagLinear, fly.MonarchLinear, fly.BlockdiagLinear):
        ps = inspect.signature(cls.__init__).parameters
        assert list(ps)[1:6] == ["in_features", "out_features", "bias", "device", "dtype"]
        assert ps["nblocks"].kind is inspect.Parameter.KEYWORD_ONLY and ps["nblocks"].default == 4


@pytest.mark.parametrize("n,sizes", [(64, None), (48, None), (36, (9, 4)), (30, (5, 6))])
def test_project_matches_torch_structured(n, sizes):
    ts = _torch_structured("blockdiag_butterfly_projection")
    M = torch.randn(n, n, dtype=torch.float64)
    w1, w2 = fly.blockdiag_butterfly_project(M, sizes)
    t1, t2 = ts.blockdiag_butterfly_project(M, sizes)
    assert w1.shape == t1.shape and w2.shape == t2.shape
    eye = torch.eye(n, dtype=torch.float64)
    ours = fly.blockdiag_butterfly_multiply(eye, w1, w2)
    theirs = reference.monarch_matmul(eye, t1, t2)
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)  # same Monarch matrix (Frobenius-optimal)


def test_project_rejects_non_square_like_fly():
    with pytest.raises(NotImplementedError, match="square"):
        fly.blockdiag_butterfly_project(torch.randn(8, 4))
    with pytest.raises(ValueError, match="product is n=16"):
        fly.blockdiag_butterfly_project(torch.randn(16, 16), (3, 5))


def test_fly_ops_match_torch_structured():
    tsm = _torch_structured("blockdiag_butterfly_multiply")
    tsb = _torch_structured("blockdiag_multiply")
    x = torch.randn(3, 4, 24)
    w1, w2 = torch.randn(2, 10, 12), torch.randn(4, 6, 5)
    torch.testing.assert_close(fly.blockdiag_butterfly_multiply(x, w1, w2), tsm.blockdiag_butterfly_multiply(x, w1, w2),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fly.blockdiag_multiply(x, w1), tsb.blockdiag_multiply(x, w1), rtol=1e-5, atol=1e-5)


# ---- layers -------------------------------------------------------------------------------------
def test_positional_fly_order_and_methods():
    layer = MonarchLinear(20, 36, False, None, torch.float64, nblocks=4)  # fly's positional order
    assert layer.bias is None and layer.blkdiag1.dtype == torch.float64
    W = layer.convert_to_dense_weight()
    assert W.shape == (36, 20)
    x = torch.randn(3, 20, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ W.T)
    assert layer.saving == pytest.approx((layer.blkdiag1.numel() + layer.blkdiag2.numel()) / (20 * 36))
    bd = BlockdiagLinear(20, 36, True, None, torch.float64, nblocks=4, shuffle=True)
    torch.testing.assert_close(bd(x), x @ bd.convert_to_dense_weight().T + bd.bias)


def test_narrower_inputs_are_zero_padded_as_fly():
    layer = MonarchLinear(30, 16, dtype=torch.float64, nblocks=4)  # in_features_extended = 32
    x = torch.randn(2, 27, dtype=torch.float64)
    padded = torch.cat([x, torch.zeros(2, 3, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(layer(x), layer(padded))
    W = layer.convert_to_dense_weight()
    torch.testing.assert_close(layer(x), x @ W[:, :27].T + layer.bias)


def test_set_weights_from_dense_init():
    bd = BlockdiagLinear(16, 16, nblocks=4, dtype=torch.float64)
    torch.manual_seed(3)
    bd.set_weights_from_dense_init(lambda w: torch.nn.init.constant_(w, 0.5))
    # fly: scaled by sqrt(dense.numel / weight.numel) = sqrt(4) = 2
    torch.testing.assert_close(bd.weight, torch.full_like(bd.weight, 1.0))
    ml = MonarchLinear(16, 16, nblocks=4, dtype=torch.float64)
    target = torch.randn(16, 16, dtype=torch.float64)
    src = MonarchLinear(16, 16, nblocks=4, dtype=torch.float64)
    target = src.convert_to_dense_weight()  # a Monarch matrix: the projection must recover it
    ml.set_weights_from_dense_init(lambda w: w.copy_(target))
    torch.testing.assert_close(ml.convert_to_dense_weight(), target, rtol=1e-9, atol=1e-9)


def test_fly_state_dict_loads_into_compat_layer():
    """A checkpoint written with fly's parameter names loads into compat.fly.MonarchLinear."""
    src = MonarchLinear(64, 96, nblocks=4)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    assert set(sd) == {"blkdiag1", "blkdiag2", "bias"}
    dst = fly.MonarchLinear(64, 96, nblocks=4)
    dst.load_state_dict(sd)
    x = torch.randn(5, 64)
    torch.testing.assert_close(dst(x), src(x))
