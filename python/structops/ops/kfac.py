"""K-FAC linear algebra: factor accumulation, batched damped inverse and eigendecomposition, and
K-FAC / EK-FAC preconditioning, batched over all same-shape layers.

Maths, layouts and plans: ``csrc/include/structops/kfac.h``; docs/ARCHITECTURE.md, "K-FAC".
Conventions are curvlinops 3.0.1's: for a linear layer with weight (out, in), the Gauss-Newton
block is approximated by ``S ⊗ A`` acting on the row-major ``vec(W)``, A (in [+1], in [+1]) the
input factor with the bias column folded in last, S (out, out) the output-gradient factor.

* ``kfac_factor_update(factor, x, scale=1.0, bias=False, mask=None)``: ``factor += scale · Σ_t
  [x_t; 1][x_t; 1]ᵀ`` in place over the rows of x (..., d) with ``mask`` true; only the lower
  triangle is computed (in blocks) and mirrored.  factor float32/float64; x any floating dtype
  (cast chunk-wise, so bf16 activations accumulate in fp32 without a full-size copy).
* ``kfac_damped_inverse(factors, damping)``: ``(F_l + λ_l I)⁻¹`` for factors (L, n, n) in one
  call; ``method="auto"`` takes the recursive Schur-complement inverse (batched GEMMs, Cholesky at
  the 32-wide leaves) on CPU and batched Cholesky on CUDA.  Factors whose solve fails are redone
  in float64; one that still fails raises a ``RuntimeError`` naming it.
* ``kfac_pi_damping(A, S, damping)``: Martens & Grosse's π split, ``A + π√λ I`` and
  ``S + √λ/π I`` with ``π = sqrt((tr A / dim A) / (tr S / dim S))`` per layer.
* ``kfac_eigh(factors) -> (eigenvalues, eigenvectors, fell_back)``: batched symmetric
  eigendecomposition (CPU: factors in parallel over the cores); any factor whose solve throws,
  is not finite or shows an eigenvalue below ``-neg_tol · max|λ|`` is redone in float64 and
  reported in ``fell_back`` (bool per factor).  A non-finite factor raises, naming it.
* ``kfac_precondition(grads, QS, QA, eigenvalues=... | eigenvalues_S=..., eigenvalues_A=...,
  damping=λ)``: ``Q_S((Q_Sᵀ G Q_A) ⊘ (Λ + λ))Q_Aᵀ`` for grads (L, out, in); Λ the EK-FAC
  eigenvalues (L, out, in) or the K-FAC outer product e_S e_Aᵀ.

None of these is differentiable.  CPU: MKL/LAPACK through ATen; CUDA: cuBLAS/cuSOLVER through
ATen (compiled, not yet run on a GPU).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_tensors, shape_of

__all__ = ["kfac_factor_update", "kfac_damped_inverse", "kfac_pi_damping", "kfac_eigh", "kfac_precondition",
           "INVERSE_METHODS"]

_ops = torch.ops.structops

INVERSE_METHODS = {"auto": 0, "cholesky": 1, "schur": 2}
_FACTOR_DTYPES = (torch.float32, torch.float64)


def _describe(names: Sequence[str] | None, idx: list[int]) -> str:
    if names is None:
        return ", ".join(f"factor {i}" for i in idx)
    return ", ".join(f"{names[i]!r} (factor {i})" for i in idx)


def _check_factors(op: str, factors: Tensor, names) -> None:
    check_tensors(op, {"factors": factors})
    if factors.dim() != 3 or factors.shape[1] != factors.shape[2]:
        raise ValueError(f"{op}: factors must be a batch of square matrices (L, n, n), got {shape_of(factors)}")
    if factors.dtype not in _FACTOR_DTYPES:
        raise RuntimeError(f"{op}: factors must be float32 or float64, got {factors.dtype}")
    if names is not None and len(names) != factors.shape[0]:
        raise ValueError(f"{op}: names must have one entry per factor ({factors.shape[0]}), got {len(names)}")


def kfac_factor_update(factor: Tensor, x: Tensor, scale: float = 1.0, *, bias: bool = False,
                       mask: Tensor | None = None) -> Tensor:
    """``factor += scale · Σ_t [x_t; 1][x_t; 1]ᵀ`` (``bias=True``) or ``scale · Σ_t x_t x_tᵀ``.

    factor: (D, D) float32/float64, contiguous, D = d + bias, updated in place and returned
    (treated as symmetric: its lower triangle is accumulated and mirrored).  x: (..., d), any
    floating dtype, leading dims flattened into tokens.  mask: optional (...) bool or 0/1 over
    the same leading dims; rows where it is 0 are skipped (and not counted in the bias corner).
    """
    op = "kfac_factor_update"
    check_tensors(op, {"factor": factor, "x": x})
    if x.dim() < 1:
        raise ValueError(f"{op}: x must be (..., features), got shape {shape_of(x)}")
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: x must be floating point, got {x.dtype}")
    if factor.dtype not in _FACTOR_DTYPES:
        raise RuntimeError(f"{op}: factor must be float32 or float64, got {factor.dtype}")
    d = x.shape[-1]
    D = d + int(bias)
    if factor.shape != (D, D):
        raise ValueError(f"{op}: factor must be ({D}, {D}) for x with {d} features"
                         f"{' plus the bias column' if bias else ''}, got {shape_of(factor)}")
    if not factor.is_contiguous():
        raise ValueError(f"{op}: factor must be contiguous (it is updated in place)")
    x2 = x.reshape(-1, d)
    m2 = None
    if mask is not None:
        check_tensors(op, {"mask": mask})
        if tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"{op}: mask must have x's leading shape {tuple(x.shape[:-1])}, got {shape_of(mask)}")
        m2 = mask.reshape(-1)
    return _ops.kfac_factor_update_(factor, x2, float(scale), bool(bias), m2)


def _damping_vector(op: str, damping, L: int, like: Tensor) -> Tensor:
    if isinstance(damping, Tensor):
        d = damping.to(device=like.device, dtype=like.dtype)
        if d.dim() == 0:
            d = d.expand(L)
        if tuple(d.shape) != (L,):
            raise ValueError(f"{op}: damping must be a float or a (L,) = ({L},) tensor, got {shape_of(damping)}")
        return d.contiguous()
    damping = float(damping)
    if damping < 0 or damping != damping:
        raise ValueError(f"{op}: damping must be >= 0, got {damping}")
    return torch.full((L,), damping, dtype=like.dtype, device=like.device)


def kfac_damped_inverse(factors: Tensor, damping, *, method: str = "auto", names: Sequence[str] | None = None,
                        return_fell_back: bool = False):
    """``(F_l + λ_l I)⁻¹`` for a batch of SPD factors (L, n, n) in one call.

    damping: a float or a (L,) tensor (e.g. from :func:`kfac_pi_damping`).  method: ``"auto"``,
    ``"cholesky"`` (batched potrf/potri) or ``"schur"`` (recursive Schur-complement block
    inversion on batched GEMMs).  A factor whose solve fails (not positive definite after
    damping in its dtype, or a non-finite result) is redone in float64; if that fails too a
    ``RuntimeError`` names it (``names``: one label per factor, e.g. layer names).  Returns the
    inverses in the factors' dtype, and with ``return_fell_back`` also a bool (L,) tensor.
    """
    op = "kfac_damped_inverse"
    _check_factors(op, factors, names)
    if method not in INVERSE_METHODS:
        raise ValueError(f"{op}: method must be one of {sorted(INVERSE_METHODS)}, got {method!r}")
    L = factors.shape[0]
    dv = _damping_vector(op, damping, L, factors)
    if bool((dv < 0).any()):
        raise ValueError(f"{op}: damping must be >= 0")
    inv, status = _ops.kfac_damped_inverse(factors, dv, INVERSE_METHODS[method])
    failed = (status == 2).nonzero().flatten().tolist()
    if failed:
        raise RuntimeError(f"{op}: {_describe(names, failed)} could not be inverted even in float64: the factor is "
                           "not finite or not positive definite after damping (increase damping)")
    return (inv, status == 1) if return_fell_back else inv


def kfac_pi_damping(A: Tensor, S: Tensor, damping: float, *, min_damping: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Per-layer π-split damping (Martens & Grosse 2015 §6.3; curvlinops' ``use_heuristic_damping``).

    A: (L, a, a), S: (L, s, s) (the two factors of each layer, batched).  Returns two (L,)
    tensors ``(max(π√λ, min_damping), max(√λ/π, min_damping))`` with ``π = sqrt((tr A/a) /
    (tr S/s))``, to add to A's and S's diagonals (pass them to :func:`kfac_damped_inverse`).  A
    layer whose mean eigenvalues are not positive (tr A < 0 or tr S <= 0) gets ``(λ, λ)``, as in
    curvlinops 3.0.1.
    """
    op = "kfac_pi_damping"
    check_tensors(op, {"A": A, "S": S})
    if A.dim() != 3 or S.dim() != 3 or A.shape[0] != S.shape[0]:
        raise ValueError(f"{op}: A and S must be batches (L, a, a) and (L, s, s) of one length L, "
                         f"got {shape_of(A)} and {shape_of(S)}")
    if not damping >= 0:
        raise ValueError(f"{op}: damping must be >= 0, got {damping}")
    ta = A.diagonal(0, 1, 2).sum(1) / A.shape[1]
    ts = (S.diagonal(0, 1, 2).sum(1) / S.shape[1]).to(ta.dtype)
    ok = (ta >= 0) & (ts > 0)
    pi = torch.sqrt(torch.where(ok, ta, torch.ones_like(ta)) / torch.where(ok, ts, torch.ones_like(ts)))
    root = damping ** 0.5
    dA = torch.where(ok, (pi * root).clamp_min(min_damping), torch.full_like(ta, damping))
    dS = torch.where(ok, (root / pi).clamp_min(min_damping), torch.full_like(ta, damping))
    return dA, dS.to(S.dtype)


