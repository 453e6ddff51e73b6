"""HazyResearch/fly's Monarch API with fly's exact signatures and return values, on structops'
kernels.  Replace ``from src.ops.blockdiag_multiply import blockdiag_multiply`` (and friends) by
``from structops.compat.fly import blockdiag_multiply``; checkpoints load unchanged (the layers
keep fly's parameter names ``blkdiag1``/``blkdiag2``/``weight``/``bias``).

* ``blockdiag_multiply(x, weight)``: x (..., nblocks*p), weight (nblocks, q, p) -> (..., nblocks*q).
* ``block_butterfly_multiply(twiddle, input, increasing_stride=True, output_size=None)``: fly's
  block butterfly (Pixelfly), twiddle (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs).
* ``blockdiag_butterfly_multiply(x, w1_bfly, w2_bfly)``: x (..., k*p), w1 (k, q, p), w2 (l, s, r),
  k*q == l*r -> (..., l*s).
* ``blockdiag_butterfly_project(M, sizes=None) -> (w1_bfly, w2_bfly)``: square M (n, n);
  ``sizes=(s0, s1)`` with s0*s1 = n (default: the factor pair closest to sqrt(n), larger first);
  w1 (s0, s1, s1), w2 (s1, s0, s0) with ``blockdiag_butterfly_multiply(x, w1, w2) ~ x @ M.T``
  (exact when M is Monarch).  Real or complex M.
* ``MonarchLinear``, ``BlockdiagLinear``: ``(in_features, out_features, bias=True, device=None,
  dtype=None, *, nblocks=4, ...)``.

Deliberate differences (supersets, never a different result):
* Under ``torch.autocast`` fly hard-casts the inputs to float16 (m2/torch-structured: bfloat16);
  structops casts to the *active* autocast dtype (``torch.get_autocast_dtype``), so
  ``autocast(dtype=torch.float16)`` reproduces fly exactly and bf16 autocast stays bf16.
* fly raises ``TypeError`` for a 1-D x in ``blockdiag_butterfly_multiply``; structops accepts it.
* Both ops run under ``torch.compile(fullgraph=True)`` (fly's break the graph) and on bf16/fp16.
* Complex inputs (complex64/complex128) are supported on CPU; on CUDA they raise a clear error
  (fly runs them with cuBLAS).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..nn import BlockdiagLinear, MonarchLinear
from ..ops import block_butterfly_multiply as _block_butterfly_multiply
from ..ops import blockdiag_matmul, monarch_matmul
from ..projection import fly_default_sizes, monarch_project

__all__ = [
    "block_butterfly_multiply",
    "blockdiag_multiply",
    "blockdiag_butterfly_multiply",
    "blockdiag_butterfly_project",
    "MonarchLinear",
    "BlockdiagLinear",
]


def block_butterfly_multiply(twiddle: Tensor, input: Tensor, increasing_stride: bool = True, output_size=None) -> Tensor:
    """fly's block_butterfly_multiply (Pixelfly): twiddle (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs),
    input (batch, nstacks, in_size) -> (batch, nstacks, output_size or bs*n)."""
    return _block_butterfly_multiply(twiddle, input, increasing_stride, output_size)


def blockdiag_multiply(x: Tensor, weight: Tensor) -> Tensor:
    """fly's ``blockdiag_multiply``: ``y = x @ BD(weight).T``."""
    return blockdiag_matmul(x, weight)


def blockdiag_butterfly_multiply(x: Tensor, w1_bfly: Tensor, w2_bfly: Tensor) -> Tensor:
    """fly's ``blockdiag_butterfly_multiply``: ``y = x @ (P_out BD(w2) P_mid BD(w1)).T``."""
    return monarch_matmul(x, w1_bfly, w2_bfly)


def blockdiag_butterfly_project(M: Tensor, sizes: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """fly's ``blockdiag_butterfly_project``: the Frobenius-optimal Monarch factors of a square
    matrix M (rank-1 SVD of every sub-block).  Returns ``(w1_bfly, w2_bfly)``."""
    if not isinstance(M, Tensor) or M.dim() != 2:
        raise ValueError(f"blockdiag_butterfly_project: M must be a 2-D tensor, got "
                         f"{tuple(M.shape) if isinstance(M, Tensor) else type(M).__name__}")
    m, n = M.shape
    if m != n:
        # fly raises NotImplementedError here; structops.monarch_project handles rectangular M.
        raise NotImplementedError(
            f"blockdiag_butterfly_project: M must be square, got shape {(m, n)}; use "
            "structops.monarch_project(M, nblocks1, nblocks2) for rectangular matrices"
        )
    if sizes is None:
        sizes = fly_default_sizes(n)
    if len(sizes) != 2 or math.prod(sizes) != n:
        raise ValueError(f"blockdiag_butterfly_project: sizes must be two ints whose product is n={n}, got {sizes!r}")
    s0, s1 = int(sizes[0]), int(sizes[1])
    w1, w2, _ = monarch_project(M, s0, s1, n)  # w1 (s0, s1, s1), w2 (s1, s0, s0)
    return w1, w2
