#!/usr/bin/env python3
"""Proves, without a GPU, that the GEMM engine's bf16/fp16 kernels run on tensor cores.

Disassembles the built extension (cuobjdump -sass, which needs nvdisasm on PATH), counts the
math instructions of every kernel in every cubin, and fails unless, for each required arch,
there is at least one bf16 and one fp16 tensor-op GEMM kernel and every such kernel contains
HMMA (sm_80) or HMMA/HGMMA (sm_90a) instructions.  Prints a table (and --json writes it).

    python scripts/check_sass.py [--so PATH] [--cuobjdump PATH] [--arch sm_80 --arch sm_90a] [--json out.json]

Install the tools with `pip install --target DIR nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`
(DIR/nvidia/cu13/bin) or pass --cuobjdump.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys

MATH = ("HMMA", "HGMMA", "DMMA", "IMMA", "FFMA", "DFMA")


def kernel_class(name: str) -> str:
    """'<dtype> tensorop|simt' for a CUTLASS GEMM kernel (from the mangled element type of A),
    'other' for everything else."""
    m = re.search(r"GemmUniversalI(NS_10bfloat16_tE|NS_6half_tE|f|d)", name)
    if "cutlass" not in name or not m:
        return "other"
    dt = {"NS_10bfloat16_tE": "bf16", "NS_6half_tE": "fp16", "f": "fp32", "d": "fp64"}[m.group(1)]
    tensor = "OpClassTensorOp" in name
    if dt == "fp32" and tensor:
        dt = "tf32"
    return f"{dt} {'tensorop' if tensor else 'simt'}"


def parse(sass: str):
    """Yields (arch, function, counts) for every function of every cubin."""
    arch, fn, counts = None, None, None
    for line in sass.splitlines():
        m = re.search(r"code for (sm_\w+)", line)
        if m:
            if fn:
                yield arch, fn, counts
            arch, fn, counts = m.group(1), None, None
            continue
        m = re.search(r"Function : (\S+)", line)
        if m:
            if fn:
                yield arch, fn, counts
            fn, counts = m.group(1), collections.Counter()
            continue
        if fn is not None:
            m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
            if m:
                op = m.group(1)
                for k in MATH:
                    if op == k:
                        counts[k] += 1
    if fn:
        yield arch, fn, counts


def find_tool(explicit: str | None) -> str:
    if explicit:
        return explicit
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for c in (os.path.join(here, "build", "ci-tools", "nvidia", "cu13", "bin", "cuobjdump"), shutil.which("cuobjdump")):
        if c and os.path.exists(c):
            return c
    sys.exit("check_sass: cuobjdump not found (pip install --target build/ci-tools nvidia-cuda-cuobjdump "
             "nvidia-cuda-nvdisasm, or pass --cuobjdump)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", help="the extension module (default: structops._C of this Python)")
    ap.add_argument("--cuobjdump")
    ap.add_argument("--arch", action="append", help="required cubin arch (default: sm_80 and sm_90a)")
    ap.add_argument("--json")
    args = ap.parse_args()
    so = args.so
    if not so:
        import importlib.util

        spec = importlib.util.find_spec("structops._C")
        if spec is None or not spec.origin:
            sys.exit("check_sass: structops._C not found; build first or pass --so")
        so = spec.origin
    tool = find_tool(args.cuobjdump)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(tool) + os.pathsep + env.get("PATH", "")
    out = subprocess.run([tool, "-sass", so], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"check_sass: {tool} -sass failed: {out.stderr.strip()}")
    required = args.arch or ["sm_80", "sm_90a"]

    table = collections.defaultdict(lambda: collections.Counter())  # (arch, class) -> counts
    kernels = collections.defaultdict(int)
    bad = []
    for arch, fn, counts in parse(out.stdout):
        cls = kernel_class(fn)
        kernels[(arch, cls)] += 1
        table[(arch, cls)].update(counts)
        if cls in ("bf16 tensorop", "fp16 tensorop"):
            tc = counts["HMMA"] + (counts["HGMMA"] if arch.startswith("sm_90") else 0)
            if tc == 0:
                bad.append(f"{arch} {cls} kernel without tensor-core instructions: {fn[:120]}...")
    print(f"SASS of {so}")
    print(f"{'arch':8s} {'kernel class':16s} {'kernels':>7s} " + " ".join(f"{k:>7s}" for k in MATH))
    rows = []
    for (arch, cls) in sorted(table):
        c = table[(arch, cls)]
        print(f"{arch:8s} {cls:16s} {kernels[(arch, cls)]:7d} " + " ".join(f"{c[k]:7d}" for k in MATH))
        rows.append({"arch": arch, "class": cls, "kernels": kernels[(arch, cls)], **{k: c[k] for k in MATH}})
    for arch in required:
        for cls in ("bf16 tensorop", "fp16 tensorop"):
            if kernels[(arch, cls)] == 0:
                bad.append(f"no {cls} GEMM kernel in the {arch} cubins")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"so": so, "rows": rows, "errors": bad}, f, indent=1)
    if bad:
        print("check_sass: FAILED\n  " + "\n  ".join(bad))
        return 1
    print(f"check_sass: ok — every bf16/fp16 tensor-op GEMM kernel in {', '.join(required)} uses HMMA/HGMMA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
