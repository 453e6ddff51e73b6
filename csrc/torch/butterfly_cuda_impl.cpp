// CUDA registration of the butterfly ops: ATen glue around csrc/cuda/butterfly_cuda.cu.
// Current stream, workspace from the caching allocator, no host synchronisation.
// Native dtypes: float32, bfloat16, float16 (float32 accumulation), complex64; float64 and
// complex128 raise a clear error (no CUDA kernel).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "block_butterfly_ops.h"
#include "butterfly_common.h"
#include "cuda_options.h"

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

// Block butterfly on the GEMM engine (csrc/cuda/block_butterfly_cuda.cpp): float32 (TF32 when
// allowed), bfloat16, float16, float64.
void check_block_dtype(const char* op, at::ScalarType t) {
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble, op, ": ", t,
              " is not supported on CUDA (float32, bfloat16, float16, float64; complex runs on the CPU)");
}

at::Tensor block_forward(const at::Tensor& tw_in, const at::Tensor& x_in, bool inc, c10::optional<int64_t> out) {
  const char* op = "block_butterfly_multiply";
  const BlockDims b = check_block_butterfly(op, tw_in, x_in, inc, out);
  check_block_dtype(op, x_in.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor tw = tw_in.contiguous();
  const at::Tensor x = unit_last(x_in);
  at::Tensor y = at::empty({b.d.batch, b.d.nstacks, b.d.out_size}, x.options());
  BlockButterflyForwardParams p;
  p.dims = b.d;
  p.block_size = b.bs;
  p.dtype = to_dtype(x.scalar_type());
  p.twiddle = tw.data_ptr();
  p.x = x.data_ptr();
  p.x_batch_stride = x.stride(0);
  p.x_stack_stride = x.stride(1);
  p.y = y.data_ptr();
  p.cuda = cuda_options(x);
  const int64_t bytes = block_butterfly_forward_cuda_workspace(p);
  at::Tensor ws = at::empty({bytes}, x.options().dtype(at::kByte));
  const char* err = block_butterfly_forward_cuda(p, {ws.data_ptr(), bytes}, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "structops CUDA block butterfly forward failed: ", err);
  return y;
}

std::tuple<at::Tensor, at::Tensor> block_backward(const at::Tensor& grad_in, const at::Tensor& tw_in, const at::Tensor& x_in,
                                                  bool inc, std::array<bool, 2> mask) {
  const char* op = "block_butterfly_multiply_backward";
  TORCH_CHECK_VALUE(grad_in.dim() == 3, op, ": grad must be a 3-D tensor (batch, nstacks, output_size), got shape ",
                    shape_str(grad_in));
  const BlockDims b = check_block_butterfly(op, tw_in, x_in, inc, grad_in.size(2));
  check_block_dtype(op, x_in.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor tw = tw_in.contiguous();
  BlockButterflyBackwardParams p;
  BackwardTensors t = backward_params(p, b.d, to_dtype(x_in.scalar_type()), tw, x_in, grad_in, mask);
  if (!mask[0] && !mask[1]) return {t.dtwiddle, t.dx};
  p.block_size = b.bs;
  p.cuda = cuda_options(x_in);
  const int64_t bytes = block_butterfly_backward_cuda_workspace(p);
  at::Tensor ws = at::empty({bytes}, x_in.options().dtype(at::kByte));
  const char* err = block_butterfly_backward_cuda(p, {ws.data_ptr(), bytes}, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "structops CUDA block butterfly backward failed: ", err);
  return {t.dtwiddle, t.dx};
}

}  // namespace
}  // namespace torch_impl
}  // namespace structops

TORCH_LIBRARY_IMPL(structops, CUDA, m) {
  structops::torch_impl::register_butterfly_ops<structops::torch_impl::CudaButterfly>(m);
  structops::torch_impl::register_block_butterfly_ops(m, &structops::torch_impl::block_forward,
                                                      &structops::torch_impl::block_backward);
}
