"""torch_butterfly's API (HazyResearch/butterfly, and torch-structured's ``butterfly`` copy) with
its exact signatures, on structops' fused kernels.  Replace ``import torch_butterfly`` by
``from structops.compat import torch_butterfly``; checkpoints load unchanged (the layers keep
the parameter names ``twiddle`` / ``bias`` and their shapes).

* ``butterfly_multiply(twiddle, input, increasing_stride=True, output_size=None)``:
  twiddle (nstacks, nblocks, log_n, n/2, 2, 2), input (batch, nstacks, input_size) ->
  (batch, nstacks, output_size).
* ``butterfly_multiply_torch``: the pure-torch reference (``structops.reference``).
* ``Butterfly``, ``ButterflyUnitary``, ``ButterflyBmm`` (``structops.nn``), ``special``
  (``structops.butterfly.special``), ``Diagonal``, ``FixedPermutation``,
  ``bitreversal_permutation``.

Deliberate differences (supersets, never a different result): bfloat16/float16 run (computed in
float32 on the CPU, float32-accumulated on CUDA) where torch_butterfly has no kernel;
``torch.compile(fullgraph=True)`` traces the op (fake kernel); bad arguments raise
``ValueError``/``RuntimeError`` naming the argument instead of ``AssertionError``.
"""

from __future__ import annotations

from ..butterfly import special  # noqa: F401
from ..butterfly.modules import Diagonal, FixedPermutation, bitreversal_permutation  # noqa: F401
from ..nn.butterfly import Butterfly, ButterflyBmm, ButterflyUnitary  # noqa: F401
from ..ops.butterfly import butterfly_multiply as _butterfly_multiply
from ..reference import butterfly_multiply as butterfly_multiply_torch  # noqa: F401

__all__ = [
    "butterfly_multiply",
    "butterfly_multiply_torch",
    "Butterfly",
    "ButterflyUnitary",
    "ButterflyBmm",
    "Diagonal",
    "FixedPermutation",
    "bitreversal_permutation",
    "special",
]


def butterfly_multiply(twiddle, input, increasing_stride=True, output_size=None):
    """torch_butterfly.butterfly_multiply (same positional/keyword names)."""
    return _butterfly_multiply(twiddle, input, increasing_stride, output_size)
