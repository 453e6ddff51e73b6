// Host-side helpers every family's CUDA orchestration uses around the GEMM engine (gemm.h):
// building BatchedGemm descriptions, a bump allocator over the caller's workspace, and the
// token-split weight-gradient GEMM (fp32 partials per token range, summed in split order by
// reduce_splits: deterministic, no atomics).  Torch-free, header-only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "gemm/gemm.h"

namespace structops {
namespace cuda {

#define STRUCTOPS_TRY(expr)           \
  do {                                \
    const char* _err = (expr);        \
    if (_err != nullptr) return _err; \
  } while (0)

inline int64_t align_up(int64_t bytes) { return (bytes + 255) / 256 * 256; }
inline int64_t acc_size(DType t) { return t == DType::kFloat64 ? 8 : 4; }

// Bump allocator over a workspace (256-byte aligned pieces).
struct Ptr {
  char* p;
  explicit Ptr(void* base) : p(static_cast<char*>(base)) {}
  void* take(int64_t bytes) {
    void* r = p;
    p += align_up(bytes);
    return r;
  }
};

inline gemm::MatrixRef ref(const void* ptr, int64_t ld, int64_t batch_stride, gemm::Layout layout) {
  gemm::MatrixRef r;
  r.ptr = ptr;
  r.ld = ld;
  r.batch_stride = batch_stride;
  r.layout = layout;
  return r;
}

inline gemm::BatchedGemm make_gemm(DType dt, int64_t m, int64_t n, int64_t k, int64_t batch, gemm::MatrixRef a,
                                   gemm::MatrixRef b, void* c, int64_t ldc, int64_t sc) {
  gemm::BatchedGemm g;
  g.m = static_cast<int>(m);
  g.n = static_cast<int>(n);
  g.k = static_cast<int>(k);
  g.batch = static_cast<int>(batch);
  g.dtype = dt;
  g.a = a;
  g.b = b;
  g.c = c;
  g.ldc = ldc;
  g.batch_stride_c = sc;
  return g;
}

// Token splits are used with the CUTLASS engine only (cuBLAS picks its own split-K).
inline bool splits_allowed(const CudaOptions& o) { return o.engine == GemmEngine::kCutlass; }

inline int weight_grad_splits(int64_t tokens, DType dt, const CudaOptions& o, int64_t m, int64_t n, int64_t blocks) {
  if (!splits_allowed(o)) return 1;
  return gemm::token_splits(tokens, gemm::output_tiles(m, n, dt) * blocks, o.sm_count);
}

// Does the weight gradient go through fp32 partials (+ reduce_splits)?  Always with the CUTLASS
// engine for 16-bit dtypes (the tensor-op weight-gradient kernels write fp32) and whenever there
// is more than one split.
inline bool uses_partials(DType dt, const CudaOptions& o, int splits) {
  if (!splits_allowed(o)) return false;
  return splits > 1 || dt == DType::kBFloat16 || dt == DType::kFloat16;
}

// Bytes of partials weight_grad_gemm takes from the workspace (0 when it needs none).
inline int64_t weight_grad_workspace(int64_t tokens, DType dt, const CudaOptions& o, int64_t m, int64_t n, int64_t blocks,
                                     int64_t out_size) {
  const int splits = weight_grad_splits(tokens, dt, o, m, n, blocks);
  return uses_partials(dt, o, splits) ? align_up(splits * out_size * acc_size(dt)) : 0;
}

// Weight gradient C[blk] (g.m x g.n) = sum over `tokens` tokens t of A[blk](:, t) B[blk](t, :):
// g describes the full-K GEMM except k and c; a_t / b_t are the element offsets of token t in A
// and B.  Token ranges [sp*per, (sp+1)*per) write fp32 partials taken from `alloc`.
inline const char* weight_grad_gemm(gemm::BatchedGemm g, int64_t tokens, int64_t a_t, int64_t b_t, void* out,
                                    int64_t out_size, int64_t blocks, const CudaOptions& o, Ptr& alloc,
                                    cudaStream_t stream) {
  const DType dt = g.dtype;
  const int64_t es = dtype_size(dt), as = acc_size(dt);
  const int splits = weight_grad_splits(tokens, dt, o, g.m, g.n, blocks);
  if (!uses_partials(dt, o, splits)) {
    g.k = static_cast<int>(tokens);
    g.c = out;
    return gemm::batched_gemm(g, o, stream);
  }
  void* parts = alloc.take(splits * out_size * as);
  const int64_t per = (tokens + splits - 1) / splits;
  for (int sp = 0; sp < splits; ++sp) {
    const int64_t t0 = sp * per;
    const int64_t rows = t0 < tokens ? (tokens - t0 < per ? tokens - t0 : per) : 0;
    gemm::BatchedGemm gs = g;
    gs.k = static_cast<int>(rows);
    gs.a.ptr = static_cast<const char*>(g.a.ptr) + t0 * a_t * es;
    gs.b.ptr = static_cast<const char*>(g.b.ptr) + t0 * b_t * es;
    gs.c = static_cast<char*>(parts) + sp * out_size * as;
    gs.c_acc = true;
    if (rows == 0) {
      if (cudaMemsetAsync(gs.c, 0, out_size * as, stream) != cudaSuccess) return "cudaMemsetAsync failed";
      continue;
    }
    STRUCTOPS_TRY(gemm::batched_gemm(gs, o, stream));
  }
  return gemm::reduce_splits(dt, parts, out_size, splits, out, stream);
}

}  // namespace cuda
}  // namespace structops
