"""Loss functions ("objectives") the unlearning methods and metrics share.

An objective turns a model and a batch into per-example quantities:

* ``nll(model, batch) -> (nll_sum (B,), n_scored (B,))`` — summed negative log-likelihood of the
  scored targets of each example and how many targets were scored;
* ``scored_logprobs(model, batch) -> (logp (N, C), targets (N,), example (N,))`` — log-softmax at
  every scored position, the target there and which example it belongs to (KL terms, margins,
  Min-K%).

Two objectives are provided:

* :class:`Classification` — batch ``(x, y)``, ``model(x)`` gives logits ``(B, C)``; one scored
  target per example.
* :class:`CausalLM` — batch ``(input_ids, labels)`` of shape ``(B, T)``; ``model(input_ids)``
  gives logits ``(B, T, V)`` (or an object with ``.logits``); ``labels[b, t]`` is the target
  *for position t* (already shifted), ``ignore_index`` (default -100) masks positions out, so a
  prompt/answer split is just a label mask.

Any callable ``loss_fn(model, batch) -> per-example loss (B,)`` can be passed where an objective
is expected; it is wrapped by :func:`as_objective` (methods that need distributions — KL
retain terms, NPO references, margins — then raise a clear error).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Objective", "Classification", "CausalLM", "as_objective", "LossFnObjective"]


def scored_rows(mask: Tensor) -> Tensor:
    """For a (B, T) scored mask: the row (example) index of each scored position, (mask.sum(),),
    in the row-major order of ``x[mask]``."""
    return torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]


def _logits(out) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


class Objective(ABC):
    """Base class; see the module docstring."""

    @abstractmethod
    def nll(self, model: nn.Module, batch) -> tuple[Tensor, Tensor]:
        """(summed NLL of the scored targets (B,), number of scored targets (B,))."""

    @abstractmethod
    def scored_logprobs(self, model: nn.Module, batch) -> tuple[Tensor, Tensor, Tensor]:
        """(log-softmax at every scored position (N, C), targets (N,), example index (N,))."""

    @abstractmethod
    def targets(self, batch) -> Tensor:
        """All scored targets of a batch, flattened."""

    def mean_nll(self, model: nn.Module, batch) -> Tensor:
        """Per-example NLL averaged over its scored targets, (B,)."""
        s, n = self.nll(model, batch)
        return s / n.clamp_min(1)



class Classification(Objective):
    """Cross-entropy of ``model(x)`` (B, C) against integer labels ``y`` (B,)."""

    def nll(self, model, batch):
        x, y = batch[0], batch[1]
        logits = _logits(model(x))
        loss = F.cross_entropy(logits, y, reduction="none")
        return loss, torch.ones_like(loss)

    def scored_logprobs(self, model, batch):
        x, y = batch[0], batch[1]
        logp = F.log_softmax(_logits(model(x)).float(), dim=-1)
        return logp, y, torch.arange(y.shape[0], device=y.device)

    def targets(self, batch):
        return batch[1]


class CausalLM(Objective):
    """Token-level cross-entropy of a causal LM; ``labels`` already aligned with the logits'
    positions, ``ignore_index`` positions are not scored (prompt, padding)."""

    def __init__(self, ignore_index: int = -100):
        self.ignore_index = ignore_index

    def nll(self, model, batch):
        ids, labels = batch[0], batch[1]
        mask = labels != self.ignore_index
        if getattr(model, "supports_scored_positions", False):
            # the model computes the scored positions' logits only (model(ids, scored=mask) ->
            # (mask.sum(), V), e.g. Track B's TinyLM): the same loss and gradients for a fraction
            # of the head and softmax work.  scored_logprobs keeps the full forward, so K-FAC's
            # layer hooks see every position as before.
            tok = F.cross_entropy(_logits(model(ids, scored=mask)), labels[mask], reduction="none")
            return tok.new_zeros(ids.shape[0]).index_add(0, scored_rows(mask), tok), mask.sum(1).to(tok.dtype)
        logits = _logits(model(ids))
        tok = F.cross_entropy(logits.transpose(1, 2), labels.masked_fill(~mask, 0), reduction="none")
        tok = tok * mask
        return tok.sum(1), mask.sum(1).to(tok.dtype)

    def scored_logprobs(self, model, batch):
        ids, labels = batch[0], batch[1]
        logits = _logits(model(ids))
        mask = labels != self.ignore_index
        logp = F.log_softmax(logits[mask].float(), dim=-1)
        example = scored_rows(mask)
        return logp, labels[mask], example

    def targets(self, batch):
        labels = batch[1]
        return labels[labels != self.ignore_index]


class LossFnObjective(Objective):
    """Wraps ``loss_fn(model, batch) -> per-example loss``; no distributions available."""

    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn

    def nll(self, model, batch):
        loss = self.loss_fn(model, batch)
        if loss.dim() != 1:
            raise ValueError(f"loss_fn must return per-example losses of shape (B,), got {tuple(loss.shape)}")
        return loss, torch.ones_like(loss)

    def scored_logprobs(self, model, batch):
        raise ValueError("this method or metric needs output distributions: pass an Objective "
                         "(structops.unlearn.Classification() or CausalLM()) instead of a plain loss_fn")

    def targets(self, batch):
        return batch[1]


def as_objective(obj) -> Objective:
    if obj is None:
        return Classification()
    if isinstance(obj, Objective):
        return obj
    if callable(obj):
        return LossFnObjective(obj)
    raise TypeError(f"objective must be an Objective or a callable loss_fn(model, batch), got {type(obj).__name__}")
