"""Butterfly layers, state_dict-compatible with torch_butterfly (and torch-structured's copy).

``Butterfly(in_size, out_size, bias=True, complex=False, increasing_stride=True, init='randn',
nblocks=1)``:

* n = 2^ceil(log2(in_size)) (inputs are zero-padded to n), nstacks = ceil(out_size / n)
  independent butterflies on the same input whose outputs are concatenated and truncated to
  out_size; ``nblocks`` butterfly factors B, B^T, B, ... in sequence.
* Parameters ``twiddle`` (nstacks, nblocks, log_n, n/2, 2, 2) (complex dtype when
  ``complex=True``) and ``bias`` (out_size,), U(+-1/sqrt(in_size)); ``twiddle._is_structured``
  is True (a hint to exclude it from weight decay).
* ``init``: 'randn' (N(0, 1/2) entries), 'ortho' (random 2x2 rotations/reflections, Haar U(2)
  when complex), 'identity', 'fft_no_br' / 'ifft_no_br' (complex only: the normalised
  (i)FFT without its bit-reversal in the first block, identity in the others), or a tensor of the
  twiddle's shape and dtype.
* ``forward(x, transpose=False, conjugate=False, subtwiddle=False)`` as upstream; ``to_dense()``
  returns the (out_size, in_size) matrix with ``layer(x) == x @ to_dense().T + bias``.

``ButterflyUnitary`` parameterises each 2x2 factor by four angles (phi, alpha, psi, chi) and is
unitary by construction; ``ButterflyBmm`` applies ``matrix_batch`` independent butterflies to
inputs of shape (..., matrix_batch, in_size).

Deliberate differences (supersets): a real input to a complex layer is promoted to the
complex dtype (torch_butterfly raises a dtype error); invalid arguments raise ``ValueError``
instead of ``AssertionError``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from ..ops.butterfly import butterfly_multiply

__all__ = ["Butterfly", "ButterflyUnitary", "ButterflyBmm"]

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128, torch.float16: torch.complex32}
_INITS = ("empty", "randn", "ortho", "identity", "fft_no_br", "ifft_no_br")


def _log2_ceil(size: int) -> int:
    return int(math.ceil(math.log2(size))) if size > 1 else 0


def _check_sizes(cls: str, in_size, out_size, nblocks) -> None:
    for name, v in (("in_size", in_size), ("out_size", out_size), ("nblocks", nblocks)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")


def ortho_twiddle(shape, complex: bool, dtype=None) -> Tensor:
    """Random orthogonal (real: rotation or reflection) / Haar-unitary 2x2 twiddles of
    shape (..., 2, 2), drawn as torch_butterfly's 'ortho' init (same RNG consumption)."""
    core = tuple(shape[:-2])
    if not complex:
        theta = torch.rand(core) * math.pi * 2
        c, s = torch.cos(theta), torch.sin(theta)
        det = torch.randint(0, 2, core, dtype=c.dtype) * 2 - 1
        t = torch.stack((torch.stack((det * c, -det * s), dim=-1), torch.stack((s, c), dim=-1)), dim=-2)
    else:
        phi = torch.asin(torch.sqrt(torch.rand(core)))
        c, s = torch.cos(phi), torch.sin(phi)
        alpha, psi, chi = torch.rand((3,) + core) * math.pi * 2
        a = torch.exp(1j * (alpha + psi)) * c
        b = torch.exp(1j * (alpha + chi)) * s
        cc = -torch.exp(1j * (alpha - chi)) * s
        d = torch.exp(1j * (alpha - psi)) * c
        t = torch.stack((torch.stack((a, b), dim=-1), torch.stack((cc, d), dim=-1)), dim=-2)
    return t if dtype is None else t.to(dtype)


