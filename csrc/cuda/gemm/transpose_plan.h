// The tiling of transpose_rows (transpose.cu), shared by the CUDA kernel and the host emulation
// test (tests/cpp/cuda_host_emulation.cpp), which runs the same per-CTA phases for every CTA and
// thread on the CPU — so the index arithmetic of the kernel is checked without a GPU.
//
// Each row t < rows is an (a x b) row-major matrix written transposed: dst[t*dst_ld + j*a + i] =
// src[t*src_ld + i*b + j].  CTA (t, ci, cj) owns sub-rows [ci*ai, ci*ai + ai) x columns
// [cj*bj, cj*bj + bj) of row t; it loads them into shared memory (row pitch bp, padded so that
// consecutive sub-rows start in different banks) and stores them transposed.  Both phases use
// 2-D thread maps with power-of-two widths (no per-element division) and touch global memory
// contiguously: loads along j, stores along i.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define STRUCTOPS_HD __host__ __device__ __forceinline__
#else
#define STRUCTOPS_HD inline
#endif

namespace structops {
namespace cuda {
namespace gemm {

constexpr int kTransposeThreads = 256;
constexpr int64_t kTransposeSmemBytes = 32 * 1024;  // never more than any sm_80+ device has
constexpr int64_t kTransposeMaxTileCols = 2048;     // bj: <= 16 KiB of fp64 per staged sub-row

struct TransposePlan {
  int64_t bj = 0, bp = 0, ai = 0, chunks_i = 0, chunks_j = 0;
  int lw_load = 0, lw_store = 0;  // log2 of the thread-map widths
  int64_t smem_bytes = 0;
};

// log2 of the largest power of two <= min(v, kTransposeThreads) (0 for v < 2).
inline int transpose_lw(int64_t v) {
  int l = 0;
  while ((int64_t(2) << l) <= v && (2 << l) <= kTransposeThreads) ++l;
  return l;
}

inline TransposePlan make_transpose_plan(int64_t esz, int64_t a, int64_t b) {
  TransposePlan p;
  p.bj = b < kTransposeMaxTileCols ? b : kTransposeMaxTileCols;
  // an odd number of 4-byte words per staged sub-row for 2-byte types (bp = 2 mod 4), an odd
  // number of elements otherwise
  p.bp = esz == 2 ? p.bj + (6 - p.bj % 4) % 4 : p.bj + (p.bj % 2 == 0 ? 1 : 0);
  p.ai = kTransposeSmemBytes / (p.bp * esz);
  if (p.ai > a) p.ai = a;
  if (p.ai < 1) p.ai = 1;
  p.chunks_i = (a + p.ai - 1) / p.ai;
  p.chunks_j = (b + p.bj - 1) / p.bj;
  p.lw_load = transpose_lw(p.bj);
  p.lw_store = transpose_lw(p.ai);
  p.smem_bytes = p.ai * p.bp * esz;
  return p;
}

// Phase 1 of CTA (t, ci, cj), thread tid: global -> shared.
template <class T>
STRUCTOPS_HD void transpose_load(const T* src, int64_t src_ld, T* sm, int a, int b, int ai, int bj, int bp,
                                 int lw_load, int64_t t, int ci, int cj, int tid) {
  const int i0 = ci * ai, j0 = cj * bj;
  const int ni = (ai < a - i0) ? ai : a - i0, nj = (bj < b - j0) ? bj : b - j0;
  const T* s = src + t * src_ld + int64_t(i0) * b + j0;
  const int wx = 1 << lw_load, tx = tid & (wx - 1), ty = tid >> lw_load, hy = kTransposeThreads >> lw_load;
  for (int i = ty; i < ni; i += hy)
    for (int j = tx; j < nj; j += wx) sm[i * bp + j] = s[int64_t(i) * b + j];
}

// Phase 2 (after a barrier): shared -> global, transposed.
template <class T>
STRUCTOPS_HD void transpose_store(const T* sm, T* dst, int64_t dst_ld, int a, int b, int ai, int bj, int bp,
                                  int lw_store, int64_t t, int ci, int cj, int tid) {
  const int i0 = ci * ai, j0 = cj * bj;
  const int ni = (ai < a - i0) ? ai : a - i0, nj = (bj < b - j0) ? bj : b - j0;
  T* d = dst + t * dst_ld + int64_t(j0) * a + i0;
  const int wx = 1 << lw_store, tx = tid & (wx - 1), ty = tid >> lw_store, hy = kTransposeThreads >> lw_store;
  for (int j = ty; j < nj; j += hy)
    for (int i = tx; i < ni; i += wx) d[int64_t(j) * a + i] = sm[i * bp + j];
}

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
