"""Sparse-plus-low-rank (SLTrain) benchmark: structops.sparse_lowrank_linear vs SLTrain's own
algorithm (materialise W = s B A + S, F.linear, recompute W and form the dense G = g^T x in the
backward, as andyjm3/SLTrain's sparse_linear.cpp; re-implemented here as a torch.autograd.Function)
vs dense F.linear with a trainable weight, all in the same run (``make bench``).

Per case (in, out, tokens, rank, density), fwd+bwd times interleaved round-robin (x requires grad),
and the peak extra memory of one fwd+bwd: each contender runs once in a fresh subprocess and the
growth of its peak resident set over the inputs is reported (VmHWM after resetting it through
/proc/self/clear_refs; large tensors are mmap'd, so this tracks live allocations; ±1 MiB).
On CUDA (``--device cuda``, issue #11's GPU case: ``--dtype bfloat16 --cases 4096:4096:16384:128:0.03``)
the peak is ``torch.cuda.max_memory_allocated`` above the inputs during one warm fwd+bwd, in process.

    vs_sltrain = t(SLTrain algorithm) / t(structops);  vs_dense = t(dense F.linear) / t(structops)
    mem_ratio  = peak extra(structops) / peak extra(SLTrain algorithm); also beyond the output y and
                 the input gradient (T (in + out) floats every contender must hold), where the
                 transient W / G of the SLTrain algorithm show: "mem_ratio_beyond_io"
    GF/s       = useful FLOPs of structops' plan: 2 * (3 T r (in + out) + 3 T nnz) / t

Usage: python bench/bench_sparse_lowrank.py [--json out.json] [--quick] [--threads N]
       [--cases in:out:tokens:rank:density,...] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from _common import cuda_peak_bytes, interleaved_times, median, run_meta, write_json

import structops
from structops.nn.sltrain import random_support


class SLTrainAlgorithm(torch.autograd.Function):
    """SLTrain's released algorithm: W materialised in forward (not saved), recomputed in backward,
    dense G = g^T x, grad_B = G A^T, grad_A = B^T G, grad_values = G[idx]."""

    @staticmethod
    def forward(ctx, x, B, A, values, idx64, scale, bias):
        ctx.save_for_backward(x, B, A, values, idx64, bias)
        ctx.scale = scale
        W = (B @ (A * scale)).view(-1).scatter_add_(0, idx64, values).view(B.shape[0], A.shape[1])
        return F.linear(x, W, bias)

    @staticmethod
    def backward(ctx, g):
        x, B, A, values, idx64, bias = ctx.saved_tensors
        s = ctx.scale
        W = (B @ (A * s)).view(-1).scatter_add_(0, idx64, values).view(B.shape[0], A.shape[1])
        gx = g @ W
        G = g.t() @ x
        gB = G @ (A * s).t()
        gA = s * (B.t() @ G)
        gv = G.view(-1).gather(0, idx64)
        return gx, gB, gA, gv, None, None, g.sum(0) if bias is not None else None


def make(i, o, T, r, d, seed=0, device="cpu", dtype=torch.float32):
    """Inputs drawn on the CPU in float32 (the same values on every device), then moved."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(device=device, dtype=dtype)
    x = torch.randn(T, i, generator=g).to(**kw).requires_grad_()
    B = (torch.randn(o, r, generator=g) * 0.02).to(**kw).requires_grad_()
    A = (torch.randn(r, i, generator=g) / i**0.5).to(**kw).requires_grad_()
    idx = random_support(o, i, d, g).to(device)
    v = (torch.randn(idx.numel(), generator=g) / i**0.5).to(**kw).requires_grad_()
    b = torch.zeros(o, **kw).requires_grad_()
    gy = torch.randn(T, o, generator=g).to(**kw)
    return x, B, A, v, idx, b, gy


