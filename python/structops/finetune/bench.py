"""End-to-end fine-tuning example: every structops method on one small model, offline.

    python -m structops.finetune.bench [--json out.json] [--png out.png] [--steps 300] [--quick]
    python -m structops.finetune.bench --render out.json --png out.png     # re-draw only

The task (no download: scikit-learn ships the data): a ``DigitsTransformer`` (each 8×8 image row
a token; ``structops.finetune.example_model``) is pretrained on sklearn's digits, then adapted to
the same digits **rotated by 90°** (the source model scores ~20% there).  Every method adapts the
attention and MLP projections (``q/k/v/o_proj, fc1, fc2``); embedding, norms and head stay
frozen.  Baselines in the same run: full fine-tuning (every parameter trains), peft 0.21.2's
LoRA / RandLoRA / VeRA on the same targets (when peft is installed).  For each: Adam, a learning
rate picked from a small grid on a validation split of the training set, then the test
accuracy and loss on held-out rotated digits.

Columns: trainable parameters; ms per training step (median, batch 64); training memory — on
CUDA ``torch.cuda.max_memory_allocated`` over a step, on CPU the bytes of every tensor a step
holds: parameters and buffers, gradients, Adam state and the tensors autograd saves for backward
(unique storages, via ``saved_tensors_hooks``); test accuracy / loss after ``--steps`` steps.
Ratios: time and memory against full fine-tuning, and against peft's implementation of the same
method.  Writes a JSON (``--json``) and a PNG (``--png``: accuracy vs trainable parameters, and
ms/step).  A progress bar (tqdm) tracks the runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from .adapt import adapt, trainable_parameters
from .example_model import ADAPT_TARGETS, DigitsTransformer

__all__ = ["main", "METHOD_CONFIGS", "load_task"]

METHOD_CONFIGS = {
    "lora": {"r": 8, "alpha": 16},
    "randlora": {"r": 16, "alpha": 32},
    "vera": {"r": 32},
    "sltrain": {"rank": 8, "density": 0.03, "alpha": 16},
    "monarch": {"nblocks": 4},
    "butterfly": {"nblocks": 2},
    "svfit": {"energy": 0.99},
    "welore": {"target_reduction": 0.3},
    "sst": {"r": 8},
}
PEFT_RUNS = {"peft-lora": "lora", "peft-randlora": "randlora", "peft-vera": "vera"}
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2)


def load_task(seed: int = 0):
    """(train_x, train_y, val_x, val_y, test_x, test_y) of the *rotated* digits, and the source
    (unrotated) train split used for pretraining; x (n, 8, 8) in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the finetune extra
        raise ImportError("the fine-tuning example needs scikit-learn (pip install 'structops[finetune]')") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_tr, n_val = 1000, 200
    src = (x[:n_tr], y[:n_tr])
    rot = torch.rot90(x, 1, (1, 2)).contiguous()
    return src, (rot[:n_tr], y[:n_tr]), (rot[n_tr:n_tr + n_val], y[n_tr:n_tr + n_val]), (rot[n_tr + n_val:], y[n_tr + n_val:])


def _batches(x, y, batch, steps, seed):
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    logits = model(x)
    model.train()
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


def pretrain(src, steps=600, seed=0):
    torch.manual_seed(seed)
    model = DigitsTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for xb, yb in _batches(*src, 64, steps, seed):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model


def _tensor_bytes(ts) -> int:
    seen, total = set(), 0
    for t in ts:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = (id(t), t.device), t.numel() * t.element_size()
        if key in seen:
            continue
        seen.add(key)
        total += size
    return total


