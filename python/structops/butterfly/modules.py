"""Small modules the exact butterfly constructions are made of (torch_butterfly's names and
buffer/parameter names, so their state_dicts load unchanged)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["bitreversal_permutation", "FixedPermutation", "Diagonal", "Real2Complex", "Complex2Real"]


def bitreversal_permutation(n: int, pytorch_format: bool = True):
    """perm[i] = i with its log2(n) bits reversed (the FFT's input order).  A LongTensor (or a
    numpy array when ``pytorch_format=False``, as torch_butterfly)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"bitreversal_permutation: n must be a power of 2, got {n}")
    log_n = n.bit_length() - 1
    i = torch.arange(n)
    rev = torch.zeros_like(i)
    for b in range(log_n):
        rev |= ((i >> b) & 1) << (log_n - 1 - b)
    return rev if pytorch_format else rev.numpy()


class FixedPermutation(nn.Module):
    """y[..., i] = x[..., permutation[i]] (buffer ``permutation``)."""

    def __init__(self, permutation: Tensor) -> None:
        super().__init__()
        self.register_buffer("permutation", torch.as_tensor(permutation, dtype=torch.long))

    def forward(self, input: Tensor) -> Tensor:
        return input.index_select(-1, self.permutation)


class Diagonal(nn.Module):
    """y = x * diagonal (parameter ``diagonal``)."""

    def __init__(self, size=None, complex: bool = False, diagonal_init: Tensor | None = None):
        super().__init__()
        if diagonal_init is not None:
            self.size = tuple(diagonal_init.shape)
            self.diagonal = nn.Parameter(diagonal_init.detach().clone())
            self.complex = self.diagonal.is_complex()
        else:
            if size is None:
                raise ValueError("Diagonal: give size or diagonal_init")
            self.size = size
            dtype = torch.get_default_dtype()
            if complex:
                dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
            self.diagonal = nn.Parameter(torch.randn(size, dtype=dtype))
            self.complex = complex

    def forward(self, input: Tensor) -> Tensor:
        return input * self.diagonal


class Real2Complex(nn.Module):
    def forward(self, input: Tensor) -> Tensor:
        if input.is_complex():
            return input
        return torch.complex(input, torch.zeros_like(input))


class Complex2Real(nn.Module):
    def forward(self, input: Tensor) -> Tensor:
        return input.real if input.is_complex() else input
