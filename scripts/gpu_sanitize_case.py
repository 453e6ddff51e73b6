"""One small multi-tile Monarch case with k != l, forward and backward, on both GEMM engines, and
small butterfly cases (one pass at n = 1024, several passes at n = 8192; real, bf16, complex64),
for `compute-sanitizer --tool memcheck` (scripts/gpu_check.sh).  Exits 0 and says so without a
GPU.  Small on purpose: memcheck slows kernels down ~100x."""

import os
import sys

import torch

import structops
from structops import reference


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_sanitize_case: no CUDA device, nothing to check")
        return 0
    torch.manual_seed(0)
    # (3, 72, 136 / 4, 80, 54): several 64/128-wide tiles per block, k != l, token split, P_mid as
    # a transpose; (2, 64, 96 / 4, 48, 32): q/l = 16, P_mid folded into the first factor
    worst = 0.0
    for (k, q, p, l, s, r), engine in [(sh, e) for sh in ((3, 72, 136, 4, 80, 54), (2, 64, 96, 4, 48, 32))
                                       for e in ("cutlass", "cublas")]:
        os.environ["STRUCTOPS_CUDA_GEMM"] = engine
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(2200, k * p, device="cuda", dtype=dtype, requires_grad=True)
            w1 = (torch.randn(k, q, p, device="cuda", dtype=dtype) / p**0.5).requires_grad_()
            w2 = (torch.randn(l, s, r, device="cuda", dtype=dtype) / r**0.5).requires_grad_()
            y = structops.monarch_matmul(x, w1, w2)
            grads = torch.autograd.grad(y.float().square().sum(), (x, w1, w2))
            ref = reference.monarch_matmul(x.double(), w1.double(), w2.double())
            err = ((y.double() - ref).norm() / ref.norm()).item()
            worst = max(worst, err)
            print(f"{(k, q, p, l, s, r)} {engine:8s} {str(dtype):15s} rel err {err:.2e}  grads finite {all(torch.isfinite(g).all().item() for g in grads)}")
    for log_n, dtype in [(10, torch.float32), (10, torch.bfloat16), (13, torch.float32), (13, torch.complex64)]:
        n = 1 << log_n
        tw = torch.randn(2, 2, log_n, n // 2, 2, 2, device="cuda") / 2**0.5
        x = torch.randn(5, 2, n - 3, device="cuda")
        if dtype.is_complex:
            tw, x = tw.to(dtype), x.to(dtype)
        tw, x = tw.to(dtype).requires_grad_(), x.to(dtype).requires_grad_()
        y = structops.butterfly_multiply(tw, x, False, n - 5)
        grads = torch.autograd.grad(y.abs().float().square().sum(), (tw, x))
        wide = torch.complex128 if dtype.is_complex else torch.float64
        ref = reference.butterfly_multiply(tw.detach().to(wide), x.detach().to(wide), False, n - 5)
        err = ((y.to(wide) - ref).norm() / ref.norm()).item()
        worst = max(worst, err)
        print(f"butterfly n={n} {str(dtype):15s} rel err {err:.2e}  grads finite {all(torch.isfinite(g).all().item() for g in grads)}")
    # RandLoRA / VeRA (both strategies, both orientations; bf16 compute, fp32 vectors)
    for (i, o, r) in [(96, 160, 8), (160, 96, 8)]:
        d_min, d_max = min(i, o), max(i, o)
        n = -(-d_min // r)
        x = torch.randn(37, i, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(o, i, device="cuda", dtype=torch.bfloat16) / i**0.5
        A = torch.randn(r, d_min, device="cuda", dtype=torch.bfloat16)
        B = torch.randn(d_max, r * n, device="cuda", dtype=torch.bfloat16)
        lam = torch.randn(r, n, device="cuda", requires_grad=True)
        gam = (torch.randn(n, d_min, device="cuda") / d_min).requires_grad_()
        for s in ("factored", "merged"):
            y = structops.randlora_linear(x, w, None, A, B, lam, gam, 2.0, s)
            grads = torch.autograd.grad(y.float().square().sum(), (x, lam, gam))
            ref = reference.randlora_linear(x.detach().double(), w.double(), None, A.double(), B.double(),
                                            lam.detach().double(), gam.detach().double(), 2.0)
            err = ((y.double() - ref).norm() / ref.norm()).item()
            worst = max(worst, err)
            print(f"randlora {i}x{o} {s:8s} rel err {err:.2e}  grads finite {all(torch.isfinite(g).all().item() for g in grads)}")
    torch.cuda.synchronize()
    return 0 if worst < 3e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
