"""Offline pretraining example: a byte-level transformer on the Python standard library's own
sources (ships with every Python), dense vs SLTrain (sparse + low-rank) vs low-rank only, the same
steps, batch and seed.  Reports trainable parameters, peak memory growth, step time, tokens/s and
the training / validation loss, draws the loss curves (PNG), and writes JSON.  Every variant runs
in a fresh process (after a 2-step warm-up); peak memory = growth of the resident set's
high-water mark over a 4-step run with MALLOC_MMAP_THRESHOLD_=65536 (live memory, ±1 MiB):
parameters, gradients, AdamW state and activations.

    .venv/bin/python bench/pretrain_sltrain.py --steps 300 --json docs/results/sltrain_pretrain.json \\
        --plot docs/figures/sltrain_pretrain.png

Model: vocabulary 256 (bytes), d_model 256, 4 blocks (4 heads, MLP 4x), context 128, batch 16
(2048 tokens a step), AdamW lr 3e-3 (SLTrain's recipe lr), cosine decay.  SLTrain: every linear
named attn*/mlp* (SLTrain's rule) becomes ``SLTrainLinear(rank, density, alpha)``; low-rank only is
the same layer with an empty sparse support.  Embedding and head stay dense in all three.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_meta  # noqa: E402

from structops.nn.sltrain import convert_linears  # noqa: E402


def corpus(max_bytes: int) -> torch.Tensor:
    root = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    data = bytearray()
    for f in files:
        with open(f, "rb") as fh:
            data += fh.read()
        if len(data) >= max_bytes:
            break
    return torch.frombuffer(bytearray(data[:max_bytes]), dtype=torch.uint8).long()


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.ModuleDict({"qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d)})
        self.mlp = nn.ModuleDict({"fc": nn.Linear(d, 4 * d), "proj": nn.Linear(4 * d, d)})

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.attn["qkv"](self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.attn["proj"](a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp["proj"](F.gelu(self.mlp["fc"](self.ln2(x))))


class ByteLM(nn.Module):
    def __init__(self, d=256, layers=4, heads=4, ctx=128):
        super().__init__()
        self.embed = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, 256)

    def forward(self, t):
        x = self.embed(t) + self.pos[: t.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln(x))


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def train(variant, data, args):
    # peak memory of the whole run (parameters, gradients, optimizer state, activations): the
    # kernel's high-water mark is reset before the model exists
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = _status_kib("VmRSS")
    torch.manual_seed(args.seed)
    model = ByteLM(ctx=args.ctx)
    if variant != "dense":
        density = args.density if variant == "sltrain" else 1e-9  # int(1e-9 * out * in) = 0: no sparse part
        convert_linears(model, rank=args.rank, density=density, alpha=args.alpha)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    n_train = int(len(data) * 0.95)
    train_data, val_data = data[:n_train], data[n_train:]
    g = torch.Generator().manual_seed(args.seed)

    def batch(src):
        i = torch.randint(0, len(src) - args.ctx - 1, (args.batch,), generator=g)
        x = torch.stack([src[j: j + args.ctx] for j in i])
        y = torch.stack([src[j + 1: j + args.ctx + 1] for j in i])
        return x, y

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    losses, times = [], []
    it = range(args.steps)
    bar = tqdm(it, desc=f"{variant:>8}", ncols=90, file=sys.stderr) if tqdm else it
    for step in bar:
        x, y = batch(train_data)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if tqdm:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    peak = (_status_kib("VmHWM") - rss0) * 1024
    model.eval()
    with torch.no_grad():
        vg = torch.Generator().manual_seed(123)
        vl = []
        for _ in range(args.val_batches):
            i = torch.randint(0, len(val_data) - args.ctx - 1, (args.batch,), generator=vg)
            x = torch.stack([val_data[j: j + args.ctx] for j in i])
            y = torch.stack([val_data[j + 1: j + args.ctx + 1] for j in i])
            vl.append(F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)).item())
    step_s = sorted(times[5:] or times)[len(times[5:] or times) // 2]
    return {"variant": variant, "trainable_params": params, "peak_rss_growth_bytes": peak, "median_step_s": step_s,
            "tokens_per_s": args.batch * args.ctx / step_s, "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
            "val_loss": sum(vl) / len(vl), "losses": losses}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--density", type=float, default=0.03)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-batches", type=int, default=20)
    ap.add_argument("--max-bytes", type=int, default=4_000_000)
    ap.add_argument("--variants", default="dense,sltrain,lowrank")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = corpus(args.max_bytes)
    meta = run_meta("cpu", corpus_bytes=len(data), **{k: v for k, v in vars(args).items() if k not in ("json", "plot", "one")})
    if not args.one:
        print(f"# SLTrain pretraining example  {meta['date']}  commit {meta['commit']}  ({len(data)} bytes of stdlib sources)")
    if args.one:
        # one variant in this (fresh) process: warm up first so one-time library buffers (MKL,
        # OpenMP pools, SDPA) are not charged to it, then measure
        warm = argparse.Namespace(**{**vars(args), "steps": 2, "val_batches": 1})
        train(args.one, data, warm)
        print("RESULT " + json.dumps(train(args.one, data, args)))
        return
    # every variant in its own process: freed memory of one would hide the next one's peak
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", v] + [
            a for k, val in vars(args).items() if k not in ("json", "plot", "one", "variants", "val_batches", "max_bytes")
            for a in (f"--{k}", str(val))] + ["--val-batches", str(args.val_batches), "--max-bytes", str(args.max_bytes)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        res = json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:])
        # peak memory from a separate short run in which glibc mmaps every allocation >= 64 KiB
        # (so freed memory leaves the resident set at once and the high-water mark is the peak of
        # live memory; timing that run would be unfair: every allocation faults pages in)
        mem_cmd = [c if c != str(args.steps) or cmd[i - 1] != "--steps" else "4" for i, c in enumerate(cmd)]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        mout = subprocess.run(mem_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True,
                              env=env).stdout
        res["peak_rss_growth_bytes"] = json.loads([l for l in mout.splitlines() if l.startswith("RESULT ")][-1][7:])[
            "peak_rss_growth_bytes"]
        results.append(res)
    print(f"{'variant':>8} {'params':>9} {'step ms':>8} {'tokens/s':>9} {'peak MiB':>9} {'train loss':>10} {'val loss':>9}")
    for r in results:
        print(f"{r['variant']:>8} {r['trainable_params']:>9} {r['median_step_s'] * 1e3:>8.1f} {r['tokens_per_s']:>9.0f} "
              f"{r['peak_rss_growth_bytes'] / 2**20:>9.1f} {r['final_train_loss']:>10.3f} {r['val_loss']:>9.3f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for r in results:
            l = torch.tensor(r["losses"])
            k = 10
            sm = torch.nn.functional.avg_pool1d(l.view(1, 1, -1), k, 1).view(-1) if len(l) > k else l
            ax.plot(range(k - 1, k - 1 + len(sm)) if len(l) > k else range(len(l)), sm,
                    label=f"{r['variant']} ({r['trainable_params'] / 1e6:.2f} M params, val {r['val_loss']:.2f})")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats / byte, 10-step mean)")
        ax.set_title("Byte-level LM on Python stdlib sources: dense vs SLTrain vs low-rank")
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"# wrote {args.plot}")


if __name__ == "__main__":
    main()
