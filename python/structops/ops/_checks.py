"""Argument checks shared by every op family (same wording as the C++ checks in csrc/torch).

Errors name the argument and what was expected: ``TypeError`` for a non-tensor, ``ValueError``
for shapes (raised by each family), ``RuntimeError`` for device/dtype mismatches.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shape_of(t: Tensor) -> tuple:
    return tuple(t.shape)


def autocasting(t: Tensor) -> bool:
    return torch.is_autocast_enabled(t.device.type)


def check_tensors(op: str, tensors: dict) -> None:
    """Every value of ``tensors`` ({argument name: value}) is a torch.Tensor."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_same_device_and_dtype(op: str, tensors: dict, complex_ok_on: tuple = ()) -> None:
    """All tensors on one device, floating point (complex where the device type is listed in
    ``complex_ok_on``), and of one dtype (outside autocast, which casts them)."""
    names, ts = list(tensors), list(tensors.values())
    first = ts[0]
    if not all(t.device == first.device for t in ts):
        devs = ", ".join(f"{n}: {t.device}" for n, t in zip(names, ts))
        raise RuntimeError(f"{op}: all inputs must be on the same device, got {devs}")
    for n, t in zip(names, ts):
        if t.is_complex():
            if t.device.type not in complex_ok_on:
                where = ", ".join(complex_ok_on) or "no device"
                raise RuntimeError(
                    f"{op}: complex {n} ({t.dtype}) is supported on {where} only, not on {t.device.type}; "
                    "compute on the CPU or split into real and imaginary parts"
                )
        elif not t.is_floating_point():
            raise RuntimeError(f"{op}: expected a floating-point or complex {n}, got {t.dtype}")
    if not autocasting(first) and not all(t.dtype == first.dtype for t in ts):
        dts = ", ".join(f"{n}: {t.dtype}" for n, t in zip(names, ts))
        raise RuntimeError(f"{op}: all inputs must have the same dtype, got {dts}")
