// CudaOptions for every family's CUDA launch (see cuda_options.h).
#include "cuda_options.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace structops {
namespace torch_impl {

// STRUCTOPS_CUDA_GEMM=auto|cutlass|cublas (read on every call, so tests and benchmarks can switch).
// auto = cuBLAS until a GPU benchmark has measured the CUTLASS engine faster (docs/BENCHMARKS.md).
GemmEngine cuda_gemm_engine() {
  const char* e = std::getenv("STRUCTOPS_CUDA_GEMM");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0 || std::strcmp(e, "cublas") == 0)
    return GemmEngine::kCublas;
  if (std::strcmp(e, "cutlass") == 0) return GemmEngine::kCutlass;
  TORCH_CHECK_VALUE(false, "structops: STRUCTOPS_CUDA_GEMM must be one of auto, cutlass, cublas; got '", e, "'");
}

CudaOptions cuda_options(const at::Tensor& like) {
  static std::array<int, 64> sm_counts{};  // per device, filled on first use
  static std::mutex mu;
  const int dev = like.get_device();
  CudaOptions o;
  o.engine = cuda_gemm_engine();
  o.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  int sms = 0;
  if (dev >= 0 && dev < int(sm_counts.size())) {
    std::lock_guard<std::mutex> lock(mu);
    if (sm_counts[dev] == 0) {
      int v = 0;
      if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess) sm_counts[dev] = v;
    }
    sms = sm_counts[dev];
  }
  if (sms > 0) o.sm_count = sms;
  return o;
}

}  // namespace torch_impl
}  // namespace structops
