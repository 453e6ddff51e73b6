// CUDA registration of the butterfly ops: ATen glue around csrc/cuda/butterfly_cuda.cu.
// Current stream, workspace from the caching allocator, no host synchronisation.
// Native dtypes: float32, bfloat16, float16 (float32 accumulation), complex64; float64 and
// complex128 raise a clear error (no CUDA kernel).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "butterfly_common.h"

namespace structops {
namespace torch_impl {
namespace {

struct CudaButterfly {
  static constexpr const char* kName = "CUDA (float32, bfloat16, float16, complex64)";
  static bool native(at::ScalarType t) {
    return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kComplexFloat;
  }
  static bool upcast(at::ScalarType) { return false; }
  static void forward(ButterflyForwardParams& p, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    const int64_t bytes = butterfly_forward_cuda_workspace(p);
    at::Tensor ws = at::empty({bytes}, like.options().dtype(at::kByte));
    const char* err = butterfly_forward_cuda(p, {ws.data_ptr(), bytes}, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == nullptr, "structops CUDA butterfly forward failed: ", err);
  }
  static void backward(ButterflyBackwardParams& p, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    const int64_t bytes = butterfly_backward_cuda_workspace(p);
    at::Tensor ws = at::empty({bytes}, like.options().dtype(at::kByte));
    const char* err = butterfly_backward_cuda(p, {ws.data_ptr(), bytes}, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == nullptr, "structops CUDA butterfly backward failed: ", err);
  }
};

}  // namespace
}  // namespace torch_impl
}  // namespace structops

TORCH_LIBRARY_IMPL(structops, CUDA, m) {
  structops::torch_impl::register_butterfly_ops<structops::torch_impl::CudaButterfly>(m);
}
