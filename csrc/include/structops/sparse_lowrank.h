// Sparse plus low-rank (SLTrain) linear: the torch-free part — the fixed sparse support and the
// two sparse kernels.  The low-rank and dense products are plain GEMMs run by the ATen
// orchestration (csrc/torch/sparse_lowrank_ops.h); the Python API is
// python/structops/ops/sparse_lowrank.py.
//
// Maths: y = x (W0 + s B A + S)^T + bias, x (T, in), W0 (out, in) optional, B (out, r), A (r, in),
// S (out, in) sparse with `nnz` values at a fixed support given as flat row-major indices
// idx[k] = i * in + j, strictly increasing (sorted, no duplicates), int32.
//
// Kernels (dtypes float32 / float64; token-major activations with a leading dimension):
//   forward   y[t, i]  (+)= sum_{k in row i} values[k] * x[t, col[k]]              (x S^T)
//   backward  grad_x[t, j] (+)= sum_{k : col[k] = j} values[k] * g[t, row(k)]      (g S)
//             grad_values[k]   = sum_t g[t, row(k)] * x[t, col[k]]                 (G at the support:
//                                 the sampled dense-dense product, G = g^T x never formed)
// Both walk tiles of 64 tokens, transposed in cache so every nonzero is one SIMD multiply-add
// across the tile's tokens.  grad_values is reduced from per-chunk partials (≤ 16 chunks fixed by
// T) in chunk order: bitwise identical for any thread count.
#pragma once

#include <cstdint>

#include "structops/common.h"
#include "structops/monarch.h"  // CpuExecutor, scratch cache

namespace structops {

// CSR view of the support: rowptr (rows + 1), col (nnz).
struct SparseSupport {
  int64_t rows = 0, cols = 0, nnz = 0;
  const int32_t* rowptr = nullptr;
  const int32_t* col = nullptr;
};

// Builds rowptr / col from flat indices.  Returns -1 when the support is valid, else the first
// offending position k (index out of [0, rows*cols), or not strictly greater than idx[k-1]).
int64_t sparse_support_from_flat(const int32_t* flat, int64_t nnz, int64_t rows, int64_t cols, int32_t* rowptr,
                                 int32_t* col);

struct SparseMatmulForwardParams {
  DType dtype = DType::kFloat32;
  int64_t tokens = 0;
  const void* x = nullptr;  // (tokens, cols), leading dimension ldx
  int64_t ldx = 0;
  void* y = nullptr;        // (tokens, rows), leading dimension ldy
  int64_t ldy = 0;
  bool accumulate = true;   // y += x S^T (else y = x S^T)
  const void* values = nullptr;  // (nnz)
  SparseSupport support;
};

struct SparseMatmulBackwardParams {
  DType dtype = DType::kFloat32;
  int64_t tokens = 0;
  const void* g = nullptr;  // (tokens, rows), leading dimension ldg
  int64_t ldg = 0;
  const void* x = nullptr;  // (tokens, cols), leading dimension ldx (read only for grad_values)
  int64_t ldx = 0;
  const void* values = nullptr;
  SparseSupport support;
  void* grad_x = nullptr;   // (tokens, cols), ldgx; nullptr: not wanted
  int64_t ldgx = 0;
  bool accumulate_grad_x = true;
  void* grad_values = nullptr;  // (nnz); nullptr: not wanted
};

void sparse_matmul_forward_cpu(const SparseMatmulForwardParams& p, const CpuExecutor& exec);
void sparse_matmul_backward_cpu(const SparseMatmulBackwardParams& p, const CpuExecutor& exec);

}  // namespace structops
