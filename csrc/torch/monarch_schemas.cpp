// The block-diagonal / Monarch operator schemas, defined once (a fragment of the `structops`
// library, csrc/torch/library.cpp).  Implementations are registered per backend in
// monarch_cpu_impl.cpp / monarch_cuda_impl.cpp, autocast in monarch_autocast.cpp; fake (meta)
// kernels and autograd formulas live in python/structops/ops/monarch.py.
// dtypes: float32/float64/bfloat16/float16 on CPU and CUDA, complex64/complex128 on CPU.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(structops, m) {
  // ---- block-diagonal: y = x BD(w)^T.  x (..., k*p), w (k, q, p) -> (..., k*q)
  m.def("blockdiag_matmul(Tensor x, Tensor w) -> Tensor");
  // Gradients (dx, dw); an entry whose output_mask bit is false is returned as an empty tensor.
  m.def("blockdiag_matmul_backward(Tensor grad, Tensor x, Tensor w, bool[2] output_mask) -> (Tensor, Tensor)");

  // ---- Monarch: y = x M^T, M = P_out BD(w2) P_mid BD(w1).
  //      x (..., k*p), w1 (k, q, p), w2 (l, s, r) with k*q == l*r -> (..., l*s)
  m.def("monarch_matmul(Tensor x, Tensor w1, Tensor w2) -> Tensor");
  // Same forward, also returning the permuted intermediate v = P_mid BD(w1) x (..., k*q), i.e.
  // fly's out1, for the backward (the public function uses it when gradients are needed and
  // recompute=False).
  m.def("monarch_matmul_fwd(Tensor x, Tensor w1, Tensor w2) -> (Tensor, Tensor)");
  // Gradients (dx, dw1, dw2); unrequested ones are returned as empty tensors.  v: the saved
  // intermediate from monarch_matmul_fwd, or None to recompute it from x.
  m.def("monarch_matmul_backward(Tensor grad, Tensor x, Tensor w1, Tensor w2, Tensor? v, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
