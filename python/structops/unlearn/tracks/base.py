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


class Track:
    name = "base"
    scenarios: tuple = ()
    objective = None

    def setup(self, scenario: str, split_seed: int) -> Setup:  # pragma: no cover - interface
        raise NotImplementedError

    def new_model(self):  # pragma: no cover - interface
        raise NotImplementedError

    def train(self, data: tuple, seed: int):  # pragma: no cover - interface
        raise NotImplementedError

    def evaluate(self, model, setup: Setup, original=None) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def grid(self, method: str) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError
