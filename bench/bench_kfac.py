"""K-FAC benchmark: the batched structops K-FAC ops vs the per-layer loop of torch.linalg calls that
every K-FAC library runs (curvlinops, nngeometry, kfac-pytorch, Kronfluence), in the same run
(``make bench``).

Cases (float32 unless stated; timings interleaved round-robin, median):
  factor   A += x_augᵀ x_aug for T tokens of width d (bias folded): kfac_factor_update vs
           ``torch.cat([x, 1]) -> einsum`` (curvlinops' hook) — fp32 and bf16 activations
  inverse  (F + λI)⁻¹ for every factor of a set: kfac_damped_inverse vs a Python loop of
           cholesky + cholesky_inverse (curvlinops' KFACInverseLinearOperator)
  eigh     kfac_eigh vs a loop of torch.linalg.eigh (curvlinops' EK-FAC path, fp32), and vs the
           same loop in float64 (Kronfluence's default eigendecomposition dtype)
  precond  Q_S((Q_Sᵀ G Q_A) ⊘ (Λ + λ))Q_Aᵀ for every layer: kfac_precondition vs the torch chain
           per layer
Factor sets: 48 x 256² and the GPT-2-small-shaped 48 x 768² + 12 x 3072² (issue #12).  On CUDA
(``--device cuda``) the same cases run on the GPU (issue #12's GPU target: EK-FAC eigh of the
GPT-2 set ≥ 5x the per-layer loop on the same GPU); the baselines are the same loops (cuSOLVER).

    speedup = t(baseline) / t(structops)

Usage: python bench/bench_kfac.py [--json out.json] [--quick] [--threads N] [--only factor|sets]
       [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import interleaved_times, median, run_meta, write_json

import structops


def spd_set(shapes, dtype=torch.float32, seed=0, device="cpu"):
    """SPD factors drawn on the CPU (the same values on every device), then moved."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for L, n in shapes:
        x = torch.randn(L, n, n + 64, generator=g)
        out.append((x @ x.transpose(1, 2) / (n + 64)).to(device=device, dtype=dtype))
    return out


def timed(fns, runs, secs, device="cpu"):
    t = interleaved_times(fns, device, runs, secs)
    return {k: median(v) for k, v in t.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="small sets only (smoke test)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--only", choices=["factor", "sets"], help="run only the factor-update cases or only the factor sets")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args(argv)
    dev = a.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        sys.exit(2)
    if a.threads:
        torch.set_num_threads(a.threads)
    sets = {"48x256": [(48, 256)], "gpt2": [(48, 768), (12, 3072)]}
    if a.quick:
        sets = {"8x64": [(8, 64)], "4x192": [(4, 192)]}
    cases = []
    print(f"# K-FAC ops vs the per-layer torch.linalg loop ({dev}, float32 factors; speedup = baseline / structops)")
    print(f"{'case':<26}{'set':<10}{'structops ms':>14}{'baseline ms':>13}{'speedup':>9}  baseline")

    def report(case, set_name, ours, base, base_name, **extra):
        sp = base / ours
        print(f"{case:<26}{set_name:<10}{ours * 1e3:>14.1f}{base * 1e3:>13.1f}{sp:>8.2f}x  {base_name}")
        cases.append(dict(case=case, set=set_name, structops_s=ours, baseline_s=base, baseline=base_name, speedup=sp,
                          **extra))
        sys.stdout.flush()

    # factor update
    for d, T in ([] if a.only == "sets" else [(64, 512)] if a.quick else [(768, 4096), (3072, 2048)]):
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(T, d).to(device=dev, dtype=dt)
            F1 = torch.zeros(d + 1, d + 1, device=dev)
            F2 = torch.zeros(d + 1, d + 1, device=dev)

            def ours():
                structops.kfac_factor_update(F1, x, 1.0 / T, bias=True)

            def base():
                xa = torch.cat([x.float(), x.new_ones(T, 1, dtype=torch.float32)], 1)
                F2.add_(torch.einsum("bi,bj->ij", xa, xa).div_(T))

            t = timed({"ours": ours, "base": base}, 3, 0.5 if d < 3000 else 0.2, dev)
            report(f"factor d={d} T={T} {str(dt)[6:]}", "-", t["ours"], t["base"], "cat + einsum (curvlinops hook)")

    for set_name, shapes in ({} if a.only == "factor" else sets).items():
        facs = spd_set(shapes, device=dev)
        big = max(n for _, n in shapes) >= 3000
        runs, secs = (1, 0.0) if big else (3, 0.5)

        def inv_ours():
            for F in facs:
                structops.kfac_damped_inverse(F, 1e-3)

        def inv_loop():
            for F in facs:
                eye = torch.eye(F.shape[1], device=dev)
                [torch.cholesky_inverse(torch.linalg.cholesky(F[i] + 1e-3 * eye)) for i in range(F.shape[0])]

        t = timed({"ours": inv_ours, "loop": inv_loop}, runs, secs, dev)
        report("damped inverse", set_name, t["ours"], t["loop"], "loop cholesky+cholesky_inverse")

        def eig_ours():
            for F in facs:
                structops.kfac_eigh(F)

        def eig_loop():
            for F in facs:
                [torch.linalg.eigh(F[i]) for i in range(F.shape[0])]

        def eig_loop64():
            for F in facs:
                [torch.linalg.eigh(F[i].double()) for i in range(F.shape[0])]

        t = timed({"ours": eig_ours, "loop": eig_loop, "loop64": eig_loop64}, runs, secs, dev)
        report("eigh", set_name, t["ours"], t["loop"], "loop torch.linalg.eigh fp32")
        report("eigh", set_name, t["ours"], t["loop64"], "loop torch.linalg.eigh fp64 (Kronfluence)")

        # preconditioning: layers (out, in + 1) whose input factor is each set's factor
        layers = []
        for (L, n), F in zip(shapes, facs):
            out_dim = n
            g = torch.Generator().manual_seed(n)
            wA, QA = torch.linalg.eigh(F[:, :n, :n])
            S = spd_set([(L, out_dim)], seed=n, device=dev)[0]
            wS, QS = torch.linalg.eigh(S)
            G = torch.randn(L, out_dim, n, generator=g).to(dev)
            Lam = torch.rand(L, out_dim, n, generator=g).to(dev)
            layers.append((G, QS, QA, wS, wA, Lam))

        for kind in ("kfac", "ekfac"):
            def pre_ours():
                for G, QS, QA, wS, wA, Lam in layers:
                    if kind == "kfac":
                        structops.kfac_precondition(G, QS, QA, eigenvalues_S=wS, eigenvalues_A=wA, damping=1e-3)
                    else:
                        structops.kfac_precondition(G, QS, QA, eigenvalues=Lam, damping=1e-3)

            def pre_chain():
                for G, QS, QA, wS, wA, Lam in layers:
                    for l in range(G.shape[0]):
                        lam = torch.outer(wS[l], wA[l]) if kind == "kfac" else Lam[l]
                        QS[l] @ ((QS[l].T @ G[l] @ QA[l]) / (lam + 1e-3)) @ QA[l].T

            t = timed({"ours": pre_ours, "chain": pre_chain}, runs, secs, dev)
            report(f"precondition {kind}", set_name, t["ours"], t["chain"], "torch chain per layer")
    if a.json:
        write_json(a.json, run_meta(dev, suite="kfac"), cases)


if __name__ == "__main__":
    main()