def _step_memory(model, opt, xb, yb) -> int:
    """Bytes a training step holds (CPU accounting, see the module doc)."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(xb), yb)
    act = _tensor_bytes(saved)
    loss.backward()
    opt.step()
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in model.parameters()]
    return _tensor_bytes(list(model.parameters()) + list(model.buffers())) + _tensor_bytes(grads) + \
        _tensor_bytes(state) + act


def _peft_model(base, method, cfg):
    from peft import LoraConfig, RandLoraConfig, VeraConfig, get_peft_model

    if method == "lora":
        pc = LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], target_modules=ADAPT_TARGETS)
    elif method == "randlora":
        pc = RandLoraConfig(r=cfg["r"], randlora_alpha=cfg["alpha"], target_modules=ADAPT_TARGETS)
    else:
        pc = VeraConfig(r=cfg["r"], target_modules=ADAPT_TARGETS)
    return get_peft_model(copy.deepcopy(base), pc)


def _build(name, base):
    if name == "full":
        m = copy.deepcopy(base)
        for p in m.parameters():
            p.requires_grad_(True)
        return m
    if name in PEFT_RUNS:
        method = PEFT_RUNS[name]
        return _peft_model(base, method, METHOD_CONFIGS[method])
    return adapt(copy.deepcopy(base), name, target_modules=ADAPT_TARGETS, **METHOD_CONFIGS[name])


def run_one(name, base, task, steps, lr, seed=0, test=False):
    _, (xtr, ytr), (xva, yva), (xte, yte) = task
    torch.manual_seed(seed)
    model = _build(name, base)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    mem, losses = None, []
    for i, (xb, yb) in enumerate(_batches(xtr, ytr, 64, steps, seed + 1)):
        if i == 1 and test:
            mem = _step_memory(model, opt, xb, yb)
            continue
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if name == "sst" and (i + 1) % 100 == 0:  # SST's round: re-SVD and resample every 100 steps
            from .adapt import sst_round

            sst_round(model, torch.Generator().manual_seed(seed + i))
    ex, ey = (xte, yte) if test else (xva, yva)
    acc, nll = evaluate(model, ex, ey)
    tp = trainable_parameters(model)
    row = {"method": name, "lr": lr, "trainable": tp.trainable, "total": tp.total, "train_memory_bytes": mem,
           "accuracy": acc, "loss": nll, "train_loss_curve": losses[::10]}
    return row, (model, opt)


def _step_fn(model, opt, xb, yb):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return step


def interleaved_ms(fns: dict, rounds: int = 30, min_seconds: float = 0.5) -> dict:
    """Median ms per call of every fn, timed round-robin (A, B, C, A, B, C, ...) so drifts of the
    machine hit all contenders alike; one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {n: [] for n in fns}
    start, r = time.perf_counter(), 0
    while r < rounds or (time.perf_counter() - start < min_seconds * len(fns) and r < 200):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)
        r += 1
    return {n: 1e3 * statistics.median(v) for n, v in times.items()}


# the single-layer section: one d x d linear with a pretrained-like (power-law) spectrum
LAYER_CONFIGS = {
    "lora": {"r": 16, "alpha": 32}, "randlora": {"r": 32, "alpha": 64}, "vera": {"r": 256},
    "sltrain": {"rank": 16, "density": 0.01}, "monarch": {"nblocks": 4}, "butterfly": {"nblocks": 1},
    "svfit": {"energy": 0.9}, "welore": {"target_reduction": 0.5}, "sst": {"r": 16},
}


def _powerlaw_linear(d: int, seed: int = 0) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    s = 1.0 / (1.0 + torch.arange(d, dtype=torch.float32)) ** 0.8
    lin = torch.nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_((u * s) @ v.T * math.sqrt(d) / s.norm())
    return lin


