// CUDA registration of the K-FAC ops.  The factor update from bf16/fp16 activations (no mask,
// float32 factor) runs its lower-triangle block products on the structops GEMM engine
// (csrc/cuda/kfac_cuda.cpp: x read in place, fp32 accumulation, no cast copy); everything else is
// the ATen orchestration of kfac_ops.h on cuBLAS / cuSOLVER (ATen's batched potrf/potri and
// syevd).  Current stream, workspace from the caching allocator.  Compiled, not yet run on a GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_options.h"
#include "kfac_ops.h"

namespace structops {
namespace torch_impl {
namespace kfac {
namespace {

DType to_dtype(at::ScalarType t) { return t == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat16; }

at::Tensor factor_update_cuda(at::Tensor factor, const at::Tensor& x, double scale, bool bias, const OptTensor& mask) {
  check_factor_update(factor, x, bias, mask);
  const bool engine = !mask.has_value() && factor.scalar_type() == at::kFloat &&
                      (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) && x.size(0) > 0 &&
                      x.size(1) > 0 && x.stride(1) == 1;
  if (!engine) {
    factor_update_(factor, x, scale, bias, mask);
    return factor;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = x.size(0), d = x.size(1);
  const KfacFactorPlan plan = kfac_factor_plan(d, T, 4);
  KfacLowerBlocksParams p;
  p.dtype = to_dtype(x.scalar_type());
  p.x = x.data_ptr();
  p.x_stride = x.stride(0);
  p.tokens = T;
  p.d = d;
  p.block = plan.block;
  p.cuda = cuda_options(x);
  at::Tensor out = at::empty({kfac_num_lower_blocks(d, plan.block), plan.block, plan.block}, factor.options());
  p.out = out.data_ptr();
  const int64_t bytes = kfac_lower_blocks_cuda_workspace(p);
  at::Tensor ws = at::empty({std::max<int64_t>(bytes, 1)}, x.options().dtype(at::kByte));
  const char* err = kfac_lower_blocks_cuda(p, {ws.data_ptr(), bytes}, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "kfac_factor_update (CUDA GEMM engine): ", err);
  kfac_for_each_lower_block(d, plan.block, [&](int64_t b, int64_t i0, int64_t bi, int64_t j0, int64_t bj) {
    factor.narrow(0, i0, bi).narrow(1, j0, bj).add_(out[b].narrow(0, 0, bi).narrow(1, 0, bj), scale);
  });
  if (bias) add_bias_terms(factor, x, scale, c10::nullopt);
  symmetrize_from_lower(factor);
  return factor;
}

}  // namespace
}  // namespace kfac
}  // namespace torch_impl
}  // namespace structops

TORCH_LIBRARY_IMPL(structops, CUDA, m) {
  structops::torch_impl::kfac::register_kfac_ops(m, /*with_factor_update=*/false);
  m.impl("kfac_factor_update_", &structops::torch_impl::kfac::factor_update_cuda);
}
