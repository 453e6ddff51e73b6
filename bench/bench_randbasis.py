"""Random-basis benchmark (RandLoRA, VeRA): structops' fused layers vs peft 0.21.2's RandLoRA,
VeRA and LoRA r=32 on the same layer, and dense F.linear, all measured in the same run
(``make bench``).

For every case (in, out, tokens) it times forward+backward (x requires grad, as inside a model;
the base weight frozen except for the dense contender) round-robin and measures what autograd
saves for backward with ``torch.autograd.graph.saved_tensors_hooks``:

    saved_extra  = activation bytes autograd keeps beyond x: saved tensors whose storage is
                   not a parameter or buffer of the model (those exist anyway; peft's basis
                   *views* are free, its freshly built scaled basis and fp32 x copy are not),
                   one count per storage
    saved_total  = the same including x
    min_GMAC     = minimal multiply-adds of the strategy structops picks (structops.ops.randbasis
                   .randbasis_plan; peft's factored count is T*R*(2 in + 2 out + d_min) + 2 T in out)
    GF/s         = 2 * min_GMAC / t;  vs_dense = GF/s / GF/s(dense F.linear fwd+bwd, 6 T in out)

Ratios: ``x_peft`` = t(peft same method) / t(structops), ``x_lora`` = t(peft LoRA r32) / t(ours).
A bf16-base pass (memory only, no timing: CPU bf16 GEMMs are not what users time) checks that no
float32 copy of x is saved.

On CUDA the peak memory of one forward+backward of each contender is recorded as well
(``torch.cuda.max_memory_allocated`` above the inputs), the number the GPU target is stated in.

Usage: python bench/bench_randbasis.py [--json out.json] [--quick] [--device cpu|cuda]
       [--dtype float32|bfloat16] [--threads N] [--cases in:out:tokens,...]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from _common import cuda_peak_bytes, interleaved_times, median, run_meta, write_json

import structops
from structops.nn import RandLoRALinear, VeRALinear
from structops.ops.randbasis import randbasis_plan

R_RANDLORA, R_VERA, R_LORA = 32, 256, 32


class _One(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def _peft_models(in_f, out_f, dtype, device):
    import peft

    out = {}
    for name, cfg in (("peft_randlora", peft.RandLoraConfig(r=R_RANDLORA, target_modules=["lin"])),
                      ("peft_vera", peft.VeraConfig(r=R_VERA, target_modules=["lin"])),
                      ("peft_lora", peft.LoraConfig(r=R_LORA, lora_alpha=2 * R_LORA, target_modules=["lin"]))):
        torch.manual_seed(0)
        m = peft.get_peft_model(_One(nn.Linear(in_f, out_f)).to(device=device, dtype=dtype), cfg)
        for p in m.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.02)
        out[name] = m
    return out


def _ours(in_f, out_f, dtype, device):
    torch.manual_seed(0)
    rl = RandLoRALinear(nn.Linear(in_f, out_f).to(device=device, dtype=dtype), r=R_RANDLORA)
    ve = VeRALinear(nn.Linear(in_f, out_f).to(device=device, dtype=dtype), r=R_VERA)
    for m in (rl, ve):
        for p in m.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.02)
    return {"structops_randlora": rl, "structops_vera": ve}


def _saved_bytes(fn, x, model):
    """(extra, total) activation bytes saved for backward by one forward, one count per storage,
    parameters and buffers of ``model`` excluded."""
    seen = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes() if t.numel() else 0)
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    xkey = x.untyped_storage().data_ptr()
    wkeys = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    total = sum(v for k, v in seen.items() if k not in wkeys)
    extra = total - seen.get(xkey, 0)
    return extra, total


def _peak_bytes(fn, device):
    return cuda_peak_bytes(fn) if device == "cuda" else None


def bench_case(in_f, out_f, tokens, device, min_runs, min_seconds, dtype=torch.float32, memory_bf16=True):
    torch.manual_seed(1)
    x = torch.randn(tokens, in_f, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(tokens, out_f, device=device, dtype=dtype)
    models = {**_ours(in_f, out_f, dtype, device), **_peft_models(in_f, out_f, dtype, device)}
    dense = nn.Linear(in_f, out_f).to(device=device, dtype=dtype)
    fns = {name: (lambda m=m: m(x).backward(g)) for name, m in models.items()}
    fns["dense_linear"] = lambda: dense(x).backward(g)
    times = interleaved_times(fns, device, min_runs, min_seconds)
    med = {k: median(v) for k, v in times.items()}
    d_min = min(in_f, out_f)
    n = -(-d_min // R_RANDLORA)
    R = R_RANDLORA * n
    plan_rl = randbasis_plan("randlora", tokens, in_f, out_f, R)
    plan_ve = randbasis_plan("vera", tokens, in_f, out_f, R_VERA)
    peft_rl_macs = tokens * R * (2 * in_f + 2 * out_f + d_min) + 2 * tokens * in_f * out_f
    dense_gfs = 6 * tokens * in_f * out_f / med["dense_linear"] / 1e9
    res = {"in": in_f, "out": out_f, "tokens": tokens, "dtype": str(dtype).replace("torch.", ""),
           "ms": {k: v * 1e3 for k, v in med.items()},
           "peak_bytes": {k: _peak_bytes(f, device) for k, f in fns.items()},
           "times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
           "plan_randlora": plan_rl, "plan_vera": plan_ve, "peft_randlora_min_macs": peft_rl_macs,
           "dense_gflops": dense_gfs}
    for method, plan in (("randlora", plan_rl), ("vera", plan_ve)):
        macs = plan["forward_macs"] + plan["backward_macs"]
        ours = med[f"structops_{method}"]
        gfs = 2 * macs / ours / 1e9
        res[method] = {"x_peft": med[f"peft_{method}"] / ours, "x_lora": med["peft_lora"] / ours,
                       "min_gmac": macs / 1e9, "gflops": gfs, "vs_dense_gflops": gfs / dense_gfs,
                       "paired_x_peft": median([p / o for p, o in zip(times[f"peft_{method}"], times[f"structops_{method}"])])}
    saved = {}
    for name, m in models.items():
        saved[name] = _saved_bytes(lambda m=m: m(x), x, m)
    res["saved_bytes"] = {k: {"extra": e, "total": t} for k, (e, t) in saved.items()}
    if not memory_bf16:
        return res
    # bf16 base: memory only
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    mb = {**_ours(in_f, out_f, torch.bfloat16, device), **_peft_models(in_f, out_f, torch.bfloat16, device)}
    res["saved_bytes_bf16"] = {}  # filled below
    for name, m in mb.items():
        e, t = _saved_bytes(lambda m=m: m(xb), xb, m)
        res["saved_bytes_bf16"][name] = {"extra": e, "total": t}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--quick", action="store_true", help="small cases, few repeats (smoke test)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the timed run")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--cases", default=None, help="comma-separated in:out:tokens, e.g. 1024:2816:2048")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        return
    try:
        import peft  # noqa: F401
    except ImportError:
        print("peft is not installed (pip install peft==0.21.2): nothing to compare against", file=sys.stderr)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cases:
        cases = [tuple(int(v) for v in c.split(":")) for c in args.cases.split(",")]
    elif args.quick:
        cases = [(256, 512, 256), (512, 256, 256)]
    else:
        cases = [(i, o, t) for (i, o) in ((1024, 1024), (1024, 2816), (2816, 1024)) for t in (2048, 8192)]
    min_runs, min_seconds = (2, 0.1) if args.quick else (5, 1.0)
    meta = run_meta(args.device, r_randlora=R_RANDLORA, r_vera=R_VERA, r_lora=R_LORA, peft=__import__("peft").__version__)
    print(f"# structops random-basis benchmark  {meta['date']}  commit {meta['commit']}")
    print(f"# {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}, peft {meta['peft']}; {args.dtype} fwd+bwd, "
          f"RandLoRA r={R_RANDLORA} (peft defaults), VeRA r={R_VERA}, LoRA r={R_LORA}")
    hdr = (f"{'in':>5} {'out':>5} {'T':>5} {'method':<9} {'ours ms':>8} {'peft ms':>8} {'LoRA ms':>8} {'dense ms':>8} "
           f"{'x_peft':>7} {'x_lora':>7} {'minGMAC':>8} {'GF/s':>6} {'vs_dns':>6} {'plan f/b':>16} "
           f"{'saved MiB ours/peft (x-extra)':>30} {'bf16 extra ours/peft':>21}")
    print(hdr)
    print("-" * len(hdr))
    out = []
    mib = 1 / (1 << 20)
    for (i, o, t) in cases:
        dt = getattr(torch, args.dtype)
        r = bench_case(i, o, t, args.device, min_runs, min_seconds, dt, memory_bf16=dt == torch.float32)
        out.append(r)
        for method in ("randlora", "vera"):
            m, ms, sb, sbb = r[method], r["ms"], r["saved_bytes"], r.get("saved_bytes_bf16", {})
            plan = r[f"plan_{method}"]
            so, sp = sb[f"structops_{method}"], sb[f"peft_{method}"]
            bo, bp = (sbb[f"structops_{method}"], sbb[f"peft_{method}"]) if sbb else ({"extra": 0}, {"extra": 0})
            print(f"{i:>5} {o:>5} {t:>5} {method:<9} {ms['structops_' + method]:>8.1f} {ms['peft_' + method]:>8.1f} "
                  f"{ms['peft_lora']:>8.1f} {ms['dense_linear']:>8.1f} {m['x_peft']:>6.2f}x {m['x_lora']:>6.2f}x "
                  f"{m['min_gmac']:>8.2f} {m['gflops']:>6.0f} {m['vs_dense_gflops']:>5.2f}x "
                  f"{plan['forward'] + '/' + plan['backward']:>16} "
                  f"{so['total'] * mib:>7.1f}/{sp['total'] * mib:<6.1f} ({so['extra'] * mib:>5.1f}/{sp['extra'] * mib:<5.1f}) "
                  f"{bo['extra'] * mib:>9.1f}/{bp['extra'] * mib:<9.1f}")
        if args.device == "cuda":
            pk = {k: v / (1 << 20) for k, v in r["peak_bytes"].items()}
            print(f"{'':>18}peak MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in pk.items()))
        print(f"{'':>18}LoRA r32 saved {r['saved_bytes']['peft_lora']['total'] * mib:.1f} MiB "
              f"(extra {r['saved_bytes']['peft_lora']['extra'] * mib:.1f}); dense {r['dense_gflops']:.0f} GF/s")
    if args.json:
        write_json(args.json, meta, out)


if __name__ == "__main__":
    main()