def layer_timings(d: int = 1024, tokens: int = 2048, rounds: int = 15, peft_ok: bool = True,
                  methods=None) -> list[dict]:
    """Forward + backward (x requires grad, as mid-network) of one adapted d x d layer, every
    method and baseline interleaved: the frozen dense layer alone, and peft's LoRA / RandLoRA / VeRA."""
    base = _powerlaw_linear(d)
    x = torch.randn(tokens, d, requires_grad=True)
    gy = torch.randn(tokens, d)
    models = {"frozen dense": torch.nn.Sequential(copy.deepcopy(base)).requires_grad_(False)}
    for n, cfg in LAYER_CONFIGS.items():
        if methods is None or n in methods:
            models[n] = adapt(torch.nn.Sequential(copy.deepcopy(base)), n, target_modules=["0"], **cfg)
    if peft_ok:
        from peft import LoraConfig, RandLoraConfig, VeraConfig, get_peft_model

        for n, pc in (("peft-lora", LoraConfig(r=16, lora_alpha=32, target_modules=["0"])),
                      ("peft-randlora", RandLoraConfig(r=32, randlora_alpha=64, target_modules=["0"])),
                      ("peft-vera", VeraConfig(r=256, target_modules=["0"]))):
            if methods is None or n in methods:
                models[n] = get_peft_model(torch.nn.Sequential(copy.deepcopy(base)), pc)

    def fwd_bwd(m):
        def f():
            x.grad = None
            for p in m.parameters():
                p.grad = None
            m(x).backward(gy)
        return f

    ms = interleaved_ms({n: fwd_bwd(m) for n, m in models.items()}, rounds=rounds, min_seconds=0.3)
    rows = []
    for n, m in models.items():
        tp = trainable_parameters(m) if not n.startswith("peft-") else None
        trainable = tp.trainable if tp else sum(p.numel() for p in m.parameters() if p.requires_grad)
        twin = f"peft-{n}"
        rows.append({"method": n, "d": d, "tokens": tokens, "trainable": trainable, "ms_fwd_bwd": ms[n],
                     "vs_frozen_dense": ms[n] / ms["frozen dense"],
                     "vs_peft": ms[n] / ms[twin] if twin in ms else None})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--png")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="fewer steps, no learning-rate grid (smoke test)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--methods", default=None, help="comma-separated subset")
    ap.add_argument("--render", metavar="JSON", help="only re-draw --png from a saved JSON")
    a = ap.parse_args(argv)
    if a.render:
        if not a.png:
            ap.error("--render needs --png")
        render(a.render, a.png)
        return {}
    from tqdm.auto import tqdm

    if a.threads:
        torch.set_num_threads(a.threads)
    steps = 40 if a.quick else a.steps
    grid = LR_GRID[1:2] if a.quick else LR_GRID
    try:
        import peft  # noqa: F401
        peft_runs = list(PEFT_RUNS)
    except ImportError:
        peft_runs = []
    names = ["full"] + list(METHOD_CONFIGS) + peft_runs
    if a.methods:
        names = [n for n in names if n in a.methods.split(",")]
    task = load_task()
    t0 = time.time()
    base = pretrain(task[0], steps=100 if a.quick else 600)
    src_acc = evaluate(base, *task[0])[0]
    base_acc, base_loss = evaluate(base, *task[3])
    rows, trained = [], {}
    bar = tqdm(total=len(names) * (len(grid) + 1) + 2, desc="finetune bench", unit="run")
    for n in names:
        best = None
        for lr in grid:
            r, _ = run_one(n, base, task, steps, lr)
            bar.update(1)
            if best is None or r["accuracy"] > best["accuracy"] or (r["accuracy"] == best["accuracy"] and r["loss"] < best["loss"]):
                best = r
        final, trained[n] = run_one(n, base, task, steps, best["lr"], test=True)
        final["val_accuracy"] = best["accuracy"]
        bar.update(1)
        rows.append(final)
    xb, yb = next(_batches(*task[1], 64, 1, 123))
    ms = interleaved_ms({n: _step_fn(m, o, xb, yb) for n, (m, o) in trained.items()}, rounds=60 if not a.quick else 10)
    bar.update(1)
    for r in rows:
        r["ms_per_step"] = ms[r["method"]]
    layer_rows = layer_timings(d=512 if a.quick else 1024, tokens=256 if a.quick else 2048,
                               rounds=3 if a.quick else 15, peft_ok=bool(peft_runs), methods=names)
    bar.update(1)
    bar.close()
    by = {r["method"]: r for r in rows}
    full = by.get("full")
    for r in rows:
        r["time_vs_full"] = r["ms_per_step"] / full["ms_per_step"] if full else None
        r["memory_vs_full"] = (r["train_memory_bytes"] / full["train_memory_bytes"]
                               if full and r["train_memory_bytes"] else None)
        twin = by.get(f"peft-{r['method']}")
        r["time_vs_peft"] = r["ms_per_step"] / twin["ms_per_step"] if twin else None
        r["memory_vs_peft"] = (r["train_memory_bytes"] / twin["train_memory_bytes"]
                               if twin and r["train_memory_bytes"] else None)
    print(f"\nsource model: {src_acc:.3f} accuracy on the unrotated digits, {base_acc:.3f} on the rotated test set "
          f"({len(task[3][1])} images); {steps} steps, batch 64, Adam, lr from {list(grid)} on a validation split")
    hdr = (f"{'method':<15}{'trainable':>10}{'ms/step':>9}{'x full':>8}{'x peft':>8}{'mem KiB':>9}{'x full':>8}"
           f"{'x peft':>8}{'test acc':>10}{'test loss':>10}{'lr':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        f = lambda v, s="{:.2f}": "-" if v is None else s.format(v)  # noqa: E731
        print(f"{r['method']:<15}{r['trainable']:>10,}{r['ms_per_step']:>9.2f}{f(r['time_vs_full']):>8}"
              f"{f(r['time_vs_peft']):>8}{f(r['train_memory_bytes'] and r['train_memory_bytes'] / 1024, '{:.0f}'):>9}"
              f"{f(r['memory_vs_full']):>8}{f(r['memory_vs_peft']):>8}{r['accuracy']:>10.3f}{r['loss']:>10.3f}"
              f"{r['lr']:>8.0e}")
    lr0 = layer_rows[0]
    print(f"\none {lr0['d']}x{lr0['d']} layer (power-law spectrum), {lr0['tokens']} tokens, forward + backward "
          f"(interleaved, median):")
    hdr2 = f"{'method':<15}{'trainable':>10}{'ms':>9}{'x frozen':>10}{'x peft':>8}"
    print(hdr2)
    print("-" * len(hdr2))
    for r in layer_rows:
        print(f"{r['method']:<15}{r['trainable']:>10,}{r['ms_fwd_bwd']:>9.2f}{r['vs_frozen_dense']:>10.2f}"
              f"{'-' if r['vs_peft'] is None else format(r['vs_peft'], '.2f'):>8}")
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": _git_commit(),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "steps": steps, "lr_grid": list(grid), "seconds": time.time() - t0,
            "source_accuracy": src_acc, "base_rotated_accuracy": base_acc, "base_rotated_loss": base_loss,
            "memory": "CPU: bytes of parameters+buffers, gradients, Adam state and autograd-saved tensors of one step"}
    out = {"meta": meta, "rows": rows, "layer": layer_rows}
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)
    if a.png:
        os.makedirs(os.path.dirname(os.path.abspath(a.png)), exist_ok=True)
        _plot(rows, a.png, base_acc)
    return out