def step_fn(name, i, o, T, r, d, device="cpu", dtype=torch.float32):
    x, B, A, v, idx, b, gy = make(i, o, T, r, d, device=device, dtype=dtype)
    scale = 0.25
    if name == "structops":
        return lambda: structops.sparse_lowrank_linear(x, B, A, v, idx, scale, b).backward(gy)
    if name == "sltrain_algorithm":
        idx64 = idx.long()
        return lambda: SLTrainAlgorithm.apply(x, B, A, v, idx64, scale, b).backward(gy)
    lin = torch.nn.Linear(i, o).to(device=device, dtype=dtype)
    return lambda: lin(x).backward(gy)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_rss_growth(fn) -> int:
    """Bytes the peak resident set grows by while fn() runs (its second call: the first one pays
    one-time library buffers): the kernel's high-water mark is reset first (writing 5 to
    /proc/self/clear_refs), so the import-time peak does not hide it."""
    fn()
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def peak_extra_bytes(name, case, threads):
    """Peak RSS growth of one fwd+bwd in a fresh process (after building the inputs)."""
    code = (
        "import sys, torch; sys.path.insert(0, %r); import bench_sparse_lowrank as b; "
        "torch.set_num_threads(%d); f = b.step_fn(%r, *%r); import gc; gc.collect(); "
        "print(b._peak_rss_growth(f))"
    ) % (os.path.dirname(os.path.abspath(__file__)), threads, name, tuple(case))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cases", default=None, help="in:out:tokens:rank:density,...")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        sys.exit(2)
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cases:
        cases = [tuple(float(v) if k == 4 else int(v) for k, v in enumerate(c.split(":"))) for c in args.cases.split(",")]
    elif args.quick:
        cases = [(256, 256, 512, 16, 0.05)]
    else:
        cases = [(1024, 1024, 4096, 128, 0.03), (4096, 1024, 4096, 128, 0.03), (1024, 4096, 4096, 128, 0.03)]
    min_runs, min_seconds = (2, 0.1) if args.quick else (5, 1.0)
    meta = run_meta(args.device, dtype=args.dtype)
    print(f"# structops sparse+low-rank (SLTrain) benchmark  {meta['date']}  commit {meta['commit']}")
    print(f"# {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}; {args.dtype} fwd+bwd on {args.device}")
    hdr = (f"{'in':>5} {'out':>5} {'T':>5} {'r':>4} {'dens':>5} {'ours ms':>8} {'SLTrain ms':>10} {'dense ms':>8} "
           f"{'vs_SLT':>7} {'vs_dns':>7} {'GF/s':>5} {'peak MiB ours/SLT/dense':>24} {'mem_ratio':>9} {'beyond y,dx':>11}")
    print(hdr)
    print("-" * len(hdr))
    results = []
    for case in cases:
        i, o, T, r, d = case
        names = ("structops", "sltrain_algorithm", "dense_linear")
        fns = {n: step_fn(n, i, o, T, r, d, args.device, dtype) for n in names}
        times = interleaved_times(fns, args.device, min_runs, min_seconds)
        med = {k: median(v) for k, v in times.items()}
        if args.device == "cuda":
            peaks = {n: cuda_peak_bytes(f) for n, f in fns.items()}  # warm: timed above
        else:
            peaks = {n: peak_extra_bytes(n, case, torch.get_num_threads()) for n in names}
        nnz = int(d * o * i)
        flops = 2 * (3 * T * r * (i + o) + 3 * T * nnz)
        res = {"in": i, "out": o, "tokens": T, "rank": r, "density": d, "nnz": nnz,
               "ms": {k: v * 1e3 for k, v in med.items()}, "times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
               "peak_extra_bytes": peaks, "vs_sltrain": med["sltrain_algorithm"] / med["structops"],
               "vs_dense": med["dense_linear"] / med["structops"],
               "mem_ratio": peaks["structops"] / max(peaks["sltrain_algorithm"], 1), "gflops": flops / med["structops"] / 1e9}
        io = T * (i + o) * torch.finfo(dtype).bits // 8
        res["peak_beyond_io_bytes"] = {k: max(v - io, 0) for k, v in peaks.items()}
        res["mem_ratio_beyond_io"] = res["peak_beyond_io_bytes"]["structops"] / max(res["peak_beyond_io_bytes"]["sltrain_algorithm"], 1)
        results.append(res)
        mib = 1 / (1 << 20)
        print(f"{i:>5} {o:>5} {T:>5} {r:>4} {d:>5.2f} {res['ms']['structops']:>8.1f} {res['ms']['sltrain_algorithm']:>10.1f} "
              f"{res['ms']['dense_linear']:>8.1f} {res['vs_sltrain']:>6.2f}x {res['vs_dense']:>6.2f}x {res['gflops']:>5.0f} "
              f"{peaks['structops'] * mib:>8.1f}/{peaks['sltrain_algorithm'] * mib:.1f}/{peaks['dense_linear'] * mib:.1f} "
              f"{res['mem_ratio']:>9.2f} {res['mem_ratio_beyond_io']:>11.2f}")
    if args.json:
        write_json(args.json, meta, results)


if __name__ == "__main__":
    main()
