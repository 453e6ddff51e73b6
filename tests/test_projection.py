"""Dense -> Monarch projection (structops.monarch_project) in the main op's layout."""

import pytest
import torch

import structops
from structops import reference
from structops.projection import fly_default_sizes


def monarch(k, q, p, l, s, r, dtype=torch.float64):
    return torch.randn(k, q, p, dtype=dtype), torch.randn(l, s, r, dtype=dtype)


# (k, q, p, l, s, r): square sqrt(n), fly-default square, rectangular in > out and out > in,
# k != l, intermediate wider/narrower than in/out, ranks that differ between sub-blocks.
CASES = [
    (8, 8, 8, 8, 8, 8),
    (12, 8, 8, 8, 12, 12),
    (4, 48, 32, 4, 24, 48),
    (4, 24, 48, 4, 48, 24),
    (2, 12, 5, 3, 7, 8),
    (3, 4, 6, 2, 9, 6),
    (4, 3, 4, 6, 5, 2),
    (1, 10, 7, 5, 3, 2),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_on_monarch_matrices(case, dtype):
    k, q, p, l, s, r = case
    w1, w2 = monarch(*case, dtype=dtype)
    M = reference.monarch_dense(w1, w2)
    P = structops.monarch_project(M, k, l, k * q)
    assert P.w1.shape == (k, q, p) and P.w2.shape == (l, s, r)
    assert P.w1.dtype == dtype
    assert P.rel_err < (1e-5 if dtype == torch.float32 else 1e-10)
    recon = reference.monarch_dense(P.w1, P.w2)
    assert ((recon - M).norm() / M.norm()) < (1e-5 if dtype == torch.float32 else 1e-10)
    # the factors plug straight into the op
    x = torch.randn(3, k * p, dtype=dtype)
    torch.testing.assert_close(structops.monarch_matmul(x, P.w1, P.w2), x @ M.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [(8, 8, 8, 8, 8, 8), (2, 12, 5, 3, 7, 8), (4, 3, 4, 6, 5, 2)])
def test_optimal_and_reported_error(case):
    """rel_err is the true Frobenius error, and no nearby Monarch matrix of the same shape is
    closer (first-order optimality, checked against random perturbations of the factors)."""
    k, q, p, l, s, r = case
    W = torch.randn(l * s, k * p, dtype=torch.float64)
    P = structops.monarch_project(W, k, l, k * q)
    err = (reference.monarch_dense(P.w1, P.w2) - W).norm() / W.norm()
    assert float(err) == pytest.approx(P.rel_err, rel=1e-9)
    for _ in range(20):
        d1, d2 = 1e-3 * torch.randn_like(P.w1), 1e-3 * torch.randn_like(P.w2)
        e = (reference.monarch_dense(P.w1 + d1, P.w2 + d2) - W).norm() / W.norm()
        assert e >= err - 1e-12
    # a random Monarch matrix of the same structure is much further away
    w1, w2 = monarch(*case)
    Mr = reference.monarch_dense(w1, w2)
    scale = (Mr * W).sum() / (Mr * Mr).sum()
    assert err <= (scale * Mr - W).norm() / W.norm()


def test_fly_default_sizes():
    assert fly_default_sizes(64) == (8, 8)
    assert fly_default_sizes(96) == (12, 8)
    assert fly_default_sizes(15) == (5, 3)
    P = structops.monarch_project(torch.randn(96, 96))
    assert P.w1.shape == (12, 8, 8) and P.w2.shape == (8, 12, 12)


def test_matches_torch_structured_square_projection():
    pytest.importorskip("torch_structured", reason="torch-structured is not installed")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch_structured.monarch.blockdiag_butterfly_projection import blockdiag_butterfly_project
    W = torch.randn(48, 48, dtype=torch.float64)
    w1t, w2t = blockdiag_butterfly_project(W)
    P = structops.monarch_project(W)
    assert P.w1.shape == w1t.shape and P.w2.shape == w2t.shape
    torch.testing.assert_close(reference.monarch_dense(P.w1, P.w2), reference.monarch_dense(w1t, w2t))


def test_bad_inputs():
    with pytest.raises(ValueError, match="W must be a 2-D"):
        structops.monarch_project(torch.randn(4, 4, 4))
    with pytest.raises(ValueError, match="nblocks1 is required for a rectangular W"):
        structops.monarch_project(torch.randn(8, 4))
    with pytest.raises(ValueError, match="nblocks1=3 must be a positive divisor of in_features n=8"):
        structops.monarch_project(torch.randn(8, 8), 3)
    with pytest.raises(ValueError, match="nblocks2=3 must be a positive divisor of out_features m=8"):
        structops.monarch_project(torch.randn(8, 8), 2, 3)
    with pytest.raises(ValueError, match="mid=6.*divisible by nblocks1=4"):
        structops.monarch_project(torch.randn(8, 8), 4, 2, 6)
    with pytest.raises(ValueError, match="floating-point or complex"):
        structops.monarch_project(torch.ones(4, 4, dtype=torch.long))
