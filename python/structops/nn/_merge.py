"""Exact unmerge for adapter layers that merge into a floating-point base weight.

``W0 + dW - dW`` is not ``W0`` in floating point (peft's ``unmerge`` leaves a rounding residue
after every merge/unmerge cycle).  ``stash_base_weight(layer)`` keeps a copy of W0 in the
non-persistent buffer ``_unmerged_base_weight`` (it follows ``.to()``, is never saved) before a
merge writes into it; ``restore_base_weight(layer)`` copies it back bit for bit and drops the
copy.  The cost is one copy of W0 per merged layer while it is merged; ``merge_and_unload``-style
exports that never unmerge do not stash.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["stash_base_weight", "restore_base_weight", "has_stash"]

_STASH = "_unmerged_base_weight"


def stash_base_weight(layer: nn.Module, weight: Tensor, copy: bool = True) -> None:
    """Keep a copy of ``weight`` (W0, before the merge writes into it) on ``layer``;
    ``copy=False`` when ``weight`` already is a private copy."""
    layer.register_buffer(_STASH, weight.detach().clone() if copy else weight.detach(), persistent=False)


def has_stash(layer: nn.Module) -> bool:
    return getattr(layer, _STASH, None) is not None


def restore_base_weight(layer: nn.Module, weight: Tensor) -> None:
    """Copy the stashed W0 back into ``weight`` (in place) and drop the stash."""
    weight.data.copy_(getattr(layer, _STASH))
    layer.register_buffer(_STASH, None, persistent=False)
