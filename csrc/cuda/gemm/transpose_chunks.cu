// transpose_row_chunks (gemm.h): rows of (a x b) chunk matrices written transposed.  Plain
// element-per-thread copy with a grid-stride loop; the index arithmetic is 64-bit and divides
// only by the launch-invariant a, b and chunk.  Dtypes by element size: 2, 4, 8 bytes.
#include <cuda_runtime.h>

#include <cstdint>

#include "gemm/gemm.h"

namespace structops {
namespace cuda {
namespace gemm {
namespace {

template <class E>
__global__ void transpose_row_chunks_kernel(const E* __restrict__ src, int64_t src_ld, E* __restrict__ dst, int64_t dst_ld,
                                            int64_t rows, int64_t a, int64_t b, int64_t chunk) {
  const int64_t per_row = a * b * chunk;
  const int64_t total = rows * per_row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx / per_row;
    const int64_t rem = idx - t * per_row;  // destination order: (j, i, c)
    const int64_t c = rem % chunk;
    const int64_t ji = rem / chunk;
    const int64_t i = ji % a, j = ji / a;
    dst[t * dst_ld + rem] = src[t * src_ld + (i * b + j) * chunk + c];
  }
}

template <class E>
const char* launch(const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows, int64_t a, int64_t b,
                   int64_t chunk, cudaStream_t stream) {
  const int64_t total = rows * a * b * chunk;
  if (total == 0) return nullptr;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
  transpose_row_chunks_kernel<E><<<grid, threads, 0, stream>>>(static_cast<const E*>(src), src_ld, static_cast<E*>(dst),
                                                               dst_ld, rows, a, b, chunk);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* transpose_row_chunks(DType dtype, const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows,
                                 int64_t a, int64_t b, int64_t chunk, cudaStream_t stream) {
  switch (dtype_size(dtype)) {
    case 8: return launch<int64_t>(src, src_ld, dst, dst_ld, rows, a, b, chunk, stream);
    case 4: return launch<int32_t>(src, src_ld, dst, dst_ld, rows, a, b, chunk, stream);
    default: return launch<int16_t>(src, src_ld, dst, dst_ld, rows, a, b, chunk, stream);
  }
}

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
