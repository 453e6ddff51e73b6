// Row-wise transposes (see gemm.h: transpose_rows), the Monarch permutations P_mid / P_out.
//
// Each row of `rows` (tokens) is an (a x b) row-major matrix to be written transposed.  A CTA
// owns one row and a tile of it, sub-rows [i0, i0+ai) x columns [j0, j0+bj): it reads the tile
// (ai runs of bj contiguous elements) with consecutive threads on consecutive addresses, stages
// it in shared memory with each sub-row padded (so the column-wise reads below hit distinct
// banks), then writes dst[j*a + i0 .. i0+ai) for every j of the tile: runs of ai contiguous
// elements, consecutive threads on consecutive addresses.  For the narrow shapes of Monarch
// (a or b = nblocks, e.g. 4) one tile covers whole rows and a warp's stores are contiguous.  No integer division per element: both phases use 2-D thread
// decompositions with power-of-two widths.  Shared memory per CTA <= 32 KiB (static budget, no
// opt-in: never more than any sm_80+ device provides).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemm.h"

namespace structops {
namespace cuda {
namespace gemm {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSmemBytes = 32 * 1024;
constexpr int64_t kMaxTileCols = 2048;  // bj: <= 16 KiB of fp64 per staged sub-row

// Largest power of two <= min(v, kThreads), at least 1.
int pow2_width(int64_t v) {
  int w = 1;
  while (w * 2 <= v && w * 2 <= kThreads) w *= 2;
  return w;
}
int log2i(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

template <class T>
__global__ void __launch_bounds__(kThreads) transpose_rows_kernel(const T* __restrict__ src, int64_t src_ld,
                                                                  T* __restrict__ dst, int64_t dst_ld, int a, int b,
                                                                  int ai, int bj, int bp, int lw_load, int lw_store) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  const int64_t t = blockIdx.x;
  const int i0 = blockIdx.y * ai, j0 = blockIdx.z * bj;
  const int ni = min(ai, a - i0), nj = min(bj, b - j0);
  const T* s = src + t * src_ld + int64_t(i0) * b + j0;
  T* d = dst + t * dst_ld + int64_t(j0) * a + i0;
  // load the (ni x nj) tile: thread (ty, tx), tx over columns (width 2^lw_load)
  {
    const int wx = 1 << lw_load, tx = threadIdx.x & (wx - 1), ty = threadIdx.x >> lw_load, hy = kThreads >> lw_load;
    for (int i = ty; i < ni; i += hy)
      for (int j = tx; j < nj; j += wx) sm[i * bp + j] = s[int64_t(i) * b + j];
  }
  __syncthreads();
  // store dst[j*a + i]: tx over i (width 2^lw_store)
  {
    const int wx = 1 << lw_store, tx = threadIdx.x & (wx - 1), ty = threadIdx.x >> lw_store, hy = kThreads >> lw_store;
    for (int j = ty; j < nj; j += hy)
      for (int i = tx; i < ni; i += wx) d[int64_t(j) * a + i] = sm[i * bp + j];
  }
}

template <class T>
const char* launch(const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows, int64_t a, int64_t b,
                   cudaStream_t stream) {
  if (rows <= 0 || a <= 0 || b <= 0) return nullptr;
  const int64_t esz = sizeof(T);
  const int64_t bj = b < kMaxTileCols ? b : kMaxTileCols;
  // Pad each staged sub-row so that consecutive sub-rows start in different banks: an odd
  // number of 4-byte words for 2-byte types (bp = 2 mod 4), an odd number of elements otherwise.
  const int64_t bp = esz == 2 ? bj + (6 - bj % 4) % 4 : bj + (bj % 2 == 0 ? 1 : 0);
  int64_t ai = kSmemBytes / (bp * esz);
  if (ai > a) ai = a;
  const int64_t chunks_i = (a + ai - 1) / ai, chunks_j = (b + bj - 1) / bj;
  if (rows > 0x7fffffffLL || chunks_i > 65535 || chunks_j > 65535)
    return "transpose_rows: too many rows or tiles for one launch";
  const int lw_load = log2i(pow2_width(bj)), lw_store = log2i(pow2_width(ai));
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(chunks_i), static_cast<unsigned>(chunks_j));
  const size_t smem = static_cast<size_t>(ai * bp * esz);
  transpose_rows_kernel<T><<<grid, kThreads, smem, stream>>>(static_cast<const T*>(src), src_ld, static_cast<T*>(dst),
                                                             dst_ld, int(a), int(b), int(ai), int(bj), int(bp), lw_load,
                                                             lw_store);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* transpose_rows(DType dtype, const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows,
                           int64_t a, int64_t b, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch<float>(src, src_ld, dst, dst_ld, rows, a, b, stream);
    case DType::kFloat64: return launch<double>(src, src_ld, dst, dst_ld, rows, a, b, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(src, src_ld, dst, dst_ld, rows, a, b, stream);
    case DType::kFloat16: return launch<__half>(src, src_ld, dst, dst_ld, rows, a, b, stream);
  }
  return "transpose_rows: unsupported dtype";
}

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
