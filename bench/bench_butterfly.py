"""Butterfly benchmark: structops.butterfly_multiply vs torch-structured's pure-torch
``butterfly_multiply_torch`` (what CPU users of torch_butterfly / torch-structured run) vs dense
F.linear of the same size, all measured in the same run (``make bench``).

For every case (batch, n, dtype, nblocks) it times the forward and the forward+backward
(``torch.autograd.grad`` for x and the twiddle / weight) round-robin and prints medians, two
throughputs and the ratios the performance targets are stated in:

    GF/s(bfly)   = butterfly FLOPs / t, butterfly FLOPs = 6 * batch * nblocks * log2(n) * n/2
                   per forward (real; complex x4), three times that for forward+backward
    GF/s(dense)  = dense-equivalent FLOPs / t = 2 * batch * n^2 (x3 for forward+backward)
    vs_torch     = t(torch-structured torch path) / t(structops)
    vs_dense     = t(dense F.linear) / t(structops)

Usage: python bench/bench_butterfly.py [--json out.json] [--quick] [--device cpu|cuda]
       [--threads N] [--cases batch:n:dtype:nblocks,...]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from _common import interleaved_times, median, run_meta, write_json

import structops
from structops import reference


def _upstream_torch_path():
    """torch-structured 1.3.0's pure-torch butterfly_multiply (its CPU path), or our own
    reference when it is not installed (reported as such)."""
    try:
        from torch_structured.butterfly.multiply import butterfly_multiply_torch

        return "torch_structured(torch)", butterfly_multiply_torch
    except Exception:  # missing, or its unconditional `import triton` failed
        return "reference(torch)", reference.butterfly_multiply


def bench_case(batch: int, n: int, dtype, nblocks: int, device: str, min_runs: int, min_seconds: float):
    torch.manual_seed(0)
    log_n = n.bit_length() - 1
    kw = dict(device=device, dtype=dtype)
    tw = (torch.randn(1, nblocks, log_n, n // 2, 2, 2, **kw) / math.sqrt(2)).requires_grad_()
    x = torch.randn(batch, 1, n, **kw, requires_grad=True)
    g = torch.randn(batch, 1, n, **kw)
    W = (torch.randn(n, n, **kw) / math.sqrt(n)).requires_grad_()
    xd = x.detach().reshape(batch, n).requires_grad_()
    gd = g.reshape(batch, n)
    up_name, up_fn = _upstream_torch_path()
    contenders = {
        "structops": (lambda: structops.butterfly_multiply(tw, x), (tw, x), g),
        up_name: (lambda: up_fn(tw, x, True, None), (tw, x), g),
        "dense": (lambda: F.linear(xd, W), (xd, W), gd),
    }
    fwd_fns, fwd_bwd_fns = {}, {}
    for name, (f, inputs, grad) in contenders.items():
        def fwd(f=f):
            with torch.no_grad():
                f()

        def fwd_bwd(f=f, inputs=inputs, grad=grad):
            torch.autograd.grad(f(), inputs, grad)

        fwd_fns[name], fwd_bwd_fns[name] = fwd, fwd_bwd
    r_fwd = interleaved_times(fwd_fns, device, min_runs, min_seconds)
    r_fb = interleaved_times(fwd_bwd_fns, device, min_runs, min_seconds)
    mult = 4 if dtype.is_complex else 1
    bfly_flops = 6.0 * batch * nblocks * log_n * (n // 2) * mult
    dense_flops = 2.0 * batch * n * n * mult
    results = {}
    for name in contenders:
        t_f, t_fb = median(r_fwd[name]), median(r_fb[name])
        flops = dense_flops if name == "dense" else bfly_flops
        results[name] = {
            "fwd_ms": 1e3 * t_f,
            "fwd_bwd_ms": 1e3 * t_fb,
            "fwd_bwd_gflops": 3 * flops / t_fb / 1e9,
            "fwd_bwd_dense_equiv_gflops": 3 * dense_flops / t_fb / 1e9,
        }
    so = results["structops"]
    summary = {
        "baseline_torch_path": up_name,
        "fwd_vs_torch": results[up_name]["fwd_ms"] / so["fwd_ms"],
        "fwd_bwd_vs_torch": results[up_name]["fwd_bwd_ms"] / so["fwd_bwd_ms"],
        "fwd_vs_dense": results["dense"]["fwd_ms"] / so["fwd_ms"],
        "fwd_bwd_vs_dense": results["dense"]["fwd_bwd_ms"] / so["fwd_bwd_ms"],
        "fwd_bwd_vs_torch_paired": median([b / a for a, b in zip(r_fb["structops"], r_fb[up_name])]),
        "fwd_bwd_vs_dense_paired": median([b / a for a, b in zip(r_fb["structops"], r_fb["dense"])]),
        "rounds": len(r_fb["structops"]),
    }
    return {"batch": batch, "n": n, "dtype": str(dtype).replace("torch.", ""), "nblocks": nblocks,
            "results": results, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--quick", action="store_true", help="small cases, few repeats (smoke test)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--cases", default=None, help="comma-separated batch:n:dtype:nblocks, e.g. 2048:1024:float32:1")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cases:
        cases = []
        for c in args.cases.split(","):
            b, n, dt, nb = c.split(":")
            cases.append((int(b), int(n), getattr(torch, dt), int(nb)))
        min_runs, min_seconds = 5, 1.0
    elif args.quick:
        cases = [(256, 256, torch.float32, 1), (256, 1024, torch.complex64, 1)]
        min_runs, min_seconds = 3, 0.2
    elif args.device == "cuda":
        cases = [(b, n, dt, 1) for b in (64, 2048) for n in (256, 1024, 4096) for dt in (torch.float32, torch.bfloat16)]
        cases += [(2048, 1024, torch.complex64, 1)]
        min_runs, min_seconds = 10, 0.5
    else:  # the targets: batch 2048, fp32, n in {256, 1024, 4096}; plus complex64 and two blocks
        cases = [(2048, n, torch.float32, 1) for n in (256, 1024, 4096)]
        cases += [(2048, 1024, torch.complex64, 1), (2048, 1024, torch.float32, 2)]
        min_runs, min_seconds = 5, 1.0

    meta = run_meta(args.device)
    print(f"# structops butterfly benchmark  {meta['date']}  commit {meta['commit']}")
    print(f"# {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}, "
          f"CPU kernels: {meta['structops']['cpu_isa_in_use']}")
    hdr = (f"{'batch':>5} {'n':>5} {'dtype':>9} {'nb':>2} {'impl':<24} {'fwd ms':>9} {'fwd+bwd ms':>11} "
           f"{'GF/s(bfly)':>10} {'GF/s(dense)':>11}")
    print(hdr)
    print("-" * len(hdr))
    out = []
    for batch, n, dt, nb in cases:
        r = bench_case(batch, n, dt, nb, args.device, min_runs, min_seconds)
        out.append(r)
        for name, m in r["results"].items():
            print(f"{batch:>5} {n:>5} {r['dtype']:>9} {nb:>2} {name:<24} {m['fwd_ms']:>9.2f} {m['fwd_bwd_ms']:>11.2f} "
                  f"{m['fwd_bwd_gflops']:>10.1f} {m['fwd_bwd_dense_equiv_gflops']:>11.0f}")
        s = r["summary"]
        print(f"{'':>24}fwd: {s['fwd_vs_torch']:.1f}x vs {s['baseline_torch_path']}, {s['fwd_vs_dense']:.1f}x vs dense; "
              f"fwd+bwd: {s['fwd_bwd_vs_torch']:.1f}x vs {s['baseline_torch_path']}, {s['fwd_bwd_vs_dense']:.1f}x vs dense "
              f"(paired per round: {s['fwd_bwd_vs_torch_paired']:.1f}x, {s['fwd_bwd_vs_dense_paired']:.1f}x; {s['rounds']} rounds)")
        print()
    if args.json:
        write_json(args.json, meta, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
