"""The evaluation protocol: every method against the ensemble of retrained models.

For one track and scenario:

1. **Models.**  N originals (trained on forget + retain, seeds 0..N-1) and 2N oracles (trained
   on retain only, seeds 10000..10000+2N-1), cached on disk by a hash of their training data,
   seed and training recipe + code (``Track.recipe``), so re-running an evaluation never
   retrains them and changing the recipe never reuses stale ones.  Oracles N..2N-1 form the *reference
   ensemble*; oracles 0..N-1 are the "oracle" arm, scored against the reference exactly like a
   method: its distance is the floor any method can reach (oracle-vs-oracle).
2. **Tuning.**  On the tuning forget set (split 0) every method tries each configuration of its
   grid (the same budget for every method) on ``tune_seeds`` originals (default 8) against
   ``tune_oracles`` oracles (default 16) of its own — both fixed, independent of ``seeds``; the
   configuration with the lowest sum of the median Gaussian KLoM on the forget, retain and
   *validation* sets (close to the oracles where the model should change and where it should
   not) is kept.  The validation set is disjoint from the reported test set.  **Stability**: the
   choice is repeated over ``stability_resamples`` bootstrap resamples of the tuning oracles; the
   share of resamples that pick the chosen configuration is reported (``stability``).
3. **Report.**  On fresh forget sets (splits 1, 2, 3 by default), each disjoint from the tuning
   forget set and from each other *by construction* (asserted here), the chosen configuration
   runs on all N originals; everything is measured against the reference oracles, including the
   robustness probes (int8/int4 quantisation, relearning), for which the oracles get the same
   treatment.  Headline metrics get 95% confidence intervals over the arm's models (``ci``:
   percentile bootstrap for per-model averages, delete-one jackknife for the Gaussian KLoM
   ensemble statistics), per forget set and pooled over the forget sets (``report_pooled``).
4. **Provenance.**  The results record every forget set (``forget_sets``: indices into the
   track's training set on Track A, author ids on Track B), the original/oracle seeds, the
   command, commit, torch/BLAS/CPU/thread information.

Work runs in a process pool (``workers``), one model per task, results are deterministic given
the seeds whatever the order.  All jobs go into one queue without phase barriers: training
(tuning split first), tuning and the report's method-free jobs are queued at once, and a job
waits for the model files it reads (``_wait_for``); only the report's method jobs wait for the
tuning choice.  A method's configurations on one original run as one job when the method takes
a ``curvature_cache`` (K-FADE, newton_step, SSD, IAU, MRP, and the epoch grids of finetune,
GA, GradDiff, NPO, SimNPO), sharing what does not depend on the configuration.  The pool's
workers keep freed memory mapped (keep_heap_mapped), so forwards do not page-fault their
activations afresh.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import inspect
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics
from .methods import METHODS, original_variant
from .tracks.base import Setup, Track

__all__ = ["ProtocolConfig", "run_protocol", "default_cache_dir", "aggregate", "ensure_models"]

ORACLE_SEED0 = 10000
TUNE_ORACLE_SEED0 = 20000  # the tuning oracles: their own seeds, independent of --seeds

# Headline metrics that get bootstrap confidence intervals (those an arm has).
HEADLINE = ("acc_forget", "acc_retain", "acc_test", "mia_loss", "gklom_forget_p50", "gklom_test_p50",
            "gklom_forget_p95", "truth_ratio_forget", "model_utility")


def default_cache_dir() -> str:
    return os.environ.get("STRUCTOPS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "structops"))


@dataclass
class ProtocolConfig:
    seeds: int = 8
    tune_seeds: int = 8
    tune_oracles: int = 16
    fresh_splits: tuple = (1, 2, 3)
    bootstrap: int = 1000             # resamples for the confidence intervals
    stability_resamples: int = 200    # oracle resamples for the stability of the tuning choice
    oracle_free_tolerance: float = 0.01  # validation-accuracy drop the oracle-free choice accepts
    methods: tuple = tuple(METHODS)
    workers: int = max(1, (os.cpu_count() or 1))
    cache_dir: str = field(default_factory=default_cache_dir)
    probes: bool = True
    progress: bool = True


# ---------------------------------------------------------------------------------------------
# model cache
# ---------------------------------------------------------------------------------------------
def _data_hash(data: tuple) -> str:
    h = hashlib.sha1()
    for t in data:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _recipe_hash(track: Track) -> str:
    """Hash of the track's training recipe and code (Track.recipe): part of every cache key, so a
    changed recipe never silently reuses models trained with the old one.  Memoised on the
    track object (the attribute is private, so it is not part of the recipe itself)."""
    h = getattr(track, "_recipe_hash", None)
    if h is None:
        blob = json.dumps(track.recipe(), sort_keys=True).encode()
        h = hashlib.sha1(blob).hexdigest()[:12]
        track._recipe_hash = h
    return h


def _model_path(cache_dir: str, track: Track, kind: str, data: tuple, seed: int, variant: str = "dense") -> str:
    """Cache path of one model: kind and original variant, data hash, seed and the recipe/code
    hash of the track."""
    name = kind if variant == "dense" else f"{kind}@{variant}"
    return os.path.join(cache_dir, f"track{track.name}",
                        f"{name}-{_data_hash(data)}-r{_recipe_hash(track)}-seed{seed}.pt")


def _load(track: Track, path: str):
    m = track.new_model()
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    m.eval()
    return m


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
_WORKER = {}


def _exit_with_parent(parent_pid: int, poll_s: float = 1.0):
    """Worker-side watchdog: a pool worker whose parent has died (SIGTERM / SIGKILL skip the
    executor's shutdown) exits instead of finishing its queued jobs on a machine nobody watches."""
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent_pid:
            os._exit(1)


# glibc malloc's defaults: a block above the mmap threshold (128 KiB, raised as such blocks are
# freed) gets a fresh mmap(), and free memory at the top of the heap goes back to the OS past the
# trim threshold — so the few-MiB activations of every forward are page-faulted and zeroed by
# the kernel again and again.  Measured on Track B (one thread): an evaluation with probes
# page-faulted 18k-42k times and took ~1.1 s; with these settings ~1.5k times and ~0.8 s, and
# in the full forget05 run the same 40 models trained 10.5% faster (equal weights, equal
# epochs).  Blocks up to 32 MiB (mallopt's maximum) come
# from the heap, and up to 1 GiB of freed memory stays mapped.  Allocation does not change
# arithmetic (c10 aligns every tensor to 64 bytes either way): results are equal bit for bit.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))


def keep_heap_mapped() -> bool:
    """Applies _MALLOC_SETTINGS to this process's glibc malloc (``mallopt``).  Returns whether
    every setting took effect; False (and nothing changed) where the C library has no mallopt
    (macOS, musl).  Called in the protocol's own processes only — pool workers and the
    ``python -m structops.unlearn.bench`` command — never on a caller's process."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in _MALLOC_SETTINGS])


def _init_worker(track: Track):
    parent = mp.parent_process()
    if parent is not None:  # a pool worker, not the in-process fallback (workers <= 1)
        import threading

        keep_heap_mapped()

        # the pid the pool spawned us from, not os.getppid(): that is already init's if the
        # parent died while this worker was still starting up
        threading.Thread(target=_exit_with_parent, args=(parent.pid,), daemon=True,
                         name="structops-exit-with-parent").start()
    torch.set_num_threads(1)
    _WORKER["track"] = track
    _WORKER["setups"] = {}


def _setup(track: Track, scenario: str, split: int) -> Setup:
    cache = _WORKER.setdefault("setups", {})
    key = (scenario, split)
    if key not in cache:
        cache[key] = track.setup(scenario, split)
    return cache[key]


def _wait_for(path: str, timeout_s: float = 6 * 3600, poll_s: float = 0.2):
    """Blocks until the model file ``path`` exists: jobs are queued after the training jobs that
    write their models (the pool starts jobs in submission order), so a wait is at most the rest
    of one training job.  Raises when that training job failed (its ``.failed`` marker)."""
    start = time.monotonic()
    while not os.path.exists(path):
        if os.path.exists(path + ".failed"):
            raise RuntimeError(f"the training job for {path} failed; see its error in the run's output")
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for model {path}")
        time.sleep(poll_s)


def _train_job(args):
    path = args["path"]
    if os.path.exists(path):
        return path, 0.0
    if os.path.exists(path + ".failed"):
        os.remove(path + ".failed")
    try:
        return _train(args)
    except BaseException:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path + ".failed", "w").close()  # releases the jobs waiting for this model
        raise


def _train(args):
    track = _WORKER.get("track") or args["track"]
    s = _setup(track, args["scenario"], args["split"])
    data = s.train if args["kind"] == "original" else s.retain
    path = args["path"]
    t0 = time.perf_counter()
    variant = args.get("variant", "dense")
    if variant == "dense":
        model = track.train(data, args["seed"])
    else:  # a sparse variant starts from the dense model of the same data and seed: reuse the cached one
        dense_path = args.get("dense_path")
        if dense_path and args.get("wait_dense"):  # queued in this run behind the dense model's job
            _wait_for(dense_path)
        dense = _load(track, dense_path) if dense_path and os.path.exists(dense_path) else None
        model = track.train_variant(data, args["seed"], variant, dense=dense)
    seconds = time.perf_counter() - t0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    with open(path + ".json", "w") as f:
        json.dump({"kind": args["kind"], "variant": variant, "seed": args["seed"], "train_seconds": seconds,
                   "scenario": args["scenario"], "split": args["split"]}, f)
    return path, seconds


def _eval_job(args):
    """Apply one method (or none) to one model and measure it; a bundled job (``args["bundle"]``:
    [(config, tag)], see _bundle) applies several configurations of one method to the same
    model, sharing a curvature cache between them.  Returns [(tag, measurements)]."""
    track = _WORKER.get("track") or args["track"]
    s = _setup(track, args["scenario"], args["split"])
    _wait_for(args["path"])
    base = _load(track, args["path"])
    original = base if args["arm"] not in ("oracle",) else None
    if args.get("tuning"):  # only what tuning reads (Track.tuning_evaluate), equal to the full values
        def measure(model, original):
            return track.tuning_evaluate(model, s, original=original)
    else:
        def measure(model, original):
            return track.evaluate(model, s, original=original, probes=args["probes"])
    if args["method"] is None:
        out = measure(base, None)
        out["seconds"] = 0.0
        return [(args["tag"], out)]
    fn = METHODS[args["method"]]
    # fewer epochs first: a configuration that differs only in training longer then continues
    # the kept shorter run (the methods' epoch-prefix sharing) — on the report's oracle-tuned
    # and oracle-free pair too, which arrive longest first; every result is unchanged
    bundle = sorted(args.get("bundle") or [(args["config"], args["tag"])], key=lambda item: item[0].get("epochs", 0))
    shared = {"curvature_cache": {}} if len(bundle) > 1 else {}
    results = []
    for config, tag in bundle:
        t0 = time.perf_counter()
        model = fn(base, s.forget, s.retain, objective=track.objective, seed=args["seed"], check=False,
                   **config, **shared)
        seconds = time.perf_counter() - t0
        out = measure(model, original)
        out["seconds"] = seconds
        results.append((tag, out))
    return results


def _shares_curvature(method: str | None) -> bool:
    """Whether a method takes a ``curvature_cache`` (K-FADE): its configurations on one model
    then run in one job and compute the retain curvature once."""
    if method is None:
        return False
    return "curvature_cache" in inspect.signature(METHODS[method].raw).parameters


def _bundle(jobs: list[dict]) -> list[dict]:
    """Merges the jobs of a curvature-sharing method on the same model (split, original path,
    method, seed) into one job with ``bundle`` = [(config, tag)]; bundled jobs go first (they
    are the longest, so the pool does not end on one of them).  Results are unchanged: each
    configuration still gets exactly the computation it would get alone."""
    groups, single = {}, []
    shares = {m: _shares_curvature(m) for m in {j["method"] for j in jobs}}
    for j in jobs:
        if shares[j["method"]]:
            groups.setdefault((j["split"], j["path"], j["method"], j["seed"]), []).append(j)
        else:
            single.append(j)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        j = dict(group[0])
        j["bundle"] = [(g["config"], g["tag"]) for g in group]
        merged.append(j)
    return merged + single


def _pool(track: Track, workers: int):
    if workers <= 1:
        _init_worker(track)
        return None
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                  initargs=(track,))


def _map(pool, fn, jobs, progress_label=None, progress=True):
    """Runs ``jobs`` and waits for all of them: the results, in completion order."""
    return _collect(_submit(pool, fn, jobs), progress_label, progress)


class _Deferred:
    """The in-process stand-in for a future (workers <= 1): runs its job when its result is
    first asked for; results are collected in submission order, so producers run first."""

    def __init__(self, fn, job):
        self.fn, self.job, self.done, self.value = fn, job, False, None

    def result(self):
        if not self.done:
            self.value, self.done = self.fn(self.job), True
        return self.value


def _submit(pool, fn, jobs) -> list:
    """Queues ``jobs`` behind everything submitted before (the pool starts jobs in submission
    order); returns their futures."""
    if pool is None:
        return [_Deferred(fn, j) for j in jobs]
    return [pool.submit(fn, j) for j in jobs]


def _collect(futs: list, progress_label=None, progress=True) -> list:
    """The results of ``futs`` (in completion order), with a progress bar."""
    bar = None
    if progress and progress_label and futs:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(futs), desc=progress_label, leave=False, dynamic_ncols=True)
        except ImportError:  # tqdm is optional: plain progress lines instead
            print(f"[{progress_label}] {len(futs)} jobs", flush=True)
    deferred = [f for f in futs if isinstance(f, _Deferred)]
    results = []
    for f in deferred if deferred else cf.as_completed(futs):
        results.append(f.result())
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return results


def _model_jobs(track: Track, scenario: str, plan, cfg: ProtocolConfig, wait_dense: bool = False) -> tuple:
    """({(split, kind, seed, variant): path}, training jobs for the models of ``plan`` not in
    the cache) — plan as ensure_models'; ``wait_dense``: variant jobs wait for their dense
    model's file (it is being trained by an earlier job of the same submission)."""
    if isinstance(plan, dict):
        plan = [(split, kind, "dense", seeds) for split, (o, r) in plan.items()
                for kind, seeds in (("original", o), ("oracle", r))]
    paths, jobs = {}, {}
    for split, kind, variant, seeds in plan:
        s = track.setup(scenario, split)
        data = s.train if kind == "original" else s.retain
        for seed in seeds:
            p = _model_path(cfg.cache_dir, track, kind, data, seed, variant)
            paths[(split, kind, seed, variant)] = p
            if not os.path.exists(p) and p not in jobs:
                jobs[p] = dict(track=track, scenario=scenario, split=split, kind=kind, seed=seed, path=p,
                               variant=variant, dense_path=_model_path(cfg.cache_dir, track, kind, data, seed),
                               wait_dense=wait_dense and variant != "dense")
    return paths, list(jobs.values())


def ensure_models(track: Track, scenario: str, plan, cfg: ProtocolConfig, pool) -> dict:
    """Trains (or finds in the cache) the models of ``plan``: {split: (original seeds, oracle
    seeds)} of ordinary models, or a list of (split, kind, variant, seeds); returns
    {(split, kind, seed, variant): path}."""
    paths, jobs = _model_jobs(track, scenario, plan, cfg)
    if jobs:
        _map(pool, _train_job, jobs, f"training {len(jobs)} models", cfg.progress)
    return paths


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------
def _stack(results: list, key: str):
    return np.stack([r[key] for r in results])


def aggregate(arm: list[dict], reference: list[dict], extra=None) -> dict:
    """Summary of one arm (list of per-model measurements) against the reference oracles;
    ``extra(arm, reference) -> dict`` adds track-specific comparisons."""
    out = {}
    scalar_keys = [k for k, v in arm[0].items() if np.isscalar(v) or isinstance(v, (float, int))]
    for k in scalar_keys:
        vals = np.array([r[k] for r in arm], dtype=np.float64)
        out[k] = float(vals.mean())
        out[k + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        if k in reference[0] and k not in ("seconds", "retain_kl"):
            out[k + "_oracle"] = float(np.mean([r[k] for r in reference]))
            out[k + "_gap"] = abs(out[k] - out[k + "_oracle"])
    for k in [k for k, v in arm[0].items() if k.startswith("margins_") or k.endswith("_margins_forget")]:
        ref_key = k if k in reference[0] else None
        if ref_key is None:
            continue
        u, o = _stack(arm, k), _stack(reference, ref_key)
        g = metrics.gaussian_klom(u, o)
        out[f"gklom_{k.replace('margins_', '')}_p50"] = float(np.median(g))
        out[f"gklom_{k.replace('margins_', '')}_p95"] = float(np.percentile(g, 95))
        kb = metrics.klom(u, o)
        out[f"klom_{k.replace('margins_', '')}_p50"] = float(np.median(kb))
        out[f"klom_{k.replace('margins_', '')}_p95"] = float(np.percentile(kb, 95))
    if "relearn_acc_forget" in arm[0] and "relearn_acc_forget" in reference[0]:
        u, o = _stack(arm, "relearn_acc_forget").mean(0), _stack(reference, "relearn_acc_forget").mean(0)
        out["relearn_curve"] = u.tolist()
        out["relearn_curve_oracle"] = o.tolist()
        # at step k (the last): held-out forget accuracy after k relearning steps, method vs oracle
        out["relearn_acc_k"] = float(u[-1])
        out["relearn_acc_k_oracle"] = float(o[-1])
        out["relearn_gap"] = float(abs(u[-1] - o[-1]))
    if extra is not None:
        out.update(extra(arm, reference))
    return out


TUNE_SETS = ("forget", "retain", "val")
# what the tuning phase (split 0) reads of each measurement: the scored margins (_score,
# _stability), the oracle-free rule's accuracies, and the rest of the recorded tuning row
# (_compact); Track.tuning_evaluate computes at least these
TUNING_READS = ("acc_forget", "acc_retain", "acc_val", "acc_test", "retain_kl",
                "margins_forget", "margins_retain", "margins_val", "margins_test")


def _score(summary: dict) -> float:
    """Tuning objective: median Gaussian KLoM to the oracles on the forget, retain and validation
    points (close to retraining where the model should change and where it should not).  Never
    the reported test set."""
    return sum(summary.get(f"gklom_{s}_p50", np.inf) for s in TUNE_SETS)


ORACLE_FREE_SUFFIX = " (oracle-free)"
ORACLE_FREE_RULE = ("oracle-free selection: among a method's configurations whose mean validation accuracy "
                    "(retain accuracy where a track has no validation set) on the tuning split is within {tol} "
                    "of the original models', the one with the lowest mean forget accuracy; if none is, the one "
                    "with the highest validation accuracy.  Uses the unlearned and original models only, "
                    "never a retrained oracle.")


def _utility_key(summary: dict) -> str:
    return "acc_val" if "acc_val" in summary else "acc_retain"


def oracle_free_choice(tuning_rows: list, originals: list, tolerance: float) -> dict:
    """The configuration a practitioner without retrained oracles would pick (ORACLE_FREE_RULE).
    tuning_rows: [{"config", "summary"}] of one method; originals: per-model results of the
    original models on the tuning split."""
    key = _utility_key(tuning_rows[0]["summary"])
    base = float(np.mean([r[key] for r in originals]))
    ok = [r for r in tuning_rows if r["summary"][key] >= base - tolerance]
    if ok:
        best = min(ok, key=lambda r: (r["summary"]["acc_forget"], -r["summary"][key]))
    else:
        best = max(tuning_rows, key=lambda r: r["summary"][key])
    return best["config"]


def _stability(tuning_arms: dict, ref: list, resamples: int, seed: int = 0) -> dict:
    """For one method: {config key: share of bootstrap resamples of the tuning oracles in which
    that configuration has the lowest score}.  tuning_arms = {config key: list of per-model
    results}; only the (vectorised) Gaussian KLoM enters, as in _score."""
    rng = np.random.default_rng(seed)
    keys = list(tuning_arms)
    stacked = {k: {s: _stack(a, f"margins_{s}") for s in TUNE_SETS} for k, a in tuning_arms.items()}
    ref_st = {s: _stack(ref, f"margins_{s}") for s in TUNE_SETS}
    wins = dict.fromkeys(keys, 0)
    n = len(ref)
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        scores = [sum(float(np.median(metrics.gaussian_klom(stacked[k][s], ref_st[s][idx]))) for s in TUNE_SETS)
                  for k in keys]
        wins[keys[int(np.argmin(scores))]] += 1
    return {k: v / resamples for k, v in wins.items()}


def _bootstrap(arm: list, ref: list, draws: int, seed: int) -> dict:
    """Uncertainty of the headline metrics over the arm's models (the reference fixed).

    * Per-model averages (accuracies, MIA, truth ratio, utility): percentile bootstrap —
      ``{key: ("draws", array of `draws` resampled means)}``.
    * Ensemble statistics (Gaussian KLoM p50/p95, which fit a normal to the arm's margins):
      delete-one jackknife — ``{key: ("se", jackknife standard error)}``.  A bootstrap resample
      repeats models, which shrinks the fitted spread and biases KLoM upwards (measured: the
      whole bootstrap distribution of the oracle arm's p50 lay above the estimate), so it cannot
      be used there."""
    rng = np.random.default_rng(seed)
    n = len(arm)
    out = {}
    scal = [k for k in HEADLINE if k in arm[0] and np.isscalar(arm[0][k])]
    idxs = rng.integers(0, n, (draws, n))
    for k in scal:
        vals = np.array([r[k] for r in arm], dtype=np.float64)
        out[k] = ("draws", vals[idxs].mean(1))
    if n < 3:
        return out
    for sset in ("forget", "test"):
        if f"margins_{sset}" not in arm[0] or f"margins_{sset}" not in ref[0]:
            continue
        u, o = _stack(arm, f"margins_{sset}"), _stack(ref, f"margins_{sset}")
        loo = [metrics.gaussian_klom(np.delete(u, i, 0), o) for i in range(n)]
        for q, name in ((50, f"gklom_{sset}_p50"), (95, f"gklom_{sset}_p95")):
            if name not in HEADLINE:
                continue
            th = np.array([np.percentile(g, q) for g in loo])
            out[name] = ("se", float(np.sqrt((n - 1) / n * np.sum((th - th.mean()) ** 2))))
    return out


def _ci(unc: dict, estimates: dict) -> dict:
    """95% intervals: percentiles of the bootstrap draws, or estimate +- 1.96 jackknife SE."""
    out = {}
    for k, (kind, v) in unc.items():
        if kind == "draws":
            out[k] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        elif k in estimates:
            out[k] = [float(estimates[k] - 1.96 * v), float(estimates[k] + 1.96 * v)]
    return out


def _pool_uncertainty(per_split: list) -> dict:
    """Uncertainty of the mean over independent forget sets: averaged bootstrap draws, or the
    combined standard error sqrt(sum se^2) / S."""
    out = {}
    keys = set(per_split[0]).intersection(*[set(d) for d in per_split[1:]]) if per_split else set()
    for k in keys:
        kinds = {d[k][0] for d in per_split}
        if kinds == {"draws"}:
            out[k] = ("draws", np.mean([d[k][1] for d in per_split], 0))
        elif kinds == {"se"}:
            out[k] = ("se", float(np.sqrt(sum(d[k][1] ** 2 for d in per_split)) / len(per_split)))
    return out


def _provenance() -> dict:
    import platform
    import subprocess
    import sys

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:  # uncommitted edits in structops/unlearn: the commit alone does not describe the code
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                                    cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        dirty = None
    blas = "mkl" if torch.backends.mkl.is_available() else "other"
    return {"command": " ".join(sys.argv), "commit": commit, "code_dirty": dirty, "torch": torch.__version__, "blas": blas,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------------
def run_protocol(track: Track, scenario: str, cfg: ProtocolConfig) -> dict:
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {sorted(METHODS)}")
    if scenario not in track.scenarios:
        raise ValueError(f"track {track.name} has scenarios {track.scenarios}, got {scenario!r}")
    n = cfg.seeds
    tune_n = max(1, cfg.tune_seeds)
    started = time.perf_counter()
    provenance = _provenance()  # at the start: the commit that runs, not the one checked out at the end
    orig_seeds = list(range(n))
    ref_seeds = list(range(ORACLE_SEED0 + n, ORACLE_SEED0 + 2 * n))
    arm_oracle_seeds = list(range(ORACLE_SEED0, ORACLE_SEED0 + n))
    tune_orig_seeds = list(range(tune_n))
    tune_ref_seeds = list(range(TUNE_ORACLE_SEED0, TUNE_ORACLE_SEED0 + max(1, cfg.tune_oracles)))
    if 0 in cfg.fresh_splits:
        raise ValueError("fresh_splits must not contain 0: split 0 is the tuning forget set")
    # forget sets: tuning and reporting disjoint by construction; checked here
    forget_sets = {0: track.setup(scenario, 0).forget_ids}
    for split in cfg.fresh_splits:
        forget_sets[split] = track.setup(scenario, split).forget_ids
    splits = sorted(forget_sets)
    for i, a in enumerate(splits):
        for b in splits[:i]:
            common = set(forget_sets[a]) & set(forget_sets[b])
            if common:
                raise AssertionError(f"forget sets of splits {b} and {a} overlap in {len(common)} items")
    plan = {0: (tune_orig_seeds, tune_ref_seeds)}
    for split in cfg.fresh_splits:
        plan[split] = (orig_seeds, arm_oracle_seeds + ref_seeds)
    extra = getattr(track, "aggregate_extra", None)
    # the original each (method, config) starts from: "dense", or the variant the method assumes
    # (prune_then_unlearn: a sparse original; iau: a gradient-restriction-trained one) when the
    # track can train it — else the ordinary original, recorded in "original_variants"
    unsupported = {}

    def variant_for(m, c):
        v = original_variant(m, c)
        if v != "dense" and not track.supports_variant(v):
            unsupported[m] = v
            return "dense"
        return v

    tune_variants = sorted({variant_for(m, c) for m in cfg.methods for c in track.grid(m)} - {"dense"})
    pool = _pool(track, cfg.workers)
    try:
        # One queue, no barrier between the phases: the pool starts jobs in submission order and
        # every job waits for the model files it reads (_wait_for), so the training jobs (the
        # tuning split's first, then the sparse variants, which start from the dense models),
        # the tuning jobs and the report's method-free jobs are all queued now; only the
        # report's method jobs wait for the tuning choice.  Each job computes exactly what it
        # would compute alone, so results do not depend on the order.
        paths, train_jobs = _model_jobs(track, scenario, plan, cfg)
        v_paths, v_jobs = _model_jobs(track, scenario, [(0, "original", v, tune_orig_seeds) for v in tune_variants],
                                      cfg, wait_dense=True)
        paths.update(v_paths)
        train_jobs += v_jobs
        train_futs = _submit(pool, _train_job, train_jobs)

        def jobs_for(split, arm, method, config, seeds, probes, variant="dense"):
            out = []
            for i, seed in enumerate(seeds):
                kind = "oracle" if arm in ("oracle", "reference") or arm.startswith("reference@") else "original"
                out.append(dict(track=track, scenario=scenario, split=split, arm=arm, method=method,
                                config=config or {}, seed=i, path=paths[(split, kind, seed, variant)], probes=probes,
                                tuning=split == 0,
                                tag=(split, arm, method, json.dumps(config or {}, sort_keys=True), i)))
            return out

        # ---- tuning on split 0 (its own originals and oracles; validation set, never test)
        tune_jobs = jobs_for(0, "reference", None, None, tune_ref_seeds, False)
        tune_jobs += jobs_for(0, "original", None, None, tune_orig_seeds, False)  # for the oracle-free choice
        for m in cfg.methods:
            for c in track.grid(m):
                tune_jobs += jobs_for(0, "method", m, c, tune_orig_seeds, False, variant_for(m, c))
        tune_futs = _submit(pool, _eval_job, _bundle(tune_jobs))
        # the report's arms without a method (reference, oracle and original models on every
        # fresh split) need no tuning result: queued behind the tuning jobs, they fill its tail
        base_jobs = []
        for split in cfg.fresh_splits:
            base_jobs += jobs_for(split, "reference", None, None, ref_seeds, cfg.probes)
            base_jobs += jobs_for(split, "oracle", None, None, arm_oracle_seeds, cfg.probes)
            base_jobs += jobs_for(split, "original", None, None, orig_seeds, cfg.probes)
        base_futs = _submit(pool, _eval_job, base_jobs)
        if train_jobs:
            _collect(train_futs, f"training {len(train_jobs)} models", cfg.progress)
        t_models = time.perf_counter() - started
        res = {tag: out for part in _collect(tune_futs, f"tuning {len(cfg.methods)} methods", cfg.progress)
               for tag, out in part}
        ref0 = [res[k] for k in sorted(k for k in res if k[1] == "reference")]
        orig0 = [res[k] for k in sorted(k for k in res if k[1] == "original")]
        tuning, chosen, stability, chosen_free = {}, {}, {}, {}
        for m in cfg.methods:
            tuning[m] = []
            arms_m = {}
            for c in track.grid(m):
                key = json.dumps(c, sort_keys=True)
                arm = [res[(0, "method", m, key, i)] for i in range(tune_n)]
                arms_m[key] = arm
                summ = aggregate(arm, ref0, extra)
                tuning[m].append({"config": c, "score": _score(summ), "summary": _compact(summ)})
            best = min(tuning[m], key=lambda r: r["score"])
            chosen[m] = best["config"]
            chosen_free[m] = oracle_free_choice(tuning[m], orig0, cfg.oracle_free_tolerance)
            if cfg.stability_resamples > 0:
                shares = _stability(arms_m, ref0, cfg.stability_resamples, seed=len(m))
                stability[m] = {"chosen_share": shares[json.dumps(best["config"], sort_keys=True)],
                                "shares": shares, "resamples": cfg.stability_resamples}
        t_tune = time.perf_counter() - started - t_models

        # ---- the variant originals (and, for sparse ones, sparse reference oracles) the chosen
        # configs need on the fresh splits
        report_variants = sorted({variant_for(m, c) for m in cfg.methods for c in (chosen[m], chosen_free[m])}
                                 - {"dense"})
        if report_variants:
            need = [(sp, "original", v, orig_seeds) for sp in cfg.fresh_splits for v in report_variants]
            need += [(sp, "oracle", v, ref_seeds) for sp in cfg.fresh_splits for v in report_variants
                     if v.startswith("sparse-")]
            paths.update(ensure_models(track, scenario, need, cfg, pool))
        t_variants = time.perf_counter() - started - t_models - t_tune

        # ---- report on fresh splits
        report, draws = {}, {}
        jobs = []
        for split in cfg.fresh_splits:
            for v in report_variants:
                jobs += jobs_for(split, f"original@{v}", None, None, orig_seeds, cfg.probes, v)
                if v.startswith("sparse-"):
                    jobs += jobs_for(split, f"reference@{v}", None, None, ref_seeds, cfg.probes, v)
            for m in cfg.methods:
                jobs += jobs_for(split, "method", m, chosen[m], orig_seeds, cfg.probes, variant_for(m, chosen[m]))
                if chosen_free[m] != chosen[m]:
                    jobs += jobs_for(split, "method", m, chosen_free[m], orig_seeds, cfg.probes,
                                     variant_for(m, chosen_free[m]))
        report_futs = base_futs + _submit(pool, _eval_job, _bundle(jobs))
        res_all = {tag: out for part in _collect(report_futs, f"report {len(cfg.fresh_splits)} forget sets",
                                                 cfg.progress) for tag, out in part}
        for split in cfg.fresh_splits:
            res = {k: v for k, v in res_all.items() if k[0] == split}
            ref = [res[k] for k in sorted(k for k in res if k[0] == split and k[1] == "reference")]
            arms = {"oracle": [res[k] for k in sorted(k for k in res if k[1] == "oracle")],
                    "original": [res[k] for k in sorted(k for k in res if k[1] == "original")]}
            for v in report_variants:
                arms[f"original@{v}"] = [res[k] for k in sorted(k for k in res if k[1] == f"original@{v}")]
            for m in cfg.methods:
                key = json.dumps(chosen[m], sort_keys=True)
                arms[m] = [res[(split, "method", m, key, i)] for i in range(n)]
            for m in cfg.methods:  # after the oracle-tuned rows, so tables keep their order
                key = json.dumps(chosen_free[m], sort_keys=True)
                arms[m + ORACLE_FREE_SUFFIX] = [res[(split, "method", m, key, i)] for i in range(n)]
            report[split] = {name: aggregate(a, ref, extra) for name, a in arms.items()}
            # sparse originals and the methods run on them, also against sparse oracles
            # (Unlearn-Sparse's comparison): the same sparse procedure on the retain set
            for v in report_variants:
                if not v.startswith("sparse-"):
                    continue
                ref_v = [res[k] for k in sorted(k for k in res if k[1] == f"reference@{v}")]
                for name in [f"original@{v}"] + [m for m in cfg.methods if variant_for(m, chosen[m]) == v] + \
                        [m + ORACLE_FREE_SUFFIX for m in cfg.methods if variant_for(m, chosen_free[m]) == v]:
                    report[split][name]["vs_sparse_oracles"] = _compact(aggregate(arms[name], ref_v, extra))
            # per-model forget margins (the KLoM inputs) of every arm and of the reference oracles
            for name, a in arms.items():
                report[split][name]["per_model_margins_forget"] = np.round(_stack(a, "margins_forget"), 4).tolist()
            report[split]["_reference_margins_forget"] = np.round(_stack(ref, "margins_forget"), 4).tolist()
            if cfg.bootstrap > 0:
                for name, a in arms.items():
                    d = _bootstrap(a, ref, cfg.bootstrap, seed=1000 * split + len(name))
                    draws.setdefault(name, []).append(d)
                    report[split][name]["ci"] = _ci(d, report[split][name])
            s = track.setup(scenario, split)
            report[split]["_sizes"] = {"forget": int(s.forget[0].shape[0]), "retain": int(s.retain[0].shape[0]),
                                       "test": int(s.test[0].shape[0])}
        # pooled over the forget sets: mean of the per-split values, CI from the averaged draws
        pooled = {}
        for name in (report[cfg.fresh_splits[0]] if cfg.fresh_splits else {}):
            if name.startswith("_"):
                continue
            keys = [k for k in HEADLINE if all(k in report[sp][name] for sp in cfg.fresh_splits)]
            pooled[name] = {k: float(np.mean([report[sp][name][k] for sp in cfg.fresh_splits])) for k in keys}
            if name in draws:
                pooled[name]["ci"] = _ci(_pool_uncertainty(draws[name]), pooled[name])
        t_report = time.perf_counter() - started - t_models - t_tune - t_variants
    finally:
        if pool is not None:  # after an error: drop the queued jobs, finish the running ones
            pool.shutdown(wait=True, cancel_futures=True)
    return {
        "track": track.name,
        "scenario": scenario,
        "seeds": n,
        "tune_seeds": tune_n,
        "tune_oracles": len(tune_ref_seeds),
        "methods": list(cfg.methods),
        "chosen": chosen,
        "chosen_oracle_free": chosen_free,
        "original_variants": {m: {"chosen": variant_for(m, chosen[m]), "oracle_free": variant_for(m, chosen_free[m]),
                                  "unsupported_by_track": unsupported.get(m)}
                              for m in cfg.methods if original_variant(m, chosen[m]) != "dense"},
        "oracle_free_rule": ORACLE_FREE_RULE.format(tol=cfg.oracle_free_tolerance),
        "stability": stability,
        "tuning": tuning,
        "report": {str(k): v for k, v in report.items()},
        "report_pooled": pooled,
        "forget_sets": {"tuning": forget_sets[0], "report": [forget_sets[sp] for sp in cfg.fresh_splits],
                        "report_splits": list(cfg.fresh_splits)},
        "model_seeds": {"tuning_originals": tune_orig_seeds, "tuning_oracles": tune_ref_seeds,
                        "originals": orig_seeds, "oracle_arm": arm_oracle_seeds, "reference_oracles": ref_seeds},
        "provenance": provenance,
        "timing": {"models_s": t_models, "tuning_s": t_tune, "variant_models_s": t_variants, "report_s": t_report,
                   "total_s": time.perf_counter() - started},
    }


def _compact(summary: dict) -> dict:
    keep = ("acc_forget", "acc_retain", "acc_test", "acc_val", "gklom_forget_p50", "gklom_retain_p50", "gklom_test_p50",
            "retain_kl", "seconds")
    return {k: summary[k] for k in keep if k in summary}
