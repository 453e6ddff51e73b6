"""Upstream-compatible entry points: the call forms of the packages our users run today.

* ``structops.compat.fly``: HazyResearch/fly (and m2 / torch-structured copies of its Monarch
  code): ``blockdiag_multiply``, ``blockdiag_butterfly_multiply``,
  ``blockdiag_butterfly_project``, ``MonarchLinear``, ``BlockdiagLinear``.
"""

from . import fly  # noqa: F401

__all__ = ["fly"]
