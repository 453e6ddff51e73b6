// Deterministic reduction of per-split weight-gradient partials: out = sum_s parts[s] in split
// order, converted to the output dtype.  See gemm.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemm.h"

namespace structops {
namespace cuda {
namespace gemm {
namespace {

template <class TAcc, class TOut>
__global__ void reduce_splits_kernel(const TAcc* __restrict__ parts, int64_t size, int splits, TOut* __restrict__ out) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < size; e += int64_t(gridDim.x) * blockDim.x) {
    TAcc sum = parts[e];
    for (int s = 1; s < splits; ++s) sum += parts[s * size + e];
    out[e] = static_cast<TOut>(sum);
  }
}

template <class TAcc, class TOut>
const char* launch(const void* parts, int64_t size, int splits, void* out, cudaStream_t stream) {
  if (size <= 0) return nullptr;
  const int threads = 256;
  const int64_t want = (size + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 4096 ? want : 4096);
  reduce_splits_kernel<TAcc, TOut><<<blocks, threads, 0, stream>>>(static_cast<const TAcc*>(parts), size, splits,
                                                                   static_cast<TOut*>(out));
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* reduce_splits(DType dtype, const void* parts, int64_t size, int splits, void* out, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch<float, float>(parts, size, splits, out, stream);
    case DType::kFloat64: return launch<double, double>(parts, size, splits, out, stream);
    case DType::kBFloat16: return launch<float, __nv_bfloat16>(parts, size, splits, out, stream);
    case DType::kFloat16: return launch<float, __half>(parts, size, splits, out, stream);
  }
  return "reduce_splits: unsupported dtype";
}

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
