// Batched GEMM with every operand addressed by element strides — the one GEMM primitive of the
// CUDA Monarch kernels (csrc/cuda/monarch_cuda.cpp).  Torch-free; CUTLASS only in the .cu files.
//
//   C[b](i, j) = sum_k A[b](i, k) * B[b](k, j)  + beta * C[b](i, j)
//   A[b](i, k) at a + b*sa.batch + i*sa.row + k*sa.col      (i < m, k < k)
//   B[b](k, j) at b + b*sb.batch + k*sb.row + j*sb.col      (j < n)
//   C[b](i, j) at c + b*sc.batch + i*sc.row + j*sc.col
//
// Because rows, columns and batches may have any stride, the Monarch permutations P_mid and
// P_out are expressed as strides: u[t, rh*l + lm] for block lm is the matrix with row stride
// k*q and column stride l, batch stride 1.
//
// Inputs: float, double, bfloat16, half; accumulation in float (double for double).  C is the
// input dtype, or float/double (`c_acc`) for split partials.  Implementation: CUTLASS 2.x
// GemmUniversal, batched mode, AffineRank2 layouts, SIMT math (the only CUTLASS 2.x mainloop that
// accepts arbitrary strides on every operand).  Archs: sm_80+.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "structops/monarch.h"

namespace structops {
namespace cuda {

struct Strides {
  int64_t row = 0, col = 0, batch = 0;
};

struct StridedBmm {
  int m = 0, n = 0, k = 0, batch = 1;
  const void* a = nullptr;
  Strides sa;
  const void* b = nullptr;
  Strides sb;
  void* c = nullptr;
  Strides sc;
  bool c_acc = false;  // C is float (double for kFloat64) instead of the input dtype
  float beta = 0.f;
};

// Returns nullptr on success, else a static error message.
const char* strided_bmm(DType dtype, const StridedBmm& p, cudaStream_t stream);

// One translation unit per input dtype (so ninja compiles them in parallel).
const char* strided_bmm_f32(const StridedBmm& p, cudaStream_t stream);
const char* strided_bmm_f64(const StridedBmm& p, cudaStream_t stream);
const char* strided_bmm_bf16(const StridedBmm& p, cudaStream_t stream);
const char* strided_bmm_f16(const StridedBmm& p, cudaStream_t stream);

// out[e] = sum_{s < splits} parts[s*size + e] (in order), converted to `dtype`; parts are float
// (double for kFloat64).  Deterministic.
const char* reduce_splits(DType dtype, const void* parts, int64_t size, int splits, void* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace structops
