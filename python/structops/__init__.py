"""structops: fast structured-matrix kernels for PyTorch.

    import structops
    y = structops.monarch_matmul(x, w1, w2)        # fly's blockdiag_butterfly_multiply semantics
    y = structops.blockdiag_matmul(x, w)            # fly's blockdiag_multiply semantics
    y = structops.butterfly_multiply(twiddle, x)    # torch_butterfly's butterfly_multiply
    layer = structops.nn.MonarchLinear(768, 3072, nblocks=4)
    w1, w2, rel_err = structops.monarch_project(W, nblocks1, nblocks2)
    from structops.compat.fly import blockdiag_butterfly_multiply   # fly's call forms
    model = structops.adapt(model, "lora", target_modules="all-linear")   # peft-style adapters

Operators are registered as ``torch.ops.structops.*`` (CPU kernels always; CUDA kernels when
the extension was built with CUDA), with autograd, fake (meta) kernels for torch.compile, and
autocast support.
"""

import torch  # noqa: F401  (must be imported first: _C links against libtorch/libc10)

from . import _C  # noqa: F401  registers torch.ops.structops.*
from . import butterfly, compat, finetune, nn, randbasis, reference  # noqa: F401
from .finetune import adapt, adapted_modules, export_lora, load_adapter, save_adapter
from .ops import (block_butterfly_multiply, blockdiag_matmul, butterfly_multiply, kfac_damped_inverse, kfac_eigh,
                  kfac_factor_update, kfac_pi_damping, kfac_precondition, monarch_matmul, randlora_linear,
                  sparse_lowrank_linear, vera_linear)
from .projection import monarch_project

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """Versions, CUDA archs and CPU instruction-set variants of this build."""
    info = dict(_C.build_info())
    info["cpu_isa_in_use"] = _C.cpu_isa()
    return info


__all__ = [
    "blockdiag_matmul",
    "monarch_matmul",
    "butterfly_multiply",
    "block_butterfly_multiply",
    "randlora_linear",
    "vera_linear",
    "sparse_lowrank_linear",
    "kfac_factor_update",
    "kfac_damped_inverse",
    "kfac_pi_damping",
    "kfac_eigh",
    "kfac_precondition",
    "monarch_project",
    "adapt",
    "adapted_modules",
    "save_adapter",
    "load_adapter",
    "export_lora",
    "build_info",
    "nn",
    "butterfly",
    "randbasis",
    "compat",
    "reference",
    "finetune",
]
