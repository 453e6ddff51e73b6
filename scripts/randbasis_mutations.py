"""Mutation check of the random-basis tests (DESIGN §6: every test must be able to fail).

Applies one deliberate bug at a time to the RandLoRA / VeRA sources, rebuilds when the C++
changed, runs tests/test_randbasis.py and restores the file; prints CAUGHT / MISSED per mutation
and exits non-zero if any was missed.  ~2 min (each C++ mutation relinks _C).

    .venv/bin/python scripts/randbasis_mutations.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

MUTATIONS = [
    ("pairing: Ahat rows basis-major instead of rank-major", "csrc/torch/randbasis_ops.h",
     "return ahat.reshape({r * n, d}).to(compute);", "return ahat.transpose(0, 1).reshape({r * n, d}).to(compute);"),
    ("merged panels ignore the scaling", "csrc/torch/randbasis_ops.h",
     "at::addmm_out(wp, W0->narrow(0, p0, pw), L.narrow(0, p0, pw), Rm, 1.0, alpha);",
     "at::addmm_out(wp, W0->narrow(0, p0, pw), L.narrow(0, p0, pw), Rm, 1.0, 1.0);"),
    ("h path drops the scaling of dAhat", "csrc/torch/randbasis_ops.h",
     "if (need_adapter) dahat = at::mm(h_saved.t(), g).mul_(scaling);", "if (need_adapter) dahat = at::mm(h_saved.t(), g);"),
    ("VeRA lambda_b gradient off by 1e-4", "csrc/torch/randbasis_ops.h",
     "dlb = at::mv(MB, ld);", "dlb = at::mv(MB, ld).mul_(1.0001);"),
    ("cost model miscounts the merged forward", "csrc/cpu/randbasis_plan.cpp",
     "c.forward_merged = O * R * I + T * O * I + (g.from_h ? T * I * R : 0.0);",
     "c.forward_merged = O * R * I + T * O * I * 3 + (g.from_h ? T * I * R : 0.0);"),
    ("RNG: A not std-normalised", "python/structops/randbasis/bases.py",
     "        return a / a.std(), b / b.std()\n    dt = generation_dtype", "        return a, b / b.std()\n    dt = generation_dtype"),
    ("RNG: kaiming a=sqrt(3)", "python/structops/randbasis/bases.py",
     "torch.empty((r, 1, d_min), dtype=dt), a=math.sqrt(5)", "torch.empty((r, 1, d_min), dtype=dt), a=math.sqrt(3)"),
    ("merge adds dW transposed on square layers", "python/structops/randbasis/merge.py",
     "    new = w.to(dw.dtype) + sign * dw",
     "    new = w.to(dw.dtype) + sign * dw.t() if dw.shape[0] == dw.shape[1] else w.to(dw.dtype) + sign * dw"),
    ("save_pretrained keeps the per-layer basis copies", "python/structops/compat/peft.py",
     "            continue  # a per-layer copy of the shared basis", "            pass  # a per-layer copy of the shared basis"),
    ("autograd always saves x", "python/structops/ops/randbasis.py",
     "    need_x = ctx.needs_input_grad[1] or (any(ctx.needs_input_grad[i] for i in (5, 6)) and not save_h)",
     "    need_x = True"),
    ("gamma init 1/min instead of 1/max", "python/structops/nn/randbasis.py",
     "torch.full((n, d_min), 1.0 / max(n, d_min)", "torch.full((n, d_min), 1.0 / min(n, d_min)"),
    ("peft merge transposes every delta", "python/structops/compat/peft.py",
     '    return dw.t() if getattr(layer, "fan_in_fan_out", False) else dw', "    return dw.t()"),
]


def build() -> bool:
    return subprocess.run(["make", "build"], cwd=ROOT, capture_output=True).returncode == 0


def main() -> int:
    missed = 0
    for name, rel, old, new in MUTATIONS:
        path = ROOT / rel
        src = path.read_text()
        if old not in src:
            print(f"STALE   {name}: anchor not found in {rel}")
            missed += 1
            continue
        path.write_text(src.replace(old, new, 1))
        try:
            if rel.startswith("csrc") and not build():
                print(f"CAUGHT  {name} (does not build)")
                continue
            r = subprocess.run([PY, "-m", "pytest", "-q", "-x", "tests/test_randbasis.py"], cwd=ROOT,
                               capture_output=True, text=True)
            caught = r.returncode != 0
            print(f"{'CAUGHT ' if caught else 'MISSED '} {name}: {r.stdout.strip().splitlines()[-1] if r.stdout else ''}")
            missed += not caught
        finally:
            path.write_text(src)
    build()
    print(f"{len(MUTATIONS) - missed}/{len(MUTATIONS)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
