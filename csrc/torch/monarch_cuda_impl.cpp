// CUDA registration: ATen glue around the torch-free CUDA kernels of csrc/cuda.
// Current stream, workspace from the caching allocator, no host synchronisation.
// Native dtypes: float32, float64, bfloat16, float16 (fp32 accumulation for the 16-bit types).
// Complex dtypes are CPU-only (a clear error here).
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "monarch_ops.h"

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

namespace {

struct CudaKernel {
  static constexpr bool kComplex = false;
  static constexpr const char* kName = "CUDA";
  static bool native(at::ScalarType t) {
    return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
  }
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) { return at::empty(sizes, opts); }
  static void forward(MonarchForwardParams& p, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    p.cuda = cuda_options(like);
    const int64_t bytes = monarch_forward_cuda_workspace(p);
    at::Tensor ws = at::empty({bytes}, like.options().dtype(at::kByte));
    const char* err = monarch_forward_cuda(p, {ws.data_ptr(), bytes}, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == nullptr, "structops CUDA Monarch forward failed: ", err);
  }
  static void backward(MonarchBackwardParams& p, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    p.cuda = cuda_options(like);
    const int64_t bytes = monarch_backward_cuda_workspace(p);
    at::Tensor ws = at::empty({bytes}, like.options().dtype(at::kByte));
    const char* err = monarch_backward_cuda(p, {ws.data_ptr(), bytes}, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == nullptr, "structops CUDA Monarch backward failed: ", err);
  }
};

}  // namespace
}  // namespace torch_impl
}  // namespace structops

TORCH_LIBRARY_IMPL(structops, CUDA, m) {
  structops::torch_impl::register_monarch_ops<structops::torch_impl::CudaKernel>(m);
}
