"""Butterfly constructions beyond the op and the layers (torch_butterfly's module layout).

* ``structops.butterfly.special``: exact transforms as modules: ``fft``, ``ifft``, ``hadamard``,
  ``dct``, ``dst``, ``circulant``, ``toeplitz`` (torch_butterfly.special's signatures).
* ``structops.butterfly.modules``: ``FixedPermutation``, ``Diagonal``, ``Real2Complex``,
  ``Complex2Real`` and ``bitreversal_permutation``.
* ``python -m structops.butterfly.learn_transform``: recover the DFT (or Hadamard/DCT) by
  gradient descent on butterfly parameters (Dao et al. 2019).

The layers themselves are ``structops.nn.Butterfly`` / ``ButterflyUnitary`` / ``ButterflyBmm``.
"""

from . import modules, special  # noqa: F401
from .modules import Complex2Real, Diagonal, FixedPermutation, Real2Complex, bitreversal_permutation

__all__ = ["special", "modules", "FixedPermutation", "Diagonal", "Real2Complex", "Complex2Real",
           "bitreversal_permutation"]
