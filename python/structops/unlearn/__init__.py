"""structops.unlearn — machine-unlearning methods with one calling convention, and an honest
evaluation harness that scores them against models retrained without the forget set.

    from structops import unlearn
    new = unlearn.ssd(model, forget=(xf, yf), retain=(xr, yr))              # returns a copy
    new = unlearn.npo(lm, forget, retain, objective=unlearn.CausalLM())     # token-level loss

Methods: finetune, gradient_ascent, grad_diff, npo, simnpo, ssd, l1_sparse,
prune_then_unlearn, iau, newton_step (exact GGN), kfade (K-FAC / EK-FAC Gauss-Newton steps;
``apply_update`` re-applies its stored update), representation_projection (MRP).
Metrics: structops.unlearn.metrics; robustness probes: structops.unlearn.probes;
benchmark tracks: ``python -m structops.unlearn.bench --track A|B``.
"""

from . import metrics, probes
from .data import check_unlearning_inputs
from .methods import (
    METHODS,
    apply_update,
    exact_ggn,
    finetune,
    grad_diff,
    gradient_ascent,
    iau,
    kfade,
    l1_sparse,
    newton_step,
    npo,
    prune_then_unlearn,
    representation_projection,
    simnpo,
    ssd,
)
from .objectives import CausalLM, Classification, Objective, as_objective

__all__ = [
    "METHODS",
    "CausalLM",
    "Classification",
    "Objective",
    "as_objective",
    "check_unlearning_inputs",
    "exact_ggn",
    "finetune",
    "grad_diff",
    "gradient_ascent",
    "iau",
    "l1_sparse",
    "metrics",
    "newton_step",
    "kfade",
    "apply_update",
    "npo",
    "probes",
    "prune_then_unlearn",
    "representation_projection",
    "simnpo",
    "ssd",
]
