"""Batched SVD of a model's weights, with a spectrum store so each weight is decomposed once
(the SVD family: SVFit, WeLore, SST; finetune.md §5–7, §12.5).

* ``batched_svd(weights) -> {name: (U, S, Vh)}``: thin SVD of every (out, in) weight, weights of
  the same shape, dtype and device stacked into one ``torch.linalg.svd`` call (chunks of
  ``chunk``); computed in float32 (float64 for float64 weights); U (out, m), S (m,)
  descending, Vh (m, in), m = min(out, in).
* ``SpectrumStore(max_bytes=2 GiB)``: a cache of those triplets keyed by (name, shape, dtype,
  a SHA-1 of the weight's bytes), so adapting the same model twice (an SVFit run after a WeLore
  τ search, a reload) decomposes nothing again; ``save(path)`` / ``SpectrumStore.load(path)``
  persist it (WeLore ships precomputed spectra the same way).  Oldest entries are evicted past
  ``max_bytes``.  ``default_store()`` is the process-wide store ``structops.adapt`` uses unless
  given ``spectrum_store=``; ``clear()`` frees it.
* ``energy_rank(S, energy)``: the smallest r with Σ_{i<r} σ_i² ≥ energy · Σ σ_i² (SVFit's rule).
* ``welore_ranks(spectra, target_reduction=None, tau=None, min_ratio=0.0)``: WeLore's allocation.
"""

from __future__ import annotations

import collections
import hashlib
import math

import torch
from torch import Tensor

__all__ = ["batched_svd", "SpectrumStore", "default_store", "energy_rank", "welore_ranks", "WELORE_TAU"]

# WeLore's tau lookup (welore_rank_reduction.py), keyed by the target global rank reduction (%).
WELORE_TAU = {10: 0.0225, 20: 0.084, 30: 0.115, 40: 0.145, 50: 0.175, 60: 0.215, 70: 0.26}


