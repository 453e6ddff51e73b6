// CudaOptions for every family's CUDA launch (see cuda_options.h).
#include "cuda_options.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

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
  // SM count per device, queried once (called on every op: no lock on the hot path; a race
  // only repeats the same query and stores the same value)
  static std::array<std::atomic<int>, 64> sm_counts{};
  const int dev = like.get_device();
  CudaOptions o;
  o.engine = cuda_gemm_engine();
  o.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  if (dev >= 0 && dev < int(sm_counts.size())) {
    int sms = sm_counts[dev].load(std::memory_order_relaxed);
    if (sms == 0 && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
      sm_counts[dev].store(sms, std::memory_order_relaxed);
    if (sms > 0) o.sm_count = sms;
  }
  return o;
}

}  // namespace torch_impl
}  // namespace structops
