// The K-FAC operator schemas (a fragment of the `structops` library).  Maths and plans:
// structops/kfac.h; the ATen orchestration: kfac_ops.h (registered for CPU in kfac_cpu_impl.cpp,
// for CUDA in kfac_cuda_impl.cpp); fake kernels and the public Python API:
// python/structops/ops/kfac.py.  None of these ops is differentiable (curvature is computed
// outside autograd).  Factors are float32 or float64.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(structops, m) {
  // factor (D, D) += scale * sum_t [x_t; 1][x_t; 1]^T (bias) or scale * sum_t x_t x_t^T over the
  // rows t of x (T, d) with mask[t] != 0 (mask (T,), 0/1); D = d + bias.  In place, returns factor.
  m.def("kfac_factor_update_(Tensor(a!) factor, Tensor x, float scale=1.0, bool bias=False, Tensor? mask=None) "
        "-> Tensor(a!)");
  // (F_l + damping_l I)^-1 for factors (L, n, n), damping (L,); method 0 auto, 1 Cholesky, 2 Schur.
  // Returns (inverses (L, n, n), status (L,) int8: 0 ok, 1 redone in float64, 2 failed).
  m.def("kfac_damped_inverse(Tensor factors, Tensor damping, int method=0) -> (Tensor, Tensor)");
  // Symmetric eigendecomposition of factors (L, n, n) (lower triangle read) with a float64 retry
  // for any factor whose solve fails, is not finite or has an eigenvalue below -neg_tol * max|w|
  // (neg_tol < 0: the default n * eps * 4).  Returns (eigenvalues (L, n) ascending, eigenvectors
  // (L, n, n) in columns, status (L,) int8 as above).
  m.def("kfac_eigh(Tensor factors, float neg_tol=-1.0) -> (Tensor, Tensor, Tensor)");
  // QS ((QS^T G QA) / (Lambda + damping)) QA^T for grads (L, out, in), QS (L, out, out), QA (L, in,
  // in), Lambda = lam (L, out, in) (EK-FAC) or eS (L, out) eA (L, in)^T (K-FAC).
  m.def("kfac_precondition(Tensor grads, Tensor QS, Tensor QA, Tensor? lam, Tensor? eS, Tensor? eA, "
        "float damping) -> Tensor");
  // The plans (for benchmarks and tests): (triangle block, number of blocks, cast chunk rows) and
  // the inverse method the auto choice takes (1 Cholesky, 2 Schur).
  m.def("kfac_factor_plan(int d, int tokens, int elem_bytes) -> (int, int, int)");
  m.def("kfac_inverse_plan(int n, int batch, int method, bool on_cuda) -> (int, int)");
}
