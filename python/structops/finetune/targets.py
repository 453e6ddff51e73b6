"""peft 0.21.2's target-module rules (``peft.tuners.tuners_utils.check_target_module_exists`` and
``_maybe_include_all_linear_layers``), reimplemented so ``structops.adapt`` selects exactly the
modules ``get_peft_model`` would (tested against peft's own functions on a model zoo).

* ``target_modules`` a ``str``: ``re.fullmatch(pattern, full_module_name)``;
* a list / set / tuple: the name equals an entry or ends with ``"." + entry``;
* ``"all-linear"`` (any case): every ``nn.Linear`` except the output head — the module
  ``model.get_output_embeddings()`` returns, when the model defines it (Hugging Face models).
  Like peft, a plain ``nn.Module`` has no head rule: pass ``exclude_modules`` for it;
* ``exclude_modules``: the same str / list rules; an excluded name is never selected.

Only ``nn.Linear`` modules can be adapted: a selected module of another type raises ``ValueError``
naming it (as peft does), instead of being skipped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

__all__ = ["ALL_LINEAR", "matches", "is_excluded", "select_targets"]

ALL_LINEAR = "all-linear"


def _check_rule(arg: str, rule) -> None:
    if rule is None or isinstance(rule, str):
        return
    if not isinstance(rule, Iterable) or not all(isinstance(r, str) for r in rule):
        raise ValueError(f"adapt: {arg} must be a regex str, a list of module-name suffixes or None, got {rule!r}")


def _rule_matches(rule, name: str) -> bool:
    if isinstance(rule, str):
        return re.fullmatch(rule, name) is not None
    return name in rule or any(name.endswith(f".{r}") for r in rule)


def is_excluded(exclude_modules, name: str) -> bool:
    return bool(exclude_modules) and _rule_matches(exclude_modules, name)


def matches(target_modules, name: str, exclude_modules=None) -> bool:
    """peft's ``check_target_module_exists`` for target_modules / exclude_modules."""
    if is_excluded(exclude_modules, name):
        return False
    return _rule_matches(target_modules, name)


def _output_head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return set()
    return {n for n, m in model.named_modules() if m is head}


def select_targets(model: nn.Module, target_modules, exclude_modules=None) -> list[str]:
    """The names (``named_modules`` order) of the modules ``adapt`` replaces.  Raises ValueError
    when nothing matches or a matched module is not an ``nn.Linear``."""
    if target_modules is None:
        raise ValueError("adapt: target_modules is required (a regex str, a list of name suffixes, or 'all-linear')")
    _check_rule("target_modules", target_modules)
    _check_rule("exclude_modules", exclude_modules)
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        heads = _output_head_names(model)
        target_modules = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - heads
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
    names = []
    for name, mod in model.named_modules():
        if not name or not matches(target_modules, name, exclude_modules):
            continue
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"adapt: target module {name!r} is a {type(mod).__name__}; only torch.nn.Linear modules "
                             f"can be adapted (narrow target_modules or add it to exclude_modules)")
        names.append(name)
    if not names:
        raise ValueError(f"adapt: target_modules={target_modules!r} matched no module of {type(model).__name__} "
                         f"(module names look like {[n for n, _ in model.named_modules() if n][:5]})")
    return names
