"""Upstream-compatible entry points: the call forms of the packages our users run today.

* ``structops.compat.fly``: HazyResearch/fly (and m2 / torch-structured copies of its Monarch
  code): ``blockdiag_multiply``, ``blockdiag_butterfly_multiply``,
  ``blockdiag_butterfly_project``, ``MonarchLinear``, ``BlockdiagLinear``.
* ``structops.compat.torch_butterfly``: torch_butterfly's ``Butterfly`` layers and transforms.
* ``structops.compat.peft``: peft 0.21.2 RandLoRA / VeRA: ``accelerate`` (fused forward in place),
  ``save_pretrained`` (shared bases stored once).
"""

from . import fly, peft  # noqa: F401  (peft itself is imported lazily)

__all__ = ["fly", "peft"]
