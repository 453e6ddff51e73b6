"""What a benchmark track provides to the protocol (structops.unlearn.protocol).

A track is a data set, a model family and a training recipe, deterministic given seeds:

* ``scenarios`` — names of forget scenarios;
* ``setup(scenario, split_seed)`` — a :class:`Setup`: the training data of the original models,
  the forget / retain / test sets (retain = train minus forget), a validation set for tuning
  (disjoint from test) and any extra evaluation sets; split_seed 0 is the tuning forget set,
  1, 2, ... are fresh ones, **disjoint from split 0 and from each other by construction** (each
  split is its own chunk of one fixed permutation; ``forget_ids`` names them, and the protocol
  asserts disjointness);
* ``new_model()`` / ``train(data, seed)`` — model construction and training;
* ``evaluate(model, setup, original=None)`` — per-model measurements (a dict of floats and
  per-point arrays; see the tracks);
* ``grid(method)`` — the hyperparameter configurations the protocol may try for a method (the
  same budget for every method);
* ``objective`` — the loss the methods use;
* ``train_variant(data, seed, variant)`` — the originals some methods assume (optional; the
  protocol falls back to the ordinary original, and records it, where a track has none):
  ``"sparse-<rate>"`` Unlearn-Sparse's OMP with rewind (train, prune the ``rate`` smallest-|w|
  weights outside the head, rewind the survivors to the initialisation, retrain with the mask
  fixed) and ``"gr-<alpha>"`` IAU's gradient-restriction training (loss + alpha·Σ‖∇θ loss‖₂);
  ``variants`` lists the prefixes a track supports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

__all__ = ["Setup", "Track"]


@dataclass
class Setup:
    scenario: str
    split_seed: int
    train: tuple            # training data of the originals (forget + retain)
    forget: tuple
    retain: tuple
    test: tuple
    extra: dict = field(default_factory=dict)  # track-specific evaluation sets
    key: str = ""           # cache key of this (scenario, split)
    val: tuple | None = None  # tuning validation set, disjoint from `test` (the reported one)
    forget_ids: list = field(default_factory=list)  # which examples (Track A) / authors (Track B) are forgotten


class Track(ABC):
    name = "base"
    scenarios: tuple = ()
    objective = None
    # attributes a track rebuilds on first use (its loaded or generated data), left out when it
    # is pickled: every protocol job carries the track, and Track B's facts alone are 2.6 MB
    # and ~90 ms to unpickle per job; a worker rebuilds them once
    transient_attrs: tuple = ()

    def __getstate__(self):
        state = dict(vars(self))
        for name in self.transient_attrs:
            if name in state:
                state[name] = None
        return state

    @abstractmethod
    def setup(self, scenario: str, split_seed: int) -> Setup:
        """The forget/retain/test sets of one (scenario, split)."""

    @abstractmethod
    def new_model(self):
        """An untrained model (used to load cached state dicts)."""

    @abstractmethod
    def train(self, data: tuple, seed: int):
        """A model trained on ``data``, deterministic given ``seed``."""

    @abstractmethod
    def evaluate(self, model, setup: Setup, original=None, probes: bool = False) -> dict:
        """Per-model measurements: floats and per-point arrays (``margins_*`` for KLoM)."""

    def tuning_evaluate(self, model, setup: Setup, original=None) -> dict:
        """The measurements the protocol's tuning reads (structops.unlearn.protocol.TUNING_READS:
        accuracies, the margins KLoM scores, retain KL), each equal to ``evaluate``'s value; a
        track whose full evaluation is expensive overrides this to skip the rest."""
        return self.evaluate(model, setup, original=original, probes=False)

    variants: tuple = ()

    def supports_variant(self, variant: str) -> bool:
        return variant == "dense" or variant.split("-", 1)[0] in self.variants

    def train_variant(self, data: tuple, seed: int, variant: str, dense=None):
        """A model of ``variant`` trained on ``data`` (see the module doc); ``dense``, when given,
        is ``train(data, seed)`` already trained (the protocol passes the cached one)."""
        if variant == "dense":
            return self.train(data, seed)
        raise NotImplementedError(f"track {self.name} has no {variant!r} originals (supports {self.variants})")

    @staticmethod
    def parse_variant(variant: str) -> tuple[str, float]:
        kind, _, value = variant.partition("-")
        if kind not in ("sparse", "gr") or not value:
            raise ValueError(f"unknown original variant {variant!r}: expected 'dense', 'sparse-<rate>' or 'gr-<alpha>'")
        return kind, float(value)

    @abstractmethod
    def grid(self, method: str) -> list[dict]:
        """Hyperparameter configurations the protocol may try for ``method``."""

    def recipe(self) -> dict:
        """Everything that decides how a model of this track is trained, for the model cache key
        (structops.unlearn.protocol): the track's public settings, and the source code of its
        training and model code (any edit there invalidates cached models)."""
        import inspect
        import sys

        import torch

        def source(module_name: str):
            mod = sys.modules.get(module_name)
            try:
                return inspect.getsource(mod) if mod is not None else None
            except (OSError, TypeError):
                return None

        settings = {k: repr(v) for k, v in sorted(vars(self).items()) if not k.startswith("_")}
        with torch.random.fork_rng():  # building the model draws its init: keep the caller's RNG
            model_module = type(self.new_model()).__module__
        modules = [c.__module__ for c in type(self).__mro__ if c not in (Track, object) and c.__module__ != "abc"]
        sources = {m: src for m in dict.fromkeys(modules + [model_module]) if (src := source(m)) is not None}
        return {"track": type(self).__name__, "settings": settings, "sources": sources}
