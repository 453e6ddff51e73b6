// Row-wise transposes (see gemm.h: transpose_rows), the Monarch permutations P_mid / P_out.
// The tiling and the two per-CTA phases are in transpose_plan.h (shared with the host emulation
// test, which runs them for every CTA and thread on the CPU); this file is the kernel and its
// launch.  For the narrow shapes of Monarch (a or b = nblocks, e.g. 4) one tile covers whole
// rows and a warp's loads and stores are contiguous.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemm.h"
#include "transpose_plan.h"

namespace structops {
namespace cuda {
namespace gemm {
namespace {

template <class T>
__global__ void __launch_bounds__(kTransposeThreads)
    transpose_rows_kernel(const T* __restrict__ src, int64_t src_ld, T* __restrict__ dst, int64_t dst_ld, int a, int b,
                          int ai, int bj, int bp, int lw_load, int lw_store) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  const int64_t t = blockIdx.x;
  transpose_load(src, src_ld, sm, a, b, ai, bj, bp, lw_load, t, int(blockIdx.y), int(blockIdx.z), int(threadIdx.x));
  __syncthreads();
  transpose_store(sm, dst, dst_ld, a, b, ai, bj, bp, lw_store, t, int(blockIdx.y), int(blockIdx.z), int(threadIdx.x));
}

template <class T>
const char* launch(const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows, int64_t a, int64_t b,
                   cudaStream_t stream) {
  if (rows <= 0 || a <= 0 || b <= 0) return nullptr;
  const TransposePlan p = make_transpose_plan(sizeof(T), a, b);
  if (rows > 0x7fffffffLL || p.chunks_i > 65535 || p.chunks_j > 65535)
    return "transpose_rows: too many rows or tiles for one launch";
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(p.chunks_i), static_cast<unsigned>(p.chunks_j));
  transpose_rows_kernel<T><<<grid, kTransposeThreads, static_cast<size_t>(p.smem_bytes), stream>>>(
      static_cast<const T*>(src), src_ld, static_cast<T*>(dst), dst_ld, int(a), int(b), int(p.ai), int(p.bj),
      int(p.bp), p.lw_load, p.lw_store);
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
