"""Dense -> Monarch projection in the layout of :func:`structops.monarch_matmul`.

For ``M = P_out BD(w2) P_mid BD(w1)`` (shape m x n, m = l*s, n = k*p, k*q = l*r) entry
``M[sg*l + lm, i*p + c]`` only involves input block i and output block lm, and equals

    sum over a in A(i, lm) of  w2[lm, sg, (i*q + a) // l] * w1[i, a, c],
    A(i, lm) = {a < q : (i*q + a) % l == lm}.

So the (s x p) sub-block W_{lm,i}[sg, c] = W[sg*l + lm, i*p + c] of a Monarch matrix has rank
<= |A(i, lm)|, and different sub-blocks use disjoint parameters.  The Frobenius-optimal
projection of any W is therefore a truncated SVD of every sub-block (Eckart-Young, block by
block) — the Monarch paper's Algorithm 1, generalised here to rectangular W, any block counts
and any intermediate size.  In the square case with k = q = p = l = s = r = sqrt(n) every rank
is 1, exactly fly's ``blockdiag_butterfly_project``.  All k*l SVDs run as one batched call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["monarch_project", "MonarchProjection", "fly_default_sizes"]


class MonarchProjection(NamedTuple):
    w1: Tensor  # (k, q, p)
    w2: Tensor  # (l, s, r)
    rel_err: float  # ||W - M||_F / ||W||_F


def fly_default_sizes(n: int) -> tuple[int, int]:
    """fly's default: the factor pair (s0, s1) of n closest to sqrt(n), larger first."""
    s1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n // s1, s1


def monarch_project(
    W: Tensor, nblocks1: int | None = None, nblocks2: int | None = None, mid: int | None = None
) -> MonarchProjection:
    """Frobenius-optimal Monarch factors of a dense (m, n) matrix ``W`` (``y = x @ W.T``).

    Args:
        W: (m, n) dense weight, m = out features, n = in features; real or complex (the DFT,
            input-permuted, is exactly Monarch).
        nblocks1: k, number of blocks of w1 (must divide n).  Default: for square W fly's sizes
            (w1 (s0, s1, s1), w2 (s1, s0, s0) with s0*s1 = n, s0 >= s1 closest to sqrt(n)).
        nblocks2: l, number of blocks of w2 (must divide m).  Default: nblocks1.
        mid: intermediate size k*q = l*r (divisible by k and l).  Default: n if m == n else
            min(m, n).
    Returns:
        ``MonarchProjection(w1, w2, rel_err)`` with w1 (k, q, p), w2 (l, s, r) in W's dtype and
        device, ready for ``structops.monarch_matmul(x, w1, w2)``.
    """
    if not isinstance(W, Tensor) or W.dim() != 2:
        raise ValueError(f"monarch_project: W must be a 2-D (out_features, in_features) tensor, got "
                         f"{tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__}")
    if not (W.is_floating_point() or W.is_complex()):
        raise ValueError(f"monarch_project: W must be a floating-point or complex tensor, got {W.dtype}")
    m, n = W.shape
    if nblocks1 is None and nblocks2 is None:
        if m != n:
            raise ValueError("monarch_project: nblocks1 is required for a rectangular W "
                             f"(got shape {(m, n)}); fly's default sizes exist only for square W")
        nblocks1, nblocks2 = fly_default_sizes(n)
        mid = n if mid is None else mid
    elif nblocks2 is None:
        nblocks2 = nblocks1
    elif nblocks1 is None:
        nblocks1 = nblocks2
    k, l = int(nblocks1), int(nblocks2)
    if k <= 0 or n % k:
        raise ValueError(f"monarch_project: nblocks1={k} must be a positive divisor of in_features n={n}")
    if l <= 0 or m % l:
        raise ValueError(f"monarch_project: nblocks2={l} must be a positive divisor of out_features m={m}")
    if mid is None:
        mid = n if m == n else min(m, n)
    if mid <= 0 or mid % k or mid % l:
        raise ValueError(f"monarch_project: mid={mid} (the intermediate size k*q = l*r) must be divisible "
                         f"by nblocks1={k} and nblocks2={l}; pass mid= explicitly")
    p, s = n // k, m // l
    q, r = mid // k, mid // l

    # SVDs in double precision (complex128 for complex W); 16-bit W in float32.
    if W.is_complex():
        work = torch.complex128
    else:
        work = torch.float64 if W.dtype in (torch.float32, torch.float64) else torch.float32
    Wd = W.detach().to(work)
    # blocks[lm, i] = W_{lm,i} (s x p)
    blocks = Wd.reshape(s, l, k, p).permute(1, 2, 0, 3)
    U, S, Vh = torch.linalg.svd(blocks, full_matrices=False)  # (l,k,s,K) (l,k,K) (l,k,K,p)
    K = S.shape[-1]

    j = torch.arange(mid, device=W.device)
    i, a = j // q, j % q
    lm, rh = j % l, j // l
    t = a // l  # rank slot of (i, a) within sub-block (lm, i)
    valid = t < K
    tc = t.clamp(max=K - 1)
    sq = (S[lm, i, tc].clamp_min(0).sqrt() * valid.to(S.dtype)).to(work)  # (mid,)
    w1 = (sq[:, None] * Vh[lm, i, tc, :]).reshape(k, q, p)
    w2 = torch.zeros(l, s, r, dtype=work, device=W.device)
    w2[lm, :, rh] = sq[:, None] * U[lm, i, :, tc]

    kept = torch.zeros_like(S)
    kept[lm[valid], i[valid], t[valid]] = 1
    total = Wd.abs().pow(2).sum()
    resid = (S.pow(2) * (1 - kept)).sum().clamp_min(0)
    rel = float((resid / total).sqrt()) if total > 0 else 0.0
    return MonarchProjection(w1.to(W.dtype), w2.to(W.dtype), rel)
