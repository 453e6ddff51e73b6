"""K-FAC ops on CUDA (marked `cuda`: skipped without a GPU; scripts/gpu_check.sh runs them): the
ATen orchestration on cuBLAS / cuSOLVER against the CPU results, the float64 retry, and a
GPT-2-sized eigendecomposition (the n > 2895 cuSOLVER workspace case of unlearning.md §3.6)."""

import pytest
import torch

import structops

pytestmark = pytest.mark.cuda


def rel(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-300)).item()


def spd(L, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, n, n + 32, generator=g)
    return x @ x.transpose(1, 2) / (n + 32)


def test_factor_update_cuda_matches_cpu():
    x = torch.randn(3000, 300).bfloat16()
    mask = torch.rand(3000) > 0.5
    Fc = torch.zeros(301, 301)
    structops.kfac_factor_update(Fc, x, 0.5, bias=True, mask=mask)
    Fg = torch.zeros(301, 301, device="cuda")
    structops.kfac_factor_update(Fg, x.cuda(), 0.5, bias=True, mask=mask.cuda())
    assert rel(Fg, Fc) < 1e-5


@pytest.mark.parametrize("method", ["auto", "cholesky", "schur"])
def test_damped_inverse_and_eigh_cuda(method):
    F = spd(16, 200)
    inv = structops.kfac_damped_inverse(F.cuda(), 1e-3, method=method)
    M = F.double() + 1e-3 * torch.eye(200, dtype=torch.float64)
    ref = torch.cholesky_inverse(torch.linalg.cholesky(M))  # not LU: see test_kfac.spd_inv
    assert rel(inv, ref) < 1e-4
    w, v, fell = structops.kfac_eigh(F.cuda())
    assert rel(v @ torch.diag_embed(w) @ v.mT, F) < 1e-5 and not fell.any().item()


def test_eigh_large_factor_cuda():
    F = spd(1, 3072)
    w, v, fell = structops.kfac_eigh(F.cuda())
    assert torch.isfinite(w).all() and rel(v @ torch.diag_embed(w) @ v.mT, F) < 1e-4


def test_precondition_cuda_matches_cpu():
    A, S = spd(4, 65, 1).double(), spd(4, 32, 2).double()
    eA, QA = torch.linalg.eigh(A)
    eS, QS = torch.linalg.eigh(S)
    G = torch.randn(4, 32, 65, dtype=torch.float64)
    cpu = structops.kfac_precondition(G, QS, QA, eigenvalues_S=eS, eigenvalues_A=eA, damping=1e-2)
    gpu = structops.kfac_precondition(G.cuda(), QS.cuda(), QA.cuda(), eigenvalues_S=eS.cuda(), eigenvalues_A=eA.cuda(),
                                      damping=1e-2)
    assert rel(gpu, cpu) < 1e-10