def _git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=__file__.rsplit("/", 1)[0], timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _plot(rows, path, base_acc):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.8))
    accs = [r["accuracy"] for r in rows]
    for i, r in enumerate(rows):
        peft_run = r["method"].startswith("peft-")
        ax1.scatter(r["trainable"], r["accuracy"], marker="s" if peft_run else "o", s=40, color=f"C{i % 10}")
        ax1.annotate(r["method"], (r["trainable"], r["accuracy"]), fontsize=8,
                     xytext=(4, 6 if i % 2 else -11), textcoords="offset points")
    ax1.set_xscale("log")
    ax1.set_ylim(min(accs) - 0.03, min(1.0, max(accs) + 0.02))
    ax1.set_xlabel("trainable parameters (log)")
    ax1.set_ylabel("test accuracy, rotated digits")
    ax1.set_title(f"quality vs trainable parameters (source model: {base_acc:.2f})", fontsize=10)
    names = [r["method"] for r in rows]
    ax2.barh(names, [r["ms_per_step"] for r in rows], color=["C1" if n.startswith("peft-") else "C0" for n in names])
    ax2.invert_yaxis()
    ax2.set_xlabel("ms per training step (median, batch 64, interleaved)")
    ax2.set_title("step time (orange: peft 0.21.2)", fontsize=10)
    for i, r in enumerate(rows):
        if r["method"].startswith("peft-"):
            continue
        curve = r.get("train_loss_curve") or []
        ax3.plot([10 * k for k in range(len(curve))], curve, label=r["method"], color=f"C{i % 10}", lw=1.2)
    ax3.set_yscale("log")
    ax3.set_xlabel("step")
    ax3.set_ylabel("training loss (every 10th step)")
    ax3.set_title("training loss, best learning rate", fontsize=10)
    ax3.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(json_path: str, png_path: str) -> None:
    """Re-draw the PNG from a saved JSON (no training)."""
    with open(json_path) as fh:
        out = json.load(fh)
    _plot(out["rows"], png_path, out["meta"]["base_rotated_accuracy"])


if __name__ == "__main__":
    main()
