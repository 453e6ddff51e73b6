// CUDA registration: ATen glue around the torch-free CUDA kernels of csrc/cuda.
// Current stream, workspace from the caching allocator, no host synchronisation.
// Native dtypes: float32, float64, bfloat16, float16 (fp32 accumulation for the 16-bit types).
// Complex dtypes are CPU-only (a clear error here).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_options.h"
#include "monarch_ops.h"

namespace structops {
namespace torch_impl {

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
