"""Forget/retain data handling shared by every method.

``forget`` and ``retain`` may each be

* a tuple/list of tensors with a common first dimension, e.g. ``(x, y)`` or
  ``(input_ids, labels)`` (batched here, full-batch by default);
* a ``torch.utils.data.Dataset`` returning such tuples;
* a ``torch.utils.data.DataLoader`` (or any re-iterable of batches).

:func:`check_unlearning_inputs` rejects an empty forget set, a forget set that shares examples
with the retain set, and targets outside the model's output space, with errors that say which.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .objectives import CausalLM, Classification, Objective

__all__ = ["batches", "num_examples", "materialize", "check_unlearning_inputs", "subset"]


def _is_tensor_tuple(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) > 0 and all(isinstance(t, Tensor) for t in data)


def num_examples(data) -> int:
    if _is_tensor_tuple(data):
        return int(data[0].shape[0])
    if isinstance(data, DataLoader):
        return len(data.dataset)  # type: ignore[arg-type]
    if isinstance(data, Dataset):
        return len(data)  # type: ignore[arg-type]
    return sum(int(b[0].shape[0]) for b in data)


def batches(data, batch_size: int | None = None, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple]:
    """Yields batches (tuples of tensors).  Tensor tuples are cut into ``batch_size`` pieces
    (None: one full batch), in a random order when ``shuffle``; loaders are iterated as is."""
    if _is_tensor_tuple(data):
        n = int(data[0].shape[0])
        if any(int(t.shape[0]) != n for t in data):
            raise ValueError(f"all tensors of a data tuple need the same first dimension, got {[tuple(t.shape) for t in data]}")
        bs = n if batch_size is None else max(1, int(batch_size))
        order = torch.randperm(n, generator=generator) if shuffle else None
        for i in range(0, n, bs):
            if order is None:
                yield tuple(t[i:i + bs] for t in data)
            else:
                idx = order[i:i + bs].to(data[0].device)
                yield tuple(t[idx] for t in data)
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size or len(data), shuffle=shuffle, generator=generator)  # type: ignore[arg-type]
    for b in data:
        yield tuple(b) if isinstance(b, (tuple, list)) else (b,)


def materialize(data) -> tuple:
    """All of ``data`` as one tuple of concatenated tensors."""
    if _is_tensor_tuple(data):
        return tuple(data)
    parts = list(batches(data))
    if not parts:
        return ()
    return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))


def subset(data: tuple, index) -> tuple:
    return tuple(t[index] for t in data)


def _row_hashes(data: tuple) -> list[bytes]:
    n = int(data[0].shape[0])
    flat = [t.detach().reshape(n, -1).cpu().contiguous() for t in data]
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for t in flat:
            h.update(t[i].numpy().tobytes())
        out.append(h.digest())
    return out


def check_unlearning_inputs(model: nn.Module, forget, retain, objective: Objective,
                            require_retain: bool = True) -> None:
    """Validates a (forget, retain) pair for `model` and raises ValueError naming the problem."""
    f = materialize(forget)
    if not f or int(f[0].shape[0]) == 0:
        raise ValueError("forget set is empty: unlearning needs at least one example to forget")
    r = materialize(retain) if retain is not None else ()
    if require_retain and (not r or int(r[0].shape[0]) == 0):
        raise ValueError("retain set is empty: this method needs retain data (pass retain=(x, y) or a DataLoader)")
    if r and len(r) != len(f):
        raise ValueError(f"forget and retain batches have different structure: {len(f)} vs {len(r)} tensors per example")
    if r:
        for i, (a, b) in enumerate(zip(f, r)):
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                raise ValueError(f"forget and retain disagree in tensor {i}: {a.dtype}{tuple(a.shape[1:])} vs "
                                 f"{b.dtype}{tuple(b.shape[1:])} per example (mismatched label spaces or inputs)")
        fh = _row_hashes(f)
        rh = set(_row_hashes(r))
        shared = [i for i, h in enumerate(fh) if h in rh]
        if shared:
            raise ValueError(f"forget and retain share {len(shared)} example(s) (forget indices {shared[:5]}"
                             f"{'...' if len(shared) > 5 else ''}): they must be disjoint")
    # targets inside the model's output space
    if isinstance(objective, (Classification, CausalLM)):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probe = tuple(t[:2] for t in f)
            logp, _, _ = objective.scored_logprobs(model, probe)
        model.train(was_training)
        n_out = logp.shape[-1]
        for name, data in (("forget", f), ("retain", r)):
            if not data:
                continue
            tgt = objective.targets(data)
            if tgt.is_floating_point():
                raise ValueError(f"{name} targets must be integer class/token ids, got {tgt.dtype}")
            if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= n_out):
                raise ValueError(f"{name} targets must lie in [0, {n_out}) (the model has {n_out} outputs), got "
                                 f"range [{int(tgt.min())}, {int(tgt.max())}]: mismatched label spaces")

