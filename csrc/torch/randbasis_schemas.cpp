// The random-basis operator schemas (RandLoRA, VeRA; a fragment of the `structops` library).
// Semantics, shapes and the strategies: structops/randbasis.h.  Implementations:
// randbasis_ops.h (ATen GEMM orchestration, registered for CPU in randbasis_cpu_impl.cpp and
// for CUDA in randbasis_cuda_impl.cpp); fake kernels and autograd in
// python/structops/ops/randbasis.py.  x is 2-D (tokens, in); Python flattens leading dims.
// dtypes: x, weight, bias and the bases share one floating dtype (the compute dtype); the trained
// vectors may be that dtype or float32 (master weights), and their gradients come back in it.
// weight may be None: the op is then the adapter branch alone (bias + x dW^T), for a quantized
// base layer whose own product runs outside the op; out_features follows from the bases.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(structops, m) {
  // y = x weight^T + bias + scaling * x dW^T with RandLoRA's dW (peft 0.21.2 pairing and
  // orientation): basis_A (r, d_min), basis_B (d_max, r*n) (= peft's B[:d_max, :n, :].flatten(1)),
  // lam (r, n), gamma (n, d_min).  strategy: 0 auto, 1 factored, 2 merged.  Returns (y, h):
  // with save_h (only valid when in > out, i.e. the basis on the output side) h = x Bbar
  // (tokens, r*n), which the backward uses instead of x; otherwise h is empty.
  m.def("randlora_linear(Tensor x, Tensor? weight, Tensor? bias, Tensor basis_A, Tensor basis_B, Tensor lam, "
        "Tensor gamma, float scaling, int strategy=0, bool save_h=False) -> (Tensor, Tensor)");
  // (grad_x, grad_weight, grad_lam, grad_gamma); unrequested entries are empty tensors.  A
  // non-empty h (from the forward's save_h) replaces x for the lam/gamma gradients.
  m.def("randlora_linear_backward(Tensor grad, Tensor x, Tensor h, Tensor? weight, Tensor basis_A, Tensor basis_B, "
        "Tensor lam, Tensor gamma, float scaling, int strategy, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // VeRA: y = x weight^T + bias + lambda_b * ((lambda_d * (x A^T)) B^T) with A (r, in), B (out, r).
  // Returns (y, h = x A^T (tokens, r)); h is what the backward needs for both vector gradients
  // (empty when save_h is false).
  m.def("vera_linear(Tensor x, Tensor? weight, Tensor? bias, Tensor vera_A, Tensor vera_B, Tensor lambda_d, "
        "Tensor lambda_b, int strategy=0, bool save_h=True) -> (Tensor, Tensor)");
  // (grad_x, grad_weight, grad_lambda_d, grad_lambda_b); x is read only for grad_weight.
  m.def("vera_linear_backward(Tensor grad, Tensor x, Tensor h, Tensor? weight, Tensor vera_A, Tensor vera_B, "
        "Tensor lambda_d, Tensor lambda_b, int strategy, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // The cost model's plan for a call (for benchmarks and tests): (forward strategy, backward
  // strategy, panel rows, forward MACs, backward MACs), strategies 1 factored / 2 merged / 3
  // mixed; grads = (x, weight, adapter, from_h) as RandBasisGrads.
  m.def("randbasis_plan(str method, int tokens, int in_features, int out_features, int rank, int strategy, "
        "bool[4] grads, int elem_bytes) -> (int, int, int, float, float)");
}
