"""Public operators, one module per kernel family (DESIGN §3).

* ``monarch``: ``blockdiag_matmul``, ``monarch_matmul`` (block-diagonal / Monarch).
* ``butterfly``: ``butterfly_multiply`` (torch_butterfly semantics), ``block_butterfly_multiply``
  (fly's block butterfly).
* ``randbasis``: ``randlora_linear``, ``vera_linear`` (peft 0.21.2 RandLoRA / VeRA maths).
* ``sparse_lowrank``: ``sparse_lowrank_linear`` (SLTrain: W0 + s B A + S, never materialised).
* ``kfac``: ``kfac_factor_update``, ``kfac_damped_inverse``, ``kfac_pi_damping``, ``kfac_eigh``,
  ``kfac_precondition`` (K-FAC linear algebra batched over same-shape layers).

Each family module defines the public functions, their fake (meta) kernels and autograd formulas
for ``torch.ops.structops.*``; ``_checks`` holds the argument checks they share.
"""

from .butterfly import block_butterfly_multiply, butterfly_multiply
from .kfac import kfac_damped_inverse, kfac_eigh, kfac_factor_update, kfac_pi_damping, kfac_precondition
from .monarch import blockdiag_matmul, monarch_matmul
from .randbasis import randlora_linear, vera_linear
from .sparse_lowrank import sparse_lowrank_linear

__all__ = ["blockdiag_matmul", "monarch_matmul", "butterfly_multiply", "block_butterfly_multiply",
           "randlora_linear", "vera_linear", "sparse_lowrank_linear", "kfac_factor_update",
           "kfac_damped_inverse", "kfac_pi_damping", "kfac_eigh", "kfac_precondition"]
