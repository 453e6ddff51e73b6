"""Helpers every benchmark script shares: machine/commit metadata and interleaved timing."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time

import torch


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True).strip()
    except Exception:  # not a git checkout: report it rather than fail the benchmark
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def interleaved_times(fns: dict, device: str, min_runs: int, min_seconds: float) -> dict:
    """Wall times of every fn, timed round-robin (A, B, C, A, B, C, ...) so that slow drifts of
    the machine (other tenants, clocks) hit all contenders alike; one list per fn, entry i from
    round i.  One warm-up call each; CUDA is synchronised around every call."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for fn in fns.values():
        fn()
        sync()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_runs or (time.perf_counter() - start < min_seconds * len(fns) and rounds < 50):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def cuda_peak_bytes(fn) -> int:
    """Peak bytes the CUDA caching allocator holds above what is live before one call of fn()
    (call it warm: the first call's one-time buffers would count otherwise)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def run_meta(device: str, **extra) -> dict:
    """Date, commit, machine, threads, torch and structops build of this run (+ extra fields)."""
    import structops

    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": cpu_name() if device == "cpu" else torch.cuda.get_device_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
        **extra,
        "torch": torch.__version__,
        "structops": structops.build_info(),
    }
    return meta


def write_json(path: str, meta: dict, cases: list) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=2)
    print(f"# wrote {path}")