class Butterfly(nn.Module):
    """Product of nblocks * log2(n) butterfly factors, a drop-in for ``nn.Linear`` (see the
    module docstring for shapes, inits and the torch_butterfly compatibility rules)."""

    def __init__(self, in_size, out_size, bias=True, complex=False, increasing_stride=True, init="randn", nblocks=1):
        super().__init__()
        log_n, n = self._set_sizes(in_size, out_size, complex, increasing_stride, nblocks)
        default = torch.get_default_dtype()
        dtype = _COMPLEX_OF[default] if complex else default
        shape = (self.nstacks, nblocks, log_n, n // 2, 2, 2)
        if isinstance(init, Tensor):
            if tuple(init.shape) != shape or init.dtype != dtype:
                raise ValueError(
                    f"{type(self).__name__}: init tensor must have shape {shape} and dtype {dtype}, "
                    f"got {tuple(init.shape)} {init.dtype}"
                )
            self.init = None
            self.twiddle = nn.Parameter(init.detach().clone())
        else:
            if init not in _INITS:
                raise ValueError(f"{type(self).__name__}: init must be a tensor or one of {_INITS}, got {init!r}")
            if init in ("fft_no_br", "ifft_no_br") and not complex:
                raise ValueError(f"{type(self).__name__}: init={init!r} needs complex=True")
            self.init = init
            self.twiddle = nn.Parameter(torch.empty(shape, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_size, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.twiddle._is_structured = True
        self.reset_parameters()

    def _set_sizes(self, in_size, out_size, complex, increasing_stride, nblocks):
        """torch_butterfly's size rule: n = 2^ceil(log2 in_size), nstacks = ceil(out_size / n)."""
        _check_sizes(type(self).__name__, in_size, out_size, nblocks)
        self.in_size = in_size
        self.log_n = log_n = _log2_ceil(in_size)
        self.n = n = 1 << log_n
        self.out_size = out_size
        self.nstacks = int(math.ceil(out_size / n))
        self.complex = complex
        self.increasing_stride = increasing_stride
        self.nblocks = nblocks
        return log_n, n

    def reset_parameters(self):
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_size)
            nn.init.uniform_(self.bias, -bound, bound)
        tw = self.twiddle
        if self.init is None or self.init == "empty":
            return
        with torch.no_grad():
            if self.init == "randn":
                tw.copy_(torch.randn(tw.shape, dtype=tw.dtype) * (1.0 / math.sqrt(2)))
            elif self.init == "ortho":
                tw.copy_(ortho_twiddle(tw.shape, self.complex))
            elif self.init == "identity":
                tw.copy_(torch.eye(2, dtype=tw.dtype).expand(tw.shape))
            else:  # fft_no_br / ifft_no_br
                from ..butterfly import special

                make = special.fft if self.init == "fft_no_br" else special.ifft
                b = make(self.n, normalized=True, br_first=self.increasing_stride, with_br_perm=False)
                tw[:, 0] = b.twiddle.to(tw.dtype)
                if self.nblocks > 1:
                    tw[:, 1:] = torch.eye(2, dtype=tw.dtype).expand(tw[:, 1:].shape)

    # ---- the effective twiddle (ButterflyUnitary overrides) ---------------------------------
    def _twiddle(self) -> Tensor:
        return self.twiddle

    def forward(self, input: Tensor, transpose: bool = False, conjugate: bool = False, subtwiddle: bool = False) -> Tensor:
        twiddle = self._twiddle()
        if self.complex and not input.is_complex():
            input = input.to(twiddle.dtype)
        x = self.pre_process(input)
        output_size = self.out_size if self.nstacks == 1 else None
        increasing = self.increasing_stride
        if subtwiddle:
            log_n = _log2_ceil(input.size(-1))
            n = 1 << log_n
            twiddle = twiddle[:, :, :log_n, : n // 2] if increasing else twiddle[:, :, twiddle.shape[2] - log_n :, : n // 2]
            output_size = None
        if conjugate and self.complex:
            twiddle = twiddle.conj()
        if transpose:
            twiddle = twiddle.transpose(-1, -2).flip([1, 2])
            last_increasing = self.increasing_stride != ((self.nblocks - 1) % 2 == 1)
            increasing = not last_increasing
        out = butterfly_multiply(twiddle, x, increasing, output_size)
        return self.post_process(input, out, out_size=out.size(-1) if subtwiddle else None)

    def pre_process(self, input: Tensor) -> Tensor:
        if input.dim() == 0:
            raise ValueError(f"{type(self).__name__}: input must have shape (..., in_size), got a 0-d tensor")
        size = input.size(-1)
        x = input.reshape(-1, size)
        return x.unsqueeze(1).expand(x.shape[0], self.nstacks, size)

    def post_process(self, input: Tensor, output: Tensor, out_size=None) -> Tensor:
        out_size = self.out_size if out_size is None else out_size
        batch = output.shape[0]
        output = output.reshape(batch, self.nstacks * output.size(-1))
        if out_size != output.shape[-1]:
            output = output[:, :out_size]
        if self.bias is not None:
            output = output + self.bias[:out_size]
        return output.view(*input.shape[:-1], out_size)

    @torch.no_grad()
    def to_dense(self) -> Tensor:
        """The (out_size, in_size) matrix M with ``forward(x) == x @ M.T + bias`` (bias excluded)."""
        dtype = self._twiddle().dtype
        eye = torch.eye(self.in_size, dtype=dtype, device=self.twiddle.device)
        bias, self.bias = self.bias, None
        try:
            return self.forward(eye).T.contiguous()
        finally:
            self.bias = bias

    def __imul__(self, scale):
        if not isinstance(scale, numbers.Number) or scale < 0:
            raise ValueError(f"{type(self).__name__}: can only scale by a non-negative number, got {scale!r}")
        with torch.no_grad():
            self.twiddle *= scale ** (1.0 / self.twiddle.shape[1] / self.twiddle.shape[2])
        return self

    def extra_repr(self) -> str:
        return (
            f"in_size={self.in_size}, out_size={self.out_size}, bias={self.bias is not None}, "
            f"complex={self.complex}, increasing_stride={self.increasing_stride}, init={self.init}, "
            f"nblocks={self.nblocks}"
        )


class ButterflyUnitary(Butterfly):
    """Unitary butterfly: each 2x2 factor is parameterised by angles (phi, alpha, psi, chi),
    ``twiddle`` (nstacks, nblocks, log_n, n/2, 4) (real), as torch_butterfly."""

    def __init__(self, in_size, out_size, bias=True, increasing_stride=True, nblocks=1):
        nn.Module.__init__(self)
        log_n, n = self._set_sizes(in_size, out_size, True, increasing_stride, nblocks)
        self.init = "ortho"
        self.twiddle = nn.Parameter(torch.empty((self.nstacks, nblocks, log_n, n // 2, 4)))
        cdtype = _COMPLEX_OF[torch.get_default_dtype()]
        if bias:
            self.bias = nn.Parameter(torch.empty(out_size, dtype=cdtype))
        else:
            self.register_parameter("bias", None)
        self.twiddle._is_structured = True
        self.reset_parameters()

    def reset_parameters(self):
        core = self.twiddle.shape[:-1]
        phi = torch.asin(torch.sqrt(torch.rand(core)))
        alpha, psi, chi = torch.rand((3,) + tuple(core)) * math.pi * 2
        with torch.no_grad():
            self.twiddle.copy_(torch.stack([phi, alpha, psi, chi], dim=-1))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def _twiddle(self) -> Tensor:
        phi, alpha, psi, chi = torch.unbind(self.twiddle, -1)
        c, s = torch.cos(phi), torch.sin(phi)
        a = torch.polar(c, alpha + psi)
        b = torch.polar(s, alpha + chi)
        cc = -torch.polar(s, alpha - chi)
        d = torch.polar(c, alpha - psi)
        return torch.stack((torch.stack((a, b), dim=-1), torch.stack((cc, d), dim=-1)), dim=-2)

    __imul__ = None

    def extra_repr(self) -> str:
        return (
            f"in_size={self.in_size}, out_size={self.out_size}, bias={self.bias is not None}, "
            f"increasing_stride={self.increasing_stride}, nblocks={self.nblocks}"
        )


class ButterflyBmm(Butterfly):
    """``matrix_batch`` independent butterflies: input (..., matrix_batch, in_size) ->
    (..., matrix_batch, out_size); twiddle (matrix_batch*nstacks, nblocks, log_n, n/2, 2, 2),
    bias (matrix_batch, out_size), as torch_butterfly."""

    def __init__(self, in_size, out_size, matrix_batch=1, bias=True, complex=False, increasing_stride=True,
                 init="randn", nblocks=1):
        if isinstance(matrix_batch, bool) or not isinstance(matrix_batch, int) or matrix_batch < 1:
            raise ValueError(f"ButterflyBmm: matrix_batch must be a positive int, got {matrix_batch!r}")
        # bias=False, init="empty": the base constructor draws no random numbers, so the draws
        # below match torch_butterfly's ButterflyBmm one for one
        super().__init__(in_size, out_size, False, complex, increasing_stride, init="empty", nblocks=nblocks)
        nstacks = self.nstacks
        self.matrix_batch = matrix_batch
        dtype = self.twiddle.dtype
        shape = (matrix_batch * nstacks, nblocks, self.log_n, self.n // 2, 2, 2)
        if isinstance(init, Tensor):
            if tuple(init.shape) != shape or init.dtype != dtype:
                raise ValueError(f"ButterflyBmm: init tensor must have shape {shape} and dtype {dtype}")
            self.init = None
            self.twiddle = nn.Parameter(init.detach().clone())
        else:
            if init not in _INITS:
                raise ValueError(f"ButterflyBmm: init must be a tensor or one of {_INITS}, got {init!r}")
            self.init = init
            self.twiddle = nn.Parameter(torch.empty(shape, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(matrix_batch, out_size, dtype=dtype))
        self.twiddle._is_structured = True
        self.reset_parameters()

    def forward(self, input: Tensor, transpose: bool = False, conjugate: bool = False) -> Tensor:
        return super().forward(input, transpose, conjugate, subtwiddle=False)

    def pre_process(self, input: Tensor) -> Tensor:
        if input.dim() < 2 or input.size(-2) != self.matrix_batch:
            raise ValueError(
                f"ButterflyBmm: input must have shape (..., matrix_batch={self.matrix_batch}, in_size), "
                f"got {tuple(input.shape)}"
            )
        size = input.size(-1)
        x = input.reshape(-1, self.matrix_batch, size)
        x = x.unsqueeze(2).expand(x.shape[0], self.matrix_batch, self.nstacks, size)
        return x.reshape(x.shape[0], self.matrix_batch * self.nstacks, size)

    def post_process(self, input: Tensor, output: Tensor, out_size=None) -> Tensor:
        out_size = self.out_size
        batch = output.shape[0]
        output = output.reshape(batch, self.matrix_batch, self.nstacks * output.size(-1))
        if out_size != output.shape[-1]:
            output = output[:, :, :out_size]
        if self.bias is not None:
            output = output + self.bias[:, :out_size]
        return output.view(*input.shape[:-1], out_size)

    @torch.no_grad()
    def to_dense(self) -> Tensor:
        """(matrix_batch, out_size, in_size): one dense matrix per butterfly (bias excluded)."""
        eye = torch.eye(self.in_size, dtype=self.twiddle.dtype, device=self.twiddle.device)
        x = eye.unsqueeze(1).expand(self.in_size, self.matrix_batch, self.in_size)
        bias, self.bias = self.bias, None
        try:
            return self.forward(x).permute(1, 2, 0).contiguous()
        finally:
            self.bias = bias

    def extra_repr(self) -> str:
        return super().extra_repr() + f", matrix_batch={self.matrix_batch}"
