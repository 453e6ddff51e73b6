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

#include "structops/common.h"

namespace structops {

struct KfacFactorPlan {
  int64_t block = 0;         // rows/columns per triangle block (the last block may be shorter)
  int64_t num_blocks = 0;    // ceil(d / block)
  int64_t chunk_tokens = 0;  // rows cast per chunk when the input needs a cast or a mask
};

// d: factor side without the bias column; tokens; bytes per element of the factor dtype.
KfacFactorPlan kfac_factor_plan(int64_t d, int64_t tokens, int64_t factor_elem_bytes);

// Calls f(b, i0, bi, j0, bj) for every lower-triangle block pair (I, J <= I) of a d-wide factor
// cut into `block`-wide blocks, in row order (b = 0, 1, ...: the order kfac_lower_blocks_cuda
// writes its outputs in); the last block of a row/column may be shorter.
template <class F>
void kfac_for_each_lower_block(int64_t d, int64_t block, F&& f) {
  int64_t b = 0;
  for (int64_t i0 = 0; i0 < d; i0 += block) {
    const int64_t bi = block < d - i0 ? block : d - i0;
    for (int64_t j0 = 0; j0 <= i0; j0 += block, ++b) f(b, i0, bi, j0, block < d - j0 ? block : d - j0);
  }
}

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

// ---- CUDA: the factor update's block products on the GEMM engine (csrc/cuda/kfac_cuda.cpp) ----
// out[b] = x[:, I]^T x[:, J] for the lower-triangle block pairs (I, J <= I) of the plan's
// `block`, in row order (b = I (I + 1) / 2 + J), read straight from 16-bit (or fp32/fp64) x and
// accumulated in fp32 (fp64 for fp64 x): no cast copy of the activations.  out: (num_lower,
// block, block) in the accumulation dtype, block b being bi x bj row-major with ld = block (edge
// blocks are partial).  With the CUTLASS engine long token ranges are split (fp32 partials from
// the workspace, summed in split order by reduce_splits: deterministic); cuBLAS picks its own
// split-K.  The torch layer adds scale * out[b] into the factor and mirrors it.
struct KfacLowerBlocksParams {
  DType dtype = DType::kBFloat16;  // of x
  const void* x = nullptr;         // (tokens, d) row-major
  int64_t x_stride = 0;            // elements between rows of x
  int64_t tokens = 0, d = 0, block = 0;
  void* out = nullptr;
  CudaOptions cuda;
};

int64_t kfac_num_lower_blocks(int64_t d, int64_t block);
int64_t kfac_lower_blocks_cuda_workspace(const KfacLowerBlocksParams& p);
// Returns nullptr on success, else a static message.  stream: a cudaStream_t.
const char* kfac_lower_blocks_cuda(const KfacLowerBlocksParams& p, CudaWorkspace workspace, void* stream);

}  // namespace structops
