// K-FAC linear algebra: the torch-free part — the plans the ATen orchestration
// (csrc/torch/kfac_ops.h) executes.  No torch here.
//
// Factors.  For a linear layer y = x W^T (+ b) with inputs a (tokens, d_in) and output gradients
// g (tokens, d_out), K-FAC approximates the layer's Gauss-Newton block by S (x) A (row-major
// vec(W)) with A = scale * sum_t [a_t; 1][a_t; 1]^T ((d_in + bias) square; the bias column is
// folded in last, as curvlinops does with separate_weight_and_bias=False) and S = scale * sum_t
// g_t g_t^T.  A factor is symmetric; the update accumulates its lower triangle in blocks of
// `block` rows/columns (SYRK-style: nb(nb+1)/2 of nb^2 block products) and mirrors it.
// Low-precision inputs are cast to the factor's dtype (float32 or float64) in chunks of
// `chunk_tokens` rows so the cast copy stays small; the accumulation is in the factor's dtype.
//
// Damped inverse.  (F + lambda I)^-1 for a batch of same-shape SPD factors, by one of
//   Cholesky  LAPACK/cuSOLVER potrf + potri per factor (batched inside ATen);
//   Schur     recursive 2x2 block inversion through the Schur complement: inv([[A, B], [B^T, C]])
//             from inv(A) and inv(S), S = C - B^T inv(A) B; four batched GEMMs per level and
//             Cholesky only at the leaves (n <= leaf).  4/3 n^3 flops against Cholesky's n^3,
//             but in batched GEMMs, which run several times faster than LAPACK at n ~ 256.
// A factor whose leaf Cholesky fails or whose result is not finite is redone in float64.
#pragma once

#include <cstdint>

namespace structops {

struct KfacFactorPlan {
  int64_t block = 0;         // rows/columns per triangle block (the last block may be shorter)
  int64_t num_blocks = 0;    // ceil(d / block)
  int64_t chunk_tokens = 0;  // rows cast per chunk when the input needs a cast or a mask
};

// d: factor side without the bias column; tokens; bytes per element of the factor dtype.
KfacFactorPlan kfac_factor_plan(int64_t d, int64_t tokens, int64_t factor_elem_bytes);

enum class KfacInverseMethod : int { Auto = 0, Cholesky = 1, Schur = 2 };

struct KfacInversePlan {
  KfacInverseMethod method = KfacInverseMethod::Cholesky;
  int64_t leaf = 0;  // Schur: blocks of at most this side are inverted by Cholesky
};

// n: factor side; batch: number of factors; on_cuda: the device (cuSOLVER's batched potrf is
// already GEMM-rich there, so Auto keeps Cholesky on CUDA).
KfacInversePlan kfac_inverse_plan(int64_t n, int64_t batch, KfacInverseMethod requested, bool on_cuda);

// Per-factor status codes returned by the batched factorizations.
enum class KfacStatus : int8_t {
  Ok = 0,          // solved in the factor's dtype
  FellBack = 1,    // the factor's dtype failed (non-convergence, NaN, not PD, negative eigenvalues
                   // beyond tolerance); solved in float64
  Failed = 2,      // float64 failed too, or the factor itself is not finite
};

// Negative-eigenvalue tolerance, relative to the largest |eigenvalue|, for a PSD factor of side
// n stored with machine epsilon eps: rounding in the accumulated factor alone perturbs the
// spectrum by about eps * n * max|lambda|.
double kfac_default_neg_tol(int64_t n, double eps);

}  // namespace structops
