// The sparse-plus-low-rank (SLTrain) operator schemas (a fragment of the `structops` library).
// Maths and the kernels: structops/sparse_lowrank.h; implementation: sparse_lowrank_ops.h
// (registered for CPU in sparse_lowrank_cpu_impl.cpp); fake kernels and autograd in
// python/structops/ops/sparse_lowrank.py.  x is 2-D (tokens, in); Python flattens leading dims.
// dtypes: float32, float64 natively; bfloat16 / float16 computed in float32 and cast back.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(structops, m) {
  // y = x (W0 + scale * B A + S)^T + bias; B (out, r), A (r, in), S = values (nnz) at the flat
  // row-major int32 `indices` (nnz, strictly increasing), W0 = base_weight (out, in) optional.
  m.def("sparse_lowrank_linear(Tensor x, Tensor B, Tensor A, Tensor values, Tensor indices, float scale, "
        "Tensor? bias=None, Tensor? base_weight=None) -> Tensor");
  // (grad_x, grad_B, grad_A, grad_values, grad_base_weight); unrequested entries are empty.
  m.def("sparse_lowrank_linear_backward(Tensor grad, Tensor x, Tensor B, Tensor A, Tensor values, Tensor indices, "
        "float scale, Tensor? base_weight, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