def _svd_dtype(w: Tensor) -> torch.dtype:
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def batched_svd(weights: dict[str, Tensor], chunk: int = 16) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Thin SVD of each weight; same-shape weights go through one batched call."""
    groups: dict[tuple, list[str]] = collections.defaultdict(list)
    for name, w in weights.items():
        if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
            raise ValueError(f"batched_svd: {name!r} must be a 2-D floating tensor, got "
                             f"{type(w).__name__ if not isinstance(w, Tensor) else (tuple(w.shape), w.dtype)}")
        groups[(tuple(w.shape), _svd_dtype(w), w.device)].append(name)
    out = {}
    with torch.no_grad():
        for (_, dt, _), names in groups.items():
            for i in range(0, len(names), chunk):
                part = names[i:i + chunk]
                stack = torch.stack([weights[n].detach().to(dt) for n in part])
                if not torch.isfinite(stack).all():
                    bad = [n for n in part if not torch.isfinite(weights[n]).all()]
                    raise ValueError(f"batched_svd: weight(s) {bad} contain NaN/Inf")
                u, s, vh = torch.linalg.svd(stack, full_matrices=False)
                for j, n in enumerate(part):
                    out[n] = (u[j].contiguous(), s[j].contiguous(), vh[j].contiguous())
    return out


def _fingerprint(name: str, w: Tensor) -> tuple:
    raw = w.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    return (name, tuple(w.shape), str(w.dtype), hashlib.sha1(raw.tobytes()).hexdigest())


class SpectrumStore:
    """A cache of weight SVDs (see the module doc)."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = int(max_bytes)
        self._entries: "collections.OrderedDict[tuple, tuple[Tensor, Tensor, Tensor]]" = collections.OrderedDict()
        self.computed = 0  # weights decomposed by this store (a test / profiling counter)

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for e in self._entries.values() for t in e)

    def svd(self, weights: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        keys = {n: _fingerprint(n, w) for n, w in weights.items()}
        missing = {n: w for n, w in weights.items() if keys[n] not in self._entries}
        fresh = batched_svd(missing) if missing else {}
        self.computed += len(fresh)
        result = {}
        for n in weights:
            if n in fresh:
                self._entries[keys[n]] = fresh[n]
                result[n] = fresh[n]
            else:
                self._entries.move_to_end(keys[n])
                result[n] = self._entries[keys[n]]
        while len(self._entries) > 1 and self.nbytes() > self.max_bytes:
            self._entries.popitem(last=False)
        return result

    def clear(self) -> None:
        self._entries.clear()

    def save(self, path: str) -> None:
        torch.save({"version": 1, "entries": [(k, [t.cpu() for t in v]) for k, v in self._entries.items()]}, path)

    @classmethod
    def load(cls, path: str, max_bytes: int = 2 << 30) -> "SpectrumStore":
        data = torch.load(path, weights_only=True)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError(f"SpectrumStore.load: {path} is not a structops spectrum store")
        store = cls(max_bytes)
        for k, v in data["entries"]:
            store._entries[tuple(k)] = tuple(v)
        return store


_DEFAULT = SpectrumStore()


def default_store() -> SpectrumStore:
    return _DEFAULT


def energy_rank(S: Tensor, energy: float) -> int:
    """SVFit: the smallest r whose top-r singular values hold ``energy`` of Σ σ²."""
    if not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    e = torch.cumsum(S.double() ** 2, 0)
    total = float(e[-1])
    if total == 0.0:
        return 1
    return int(torch.searchsorted(e, torch.tensor(float(energy) * total, dtype=e.dtype) * (1 - 1e-12)).item()) + 1


def _pruned(S: Tensor, tau: float) -> int:
    s = S.double()
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        return 0
    return int(((s - lo) / (hi - lo) < tau).sum())


def _allocation(spectra: dict[str, Tensor], tau: float, min_ratio: float) -> tuple[dict[str, int | None], float]:
    ranks, pruned_total, full_total = {}, 0, 0
    for n, S in spectra.items():
        full = S.numel()
        p = _pruned(S, tau)
        full_total += full
        if p / full > min_ratio:
            ranks[n] = full - p
            pruned_total += p
        else:
            ranks[n] = None
    return ranks, pruned_total / max(full_total, 1)


def welore_ranks(spectra: dict[str, Tensor], target_reduction: float | None = None, tau: float | str | None = None,
                 min_ratio: float = 0.0) -> tuple[dict[str, int | None], float, float]:
    """WeLore's rank allocation -> ({name: kept rank k, or None for an N-LRC}, global rank
    reduction achieved (pruned / full ranks over all matrices), tau used).

    Per matrix the spectrum is min-max normalised, s' = (s - min)/(max - min), and
    #{s'_i < tau} ranks are pruned; a matrix whose pruned fraction exceeds ``min_ratio`` becomes
    a low-rank component (LRC, kept rank k = full - pruned), the others stay dense and frozen
    (N-LRC).  Choosing tau:

    * ``tau=<float in [0, 1)>``: used as is;
    * ``tau="table", target_reduction=<fraction>``: WeLore's table (``WELORE_TAU``; keys 10..70 %),
      calibrated on LLaMA-2 spectra — on another model it reaches a different reduction, which
      is returned;
    * ``target_reduction=<fraction in (0, 1)>`` alone: a bisection on tau for the smallest tau
      whose global reduction reaches the target (the reduction is monotone in tau).
    """
    if not 0.0 <= float(min_ratio) < 1.0:
        raise ValueError(f"welore: min_ratio must be in [0, 1), got {min_ratio!r}")
    if isinstance(tau, str):
        if tau != "table":
            raise ValueError(f"welore: tau must be a float in [0, 1), 'table' or None, got {tau!r}")
        pct = None if target_reduction is None else float(target_reduction) * 100
        key = None if pct is None else round(pct)
        if key not in WELORE_TAU or not math.isclose(key, pct, abs_tol=1e-9):
            raise ValueError(f"welore: tau='table' needs target_reduction in {[k / 100 for k in WELORE_TAU]}, "
                             f"got {target_reduction!r}")
        ranks, red = _allocation(spectra, WELORE_TAU[key], min_ratio)
        return ranks, red, WELORE_TAU[key]
    if tau is not None:
        if target_reduction is not None:
            raise ValueError("welore: pass tau or target_reduction, not both (tau='table' uses the table)")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= float(tau) < 1.0:
            raise ValueError(f"welore: tau must be in [0, 1), got {tau!r}")
        ranks, red = _allocation(spectra, float(tau), min_ratio)
        return ranks, red, float(tau)
    if target_reduction is None:
        raise ValueError("welore: pass target_reduction (a fraction in (0, 1)) or tau")
    t = float(target_reduction)
    if not 0.0 < t < 1.0:
        raise ValueError(f"welore: target_reduction must be a fraction in (0, 1), got {target_reduction!r}")
    lo, hi = 0.0, 1.0 - 1e-12
    reachable = _allocation(spectra, hi, min_ratio)[1]
    if reachable < t:
        raise ValueError(f"welore: target_reduction {t} is not reachable (at most {reachable:.3f} with "
                         f"min_ratio={min_ratio})")
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if _allocation(spectra, mid, min_ratio)[1] >= t:
            hi = mid
        else:
            lo = mid
    ranks, red = _allocation(spectra, hi, min_ratio)
    return ranks, red, hi