def kfac_eigh(factors: Tensor, *, neg_tol: float | None = None, names: Sequence[str] | None = None):
    """Batched symmetric eigendecomposition with a float64 retry.

    factors: (L, n, n) float32/float64 (lower triangle read).  Returns ``(eigenvalues (L, n)
    ascending, eigenvectors (L, n, n) in columns, fell_back (L,) bool)``.  A factor falls back to
    float64 when its solve throws (non-convergence), its result is not finite, or an eigenvalue
    lies below ``-neg_tol · max|λ|`` (default ``4 · n · eps`` of the factors' dtype: what a PSD
    factor's own rounding can produce).  A non-finite factor, or one still failing in float64,
    raises a ``RuntimeError`` naming it.
    """
    op = "kfac_eigh"
    _check_factors(op, factors, names)
    if neg_tol is not None and not neg_tol >= 0:
        raise ValueError(f"{op}: neg_tol must be >= 0, got {neg_tol}")
    w, v, status = _ops.kfac_eigh(factors, -1.0 if neg_tol is None else float(neg_tol))
    failed = (status == 2).nonzero().flatten().tolist()
    if failed:
        bad_input = [i for i in failed if not bool(torch.isfinite(factors[i]).all())]
        why = ("contains NaN or Inf" if len(bad_input) == len(failed) else
               "has no valid eigendecomposition even in float64 (not finite, or not positive semi-definite)")
        raise RuntimeError(f"{op}: {_describe(names, failed)} {why}")
    return w, v, status == 1


