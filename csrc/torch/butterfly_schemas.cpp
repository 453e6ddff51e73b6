// The butterfly operator schemas (a fragment of the `structops` library, csrc/torch/library.cpp).
// Implementations per backend in butterfly_cpu_impl.cpp / butterfly_cuda_impl.cpp; fake kernels
// and autograd in python/structops/ops/butterfly.py.
// dtypes: CPU float32/float64/complex64/complex128 (bfloat16/float16 computed in float32);
//         CUDA float32/bfloat16/float16 (float32 accumulation) and complex64.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(structops, m) {
  // torch_butterfly's butterfly_multiply: twiddle (nstacks, nblocks, log_n, n/2, 2, 2),
  // x (batch, nstacks, in_size) zero-padded / trimmed to n = 2^log_n -> (batch, nstacks, output_size).
  m.def("butterfly_multiply(Tensor twiddle, Tensor x, bool increasing_stride=True, int? output_size=None) -> Tensor");
  // Gradients (dtwiddle, dx) of y = butterfly_multiply(twiddle, x, increasing_stride, grad.size(-1));
  // an entry whose output_mask bit is false is returned as an empty tensor.
  m.def("butterfly_multiply_backward(Tensor grad, Tensor twiddle, Tensor x, bool increasing_stride, bool[2] output_mask) -> (Tensor, Tensor)");

  // fly's block_butterfly_multiply: twiddle (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs), x (batch,
  // nstacks, in_size) zero-padded / trimmed to N = bs*n -> (batch, nstacks, output_size <= N).
  m.def("block_butterfly_multiply(Tensor twiddle, Tensor x, bool increasing_stride=True, int? output_size=None) -> Tensor");
  m.def("block_butterfly_multiply_backward(Tensor grad, Tensor twiddle, Tensor x, bool increasing_stride, bool[2] output_mask) -> (Tensor, Tensor)");
}
