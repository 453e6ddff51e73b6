"""Monarch / block-diagonal benchmark: structops vs the fly-style bmm reference vs dense F.linear,
all measured in the same run (``make bench``).

For every shape (tokens x features) and block count it times the forward and the
forward+backward (``torch.autograd.grad`` for x and both factors, so no gradient accumulation
is timed) and prints a table of medians, achieved GFLOP/s (Monarch FLOPs) and the ratios the
performance targets are stated in:

    vs_bmm     = t(fly-style bmm) / t(structops)                        (ratio of medians)
    vs_dense   = t(dense F.linear, same in/out features) / t(structops)  (ratio of medians)
    *_paired   = the same ratios taken per round, then the median over rounds
    ideal      = dense FLOPs / Monarch FLOPs = n / (2 * block)
    of_ideal   = vs_dense / ideal

Usage: python bench/bench_monarch.py [--json out.json] [--quick] [--device cpu|cuda]
       [--dtype float32|bfloat16|float16] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

from _common import interleaved_times, median, run_meta, write_json

import structops
from structops import reference


def bench_case(tokens: int, n: int, nblocks: int, device: str, dtype, min_runs: int, min_seconds: float):
    torch.manual_seed(0)
    b = n // nblocks
    kw = dict(device=device, dtype=dtype)
    x = torch.randn(tokens, n, **kw, requires_grad=True)
    w1 = (torch.randn(nblocks, b, b, **kw) / math.sqrt(b)).requires_grad_()
    w2 = (torch.randn(nblocks, b, b, **kw) / math.sqrt(b)).requires_grad_()
    W = (torch.randn(n, n, **kw) / math.sqrt(n)).requires_grad_()
    g = torch.randn(tokens, n, **kw)

    contenders = {
        "structops": lambda: structops.monarch_matmul(x, w1, w2),  # default: saves the intermediate
        "structops(recompute)": lambda: structops.monarch_matmul(x, w1, w2, recompute=True),
        "bmm_reference": lambda: reference.monarch_matmul_bmm(x, w1, w2),
        "dense": lambda: F.linear(x, W),
    }
    if device == "cuda":  # each GEMM engine of structops (STRUCTOPS_CUDA_GEMM is read per call)
        for engine in ("cutlass", "cublas"):
            def run(engine=engine):
                os.environ["STRUCTOPS_CUDA_GEMM"] = engine
                try:
                    return structops.monarch_matmul(x, w1, w2)
                finally:
                    os.environ.pop("STRUCTOPS_CUDA_GEMM", None)
            contenders[f"structops[{engine}]"] = run
    params = {"dense": (x, W)}
    fwd_fns, fwd_bwd_fns = {}, {}
    for name, f in contenders.items():
        inputs = params.get(name, (x, w1, w2))

        def fwd(f=f):
            with torch.no_grad():
                f()

        def fwd_bwd(f=f, inputs=inputs):
            torch.autograd.grad(f(), inputs, g)

        fwd_fns[name], fwd_bwd_fns[name] = fwd, fwd_bwd
    rounds_fwd = interleaved_times(fwd_fns, device, min_runs, min_seconds)
    rounds_fwd_bwd = interleaved_times(fwd_bwd_fns, device, min_runs, min_seconds)
    t_fwd = {name: median(t) for name, t in rounds_fwd.items()}
    t_fwd_bwd = {name: median(t) for name, t in rounds_fwd_bwd.items()}
    results = {name: {"fwd_ms": 1e3 * t_fwd[name], "fwd_bwd_ms": 1e3 * t_fwd_bwd[name]} for name in contenders}

    def paired(baseline):  # median over rounds of t(baseline) / t(structops) in the same round
        return median([b / a for a, b in zip(rounds_fwd_bwd["structops"], rounds_fwd_bwd[baseline])])
    monarch_flops = 4.0 * tokens * n * b  # two block-diagonal factors, forward
    dense_flops = 2.0 * tokens * n * n
    ideal = dense_flops / monarch_flops
    for name, r in results.items():
        flops = dense_flops if name == "dense" else monarch_flops
        r["fwd_gflops"] = flops / (r["fwd_ms"] * 1e-3) / 1e9
        r["fwd_bwd_gflops"] = 3 * flops / (r["fwd_bwd_ms"] * 1e-3) / 1e9
    so = results["structops"]
    summary = {
        "ideal_speedup_vs_dense": ideal,
        "fwd_bwd_vs_bmm": results["bmm_reference"]["fwd_bwd_ms"] / so["fwd_bwd_ms"],
        "fwd_bwd_vs_dense": results["dense"]["fwd_bwd_ms"] / so["fwd_bwd_ms"],
        "fwd_vs_bmm": results["bmm_reference"]["fwd_ms"] / so["fwd_ms"],
        "fwd_vs_dense": results["dense"]["fwd_ms"] / so["fwd_ms"],
    }
    summary["fwd_bwd_of_ideal"] = summary["fwd_bwd_vs_dense"] / ideal
    # The same ratios paired round by round: less sensitive to the machine changing speed
    # between rounds (on a shared VM it does, by tens of percent).
    summary["fwd_bwd_vs_bmm_paired"] = paired("bmm_reference")
    summary["fwd_bwd_vs_dense_paired"] = paired("dense")
    summary["rounds"] = len(rounds_fwd_bwd["structops"])
    best = min(("structops", "structops(recompute)"), key=lambda k: results[k]["fwd_bwd_ms"])
    summary["best_structops_variant"] = best
    summary["best_fwd_bwd_vs_bmm"] = results["bmm_reference"]["fwd_bwd_ms"] / results[best]["fwd_bwd_ms"]
    summary["best_fwd_bwd_vs_dense"] = results["dense"]["fwd_bwd_ms"] / results[best]["fwd_bwd_ms"]
    summary["best_fwd_bwd_of_ideal"] = summary["best_fwd_bwd_vs_dense"] / ideal
    for name in results:
        if name.startswith("structops["):
            t = results[name]["fwd_bwd_ms"]
            summary[f"{name}_fwd_bwd_vs_dense"] = results["dense"]["fwd_bwd_ms"] / t
            summary[f"{name}_fwd_bwd_vs_bmm"] = results["bmm_reference"]["fwd_bwd_ms"] / t
    return {"tokens": tokens, "n": n, "nblocks": nblocks, "block": b, "results": results, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke test)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--cases", default=None, help="comma-separated tokens:n:nblocks, e.g. 8192:1024:4")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.cases:
        cases = [tuple(int(v) for v in c.split(":")) for c in args.cases.split(",")]
        min_runs, min_seconds = 7, 1.0
    elif args.quick:
        cases = [(512, 256, 4), (512, 256, 16)]
        min_runs, min_seconds = 3, 0.2
    elif args.device == "cuda":
        cases = [(t, n, nb) for t in (8192, 65536) for n in (1024, 4096) for nb in (4, int(math.isqrt(n)))]
        min_runs, min_seconds = 10, 0.5
    else:
        cases = [(8192, 1024, 32), (8192, 1024, 4), (4096, 4096, 64), (4096, 4096, 4)]
        min_runs, min_seconds = 7, 1.0

    meta = run_meta(args.device, dtype=str(dtype).replace("torch.", ""))
    print(f"# structops Monarch benchmark  {meta['date']}  commit {meta['commit']}")
    print(f"# {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}, {meta['dtype']}, "
          f"CPU kernels: {meta['structops']['cpu_isa_in_use']}")
    hdr = f"{'tokens':>6} {'n':>5} {'nb':>3} {'impl':<22} {'fwd ms':>9} {'fwd+bwd ms':>11} {'GFLOP/s':>8}"
    print(hdr)
    print("-" * len(hdr))
    out = []
    for tokens, n, nb in cases:
        r = bench_case(tokens, n, nb, args.device, dtype, min_runs, min_seconds)
        out.append(r)
        for name, m in r["results"].items():
            print(f"{tokens:>6} {n:>5} {nb:>3} {name:<22} {m['fwd_ms']:>9.1f} {m['fwd_bwd_ms']:>11.1f} "
                  f"{m['fwd_bwd_gflops']:>8.0f}")
        s = r["summary"]
        print(f"{'':>17}fwd+bwd: {s['fwd_bwd_vs_bmm']:.2f}x vs bmm, {s['fwd_bwd_vs_dense']:.2f}x vs dense "
              f"(ideal {s['ideal_speedup_vs_dense']:.0f}x -> {s['fwd_bwd_of_ideal']:.2f} of ideal); "
              f"paired per round: {s['fwd_bwd_vs_bmm_paired']:.2f}x vs bmm, "
              f"{s['fwd_bwd_vs_dense_paired']:.2f}x vs dense ({s['rounds']} rounds); "
              f"best variant {s['best_structops_variant']}: {s['best_fwd_bwd_vs_bmm']:.2f}x vs bmm, "
              f"{s['best_fwd_bwd_vs_dense']:.2f}x vs dense ({s['best_fwd_bwd_of_ideal']:.2f} of ideal)")
        for key in [k for k in s if k.startswith("structops[") and k.endswith("_vs_dense")]:
            eng = key[: -len("_fwd_bwd_vs_dense")]
            print(f"{'':>17}{eng}: {s[key]:.2f}x vs dense, {s[eng + '_fwd_bwd_vs_bmm']:.2f}x vs bmm (fwd+bwd)")
        print()
    if args.json:
        write_json(args.json, meta, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
