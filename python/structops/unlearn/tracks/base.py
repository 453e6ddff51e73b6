"""What a benchmark track provides to the protocol (structops.unlearn.protocol).

A track is a data set, a model family and a training recipe, deterministic given seeds:

* ``scenarios`` — names of forget scenarios;
* ``setup(scenario, split_seed)`` — a :class:`Setup`: the training data of the original models,
  the forget / retain / test sets (retain = train minus forget) and any extra evaluation sets;
  split_seed 0 is the tuning forget set, 1, 2, ... are fresh ones;
* ``new_model()`` / ``train(data, seed)`` — model construction and training;
* ``evaluate(model, setup, original=None)`` — per-model measurements (a dict of floats and
  per-point arrays; see the tracks);
* ``grid(method)`` — the hyperparameter configurations the protocol may try for a method (the
  same budget for every method);
* ``objective`` — the loss the methods use.
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


class Track(ABC):
    name = "base"
    scenarios: tuple = ()
    objective = None

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

    @abstractmethod
    def grid(self, method: str) -> list[dict]:
        """Hyperparameter configurations the protocol may try for ``method``."""
