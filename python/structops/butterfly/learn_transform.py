"""Learn a fast transform by gradient descent on butterfly parameters (Dao et al., ICML 2019).

    python -m structops.butterfly.learn_transform --transform dft --n 256
    python -m structops.butterfly.learn_transform --transform hadamard --n 1024 --png loss.png

A ``structops.nn.Butterfly(n, n, complex=..., bias=False)`` with random orthogonal / unitary
twiddles ('ortho' init) is fitted to the target matrix T by Adam (cosine learning-rate decay) on
the mean squared error over the n unit vectors, i.e. ``||B P - T||_F^2 / n``, in float64 /
complex128.  P is the fixed bit-reversal permutation for the DFT and iDFT (the paper's "BP"
model with the permutation fixed to the one the FFT uses, which the paper allows; learning P as
well is not implemented) and the identity for the Hadamard transform.  A run that ends above the
tolerance is restarted from a fresh random init with the next seed, up to ``--restarts`` times.

Targets (unitary normalisation): 'dft' = torch.fft.fft(norm='ortho'), 'idft' = ifft(norm='ortho'),
'hadamard' = the Sylvester Hadamard matrix / sqrt(n).  The result reports the relative Frobenius
error ||B P - T||_F / ||T||_F, the restarts used, steps and wall time; ``--png`` writes the loss
curve, ``--json`` the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from ..nn.butterfly import Butterfly
from .modules import bitreversal_permutation

__all__ = ["learn_transform", "target_matrix"]

TRANSFORMS = ("dft", "idft", "hadamard")


def target_matrix(transform: str, n: int) -> torch.Tensor:
    """(n, n) target T (complex128 for the DFTs, float64 for Hadamard); T @ x is the transform."""
    eye = torch.eye(n, dtype=torch.complex128)
    if transform == "dft":
        return torch.fft.fft(eye, dim=0, norm="ortho")
    if transform == "idft":
        return torch.fft.ifft(eye, dim=0, norm="ortho")
    if transform == "hadamard":
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < n:
            h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
        return h / math.sqrt(n)
    raise ValueError(f"learn_transform: transform must be one of {TRANSFORMS}, got {transform!r}")


def _fit_once(transform: str, n: int, steps: int, lr: float, seed: int, progress):
    target = target_matrix(transform, n)
    complex_ = target.is_complex()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    old_default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = Butterfly(n, n, bias=False, complex=complex_, init="ortho")
    finally:
        torch.set_default_dtype(old_default)
        torch.random.set_rng_state(gen_state)
    # row j of `inputs` is the unit vector P e_j, so row j of model(inputs) is (B P)[:, j]
    perm = bitreversal_permutation(n) if transform in ("dft", "idft") else torch.arange(n)
    inputs = torch.eye(n, dtype=target.dtype)[perm]
    want = target.T.contiguous()
    norm2 = want.abs().pow(2).sum()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for step in range(steps):
        out = model(inputs)
        loss = (out - want).abs().pow(2).sum() / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
            if step % 50 == 0:
                progress.set_postfix(loss=f"{losses[-1]:.2e}")
    with torch.no_grad():
        rel = ((model(inputs) - want).abs().pow(2).sum() / norm2).sqrt().item()
    return rel, losses, model


def learn_transform(transform: str = "dft", n: int = 64, steps: int | None = None, lr: float = 0.03,
                    restarts: int = 3, tol: float = 1e-4, seed: int = 0, progress: bool = False) -> dict:
    """Fit a butterfly to ``transform`` of size n.  Returns a dict with rel_err (relative
    Frobenius error of the best run), success (rel_err <= tol), restarts_used, steps, seconds,
    losses (the best run's curve) and model (the fitted Butterfly)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"learn_transform: transform must be one of {TRANSFORMS}, got {transform!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n & (n - 1):
        raise ValueError(f"learn_transform: n must be a power of 2 >= 2, got {n!r}")
    if steps is None:
        steps = 1000 if n <= 64 else 2000
    if steps < 1 or restarts < 0 or lr <= 0:
        raise ValueError("learn_transform: need steps >= 1, restarts >= 0, lr > 0")
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps * (restarts + 1), desc=f"{transform} n={n}", dynamic_ncols=True)
        except ImportError:
            bar = None
    t0 = time.perf_counter()
    best = None
    tries = 0
    for r in range(restarts + 1):
        tries = r + 1
        rel, losses, model = _fit_once(transform, n, steps, lr, seed + r, bar)
        if best is None or rel < best[0]:
            best = (rel, losses, model)
        if rel <= tol:
            break
    if bar is not None:
        bar.close()
    rel, losses, model = best
    return {
        "transform": transform,
        "n": n,
        "rel_err": rel,
        "success": rel <= tol,
        "tol": tol,
        "restarts_used": tries - 1,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "seconds": time.perf_counter() - t0,
        "losses": losses,
        "model": model,
    }


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(result["losses"])
    ax.set_xlabel("Adam step")
    ax.set_ylabel("||BP - T||_F^2 / n")
    ax.set_title(f"learning the {result['transform']} of size {result['n']}: rel. Frobenius error "
                 f"{result['rel_err']:.1e}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m structops.butterfly.learn_transform", description=__doc__.split("\n\n")[0])
    ap.add_argument("--transform", default="dft", choices=TRANSFORMS)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="Adam steps per run (default 1000 for n <= 64, else 2000)")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--restarts", type=int, default=3, help="fresh random inits tried after a run misses --tol")
    ap.add_argument("--tol", type=float, default=1e-4, help="target relative Frobenius error")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default=None, help="write the loss curve here")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    res = learn_transform(args.transform, args.n, args.steps, args.lr, args.restarts, args.tol, args.seed,
                          progress=not args.no_progress)
    print(f"{res['transform']} n={res['n']}: relative Frobenius error {res['rel_err']:.3e} "
          f"({'reached' if res['success'] else 'MISSED'} tol {res['tol']:.0e}) after {res['restarts_used']} restart(s), "
          f"{res['steps']} steps/run, {res['seconds']:.1f} s")
    if args.png:
        _plot(res, args.png)
        print(f"loss curve: {args.png}")
    if args.json:
        out = {k: v for k, v in res.items() if k not in ("model",)}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if res["success"] else 1


if __name__ == "__main__":
    sys.exit(main())