def kfac_precondition(grads: Tensor, QS: Tensor, QA: Tensor, *, eigenvalues: Tensor | None = None,
                      eigenvalues_S: Tensor | None = None, eigenvalues_A: Tensor | None = None,
                      damping: float = 0.0) -> Tensor:
    """``Q_S((Q_Sᵀ G Q_A) ⊘ (Λ + λ))Q_Aᵀ`` batched over same-shape layers.

    grads (L, out, in); QS (L, out, out), QA (L, in, in) eigenvectors in columns; either
    ``eigenvalues`` (L, out, in) (EK-FAC's corrected eigenvalues) or ``eigenvalues_S`` (L, out)
    and ``eigenvalues_A`` (L, in) (K-FAC: Λ = e_S e_Aᵀ).  All one dtype and device.  For
    ``damping > 0`` this is ``(S ⊗ A + λ I)⁻¹ vec(G)`` exactly (K-FAC) or its EK-FAC analogue.
    """
    op = "kfac_precondition"
    check_tensors(op, {"grads": grads, "QS": QS, "QA": QA})
    if (eigenvalues is None) == (eigenvalues_S is None and eigenvalues_A is None):
        raise ValueError(f"{op}: pass either eigenvalues (EK-FAC, (L, out, in)) or eigenvalues_S and "
                         "eigenvalues_A (K-FAC), not both or neither")
    if eigenvalues is None and (eigenvalues_S is None or eigenvalues_A is None):
        raise ValueError(f"{op}: K-FAC preconditioning needs both eigenvalues_S and eigenvalues_A")
    if grads.dim() != 3:
        raise ValueError(f"{op}: grads must be (L, out, in), got {shape_of(grads)}")
    if not damping >= 0:
        raise ValueError(f"{op}: damping must be >= 0, got {damping}")
    return _ops.kfac_precondition(grads, QS, QA, eigenvalues, eigenvalues_S, eigenvalues_A, float(damping))


# ---- fake kernels (shapes only) --------------------------------------------------------------

@torch.library.register_fake("structops::kfac_factor_update_")
def _fake_factor_update(factor, x, scale=1.0, bias=False, mask=None):
    return factor


@torch.library.register_fake("structops::kfac_damped_inverse")
def _fake_damped_inverse(factors, damping, method=0):
    return torch.empty_like(factors), factors.new_empty((factors.shape[0],), dtype=torch.int8)


@torch.library.register_fake("structops::kfac_eigh")
def _fake_eigh(factors, neg_tol=-1.0):
    L, n = factors.shape[0], factors.shape[1]
    return (factors.new_empty((L, n)), torch.empty_like(factors),
            factors.new_empty((L,), dtype=torch.int8))


@torch.library.register_fake("structops::kfac_precondition")
def _fake_precondition(grads, QS, QA, lam, eS, eA, damping):
    return torch.empty_like(grads)
