// The shared GPU GEMM engine (DESIGN §5.1): batched GEMMs on tensor cores, the data-movement
// kernels every structured family needs around them (row-wise transposes, deterministic split
// reductions), and the engine switch (CUTLASS or cuBLAS).  Torch-free: plain pointers, a
// cudaStream_t, static error strings.  Every family's CUDA orchestration (csrc/cuda/<family>_*)
// launches through this header only.
//
//   C[b] (m x n, row-major, ldc, batch stride sc) = A[b] (m x k) * B[b] (k x n)
//   A[b](i, k) = a.ptr[b*a.batch_stride + (row-major ? i*a.ld + k : k*a.ld + i)]   (same for B)
//
// Kernels (CUTLASS 2.x, sm_80 SASS also shipped as sm_90a SASS; nothing sm_90-specific yet —
// no GPU run has shown that a TMA/wgmma kernel would win at our block shapes):
//   bf16 / fp16   OpClassTensorOp mma.sync (HMMA), fp32 accumulation, 16-byte accesses
//                 (alignment 8); two tiles: 128x128x32 (4 stages) and, when m or n <= 64,
//                 64x64x32 (5 stages)
//   fp32          TF32 tensor cores (128x128x16) when GemmOptions::allow_tf32, else exact SIMT
//   fp64          DMMA tensor cores (64x64x16)
//   fallback      SIMT with arbitrary element strides (alignment 1) for operands that are not
//                 aligned for a vector access, and for exact fp32
// Instantiated layout combinations (those the families use): A row / B col and A row / B row with
// C in the input dtype (activations), A col / B row with C in fp32 (fp64 for fp64) (weight
// gradients: token-split partials reduced by reduce_splits).  Anything else runs the fallback.
//
// Alignment: CUTLASS 2.x can_implement() does not look at pointers or leading dimensions, and a
// misaligned vector access kills the CUDA context, so select_kernel() checks pointer, ld, batch
// stride and contiguous extent of every operand and picks the fallback when any is off.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "structops/monarch.h"  // DType, CudaOptions

namespace structops {
namespace cuda {
namespace gemm {

enum class Layout : uint8_t { kRowMajor, kColumnMajor };

struct MatrixRef {
  const void* ptr = nullptr;
  int64_t ld = 0;            // elements between rows (row-major) or columns (column-major)
  int64_t batch_stride = 0;  // elements between batch entries (0: the same matrix for all)
  Layout layout = Layout::kRowMajor;
};

struct BatchedGemm {
  int m = 0, n = 0, k = 0, batch = 1;
  DType dtype = DType::kFloat32;  // of A and B
  MatrixRef a, b;
  void* c = nullptr;  // row-major
  int64_t ldc = 0, batch_stride_c = 0;
  bool c_acc = false;  // C is fp32 (fp64 for kFloat64) instead of dtype
};

// Which kernel select_kernel() picked (reported for tests and the benchmark).
enum class KernelKind : uint8_t {
  kTensorOpLarge,  // 16-bit HMMA 128x128x32
  kTensorOpSmall,  // 16-bit HMMA 64x64x32
  kTf32,           // TF32 HMMA 128x128x16
  kDmma,           // fp64 DMMA 64x64x16
  kSimtStrided,    // fallback
  kCublas,         // the registered cuBLAS engine
};
const char* kernel_kind_name(KernelKind k);

// Pure function of the problem and options (no CUDA call): testable on the host.
KernelKind select_kernel(const BatchedGemm& g, const CudaOptions& opt);

// Runs g on `stream`.  Returns nullptr on success, else a static message.
const char* batched_gemm(const BatchedGemm& g, const CudaOptions& opt, cudaStream_t stream);

// The cuBLAS engine lives in the torch layer (it goes through ATen, csrc/torch/gemm_cublas.cpp),
// which registers it at module load.  Without it (standalone C++ benchmarks) Engine::kCublas
// reports an error.
using CublasGemmFn = const char* (*)(const BatchedGemm& g, cudaStream_t stream);
void set_cublas_gemm(CublasGemmFn fn);

// ---- per-kernel launchers (one .cu each; the dispatcher calls them) ----
enum class Tile16 : uint8_t { kLarge, kSmall };
const char* tensorop_gemm_bf16(const BatchedGemm& g, Tile16 tile, cudaStream_t stream);
const char* tensorop_gemm_f16(const BatchedGemm& g, Tile16 tile, cudaStream_t stream);
const char* tensorop_gemm_tf32(const BatchedGemm& g, cudaStream_t stream);
const char* tensorop_gemm_f64(const BatchedGemm& g, cudaStream_t stream);
const char* simt_strided_gemm(const BatchedGemm& g, cudaStream_t stream);  // by dtype:
const char* simt_strided_gemm_f32(const BatchedGemm& g, cudaStream_t stream);
const char* simt_strided_gemm_f64(const BatchedGemm& g, cudaStream_t stream);
const char* simt_strided_gemm_bf16(const BatchedGemm& g, cudaStream_t stream);
const char* simt_strided_gemm_f16(const BatchedGemm& g, cudaStream_t stream);

// ---- data movement ----
// Row-wise transpose (the Monarch/butterfly permutations): for every row t < rows,
//   dst[t*dst_ld + j*a + i] = src[t*src_ld + i*b + j]      (i < a, j < b)
// each row viewed as an (a x b) row-major matrix is written transposed.  Coalesced: a CTA stages
// a chunk of one row in shared memory (at most 32 KiB, padded against bank conflicts) and reads
// and writes global memory contiguously.  Same contract as structops::permute_rows_cpu.
const char* transpose_rows(DType dtype, const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows,
                           int64_t a, int64_t b, cudaStream_t stream);

// Row-wise transpose of chunks (the block-butterfly permutations): every row t < rows is an
// (a x b) row-major matrix of `chunk` contiguous elements each, written transposed:
//   dst[t*dst_ld + (j*a + i)*chunk + c] = src[t*src_ld + (i*b + j)*chunk + c]   (c < chunk)
// transpose_rows is the chunk = 1 case.  One element per thread, consecutive threads along c
// (coalesced whenever chunk * element size >= 32 bytes).
const char* transpose_row_chunks(DType dtype, const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows,
                                 int64_t a, int64_t b, int64_t chunk, cudaStream_t stream);

// out[e] = sum_{s < splits} parts[s*size + e], summed in split order (deterministic), converted
// to `dtype`; parts are fp32 (fp64 for kFloat64).
const char* reduce_splits(DType dtype, const void* parts, int64_t size, int splits, void* out, cudaStream_t stream);

// Number of token (K) splits for a weight-gradient GEMM whose output has `out_tiles` CTA tiles
// (summed over the batch) and whose reduction runs over `k` tokens: enough CTAs for two waves on
// `sm_count` SMs, each split at least 1024 tokens, at most 16 splits.  1 for the cuBLAS engine
// (cuBLAS chooses its own split-K).
int token_splits(int64_t k, int64_t out_tiles, int sm_count);
// CTA tiles of a (m x n) output with the kernel select_kernel would pick for it.
int64_t output_tiles(int64_t m, int64_t n, DType dtype);

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
