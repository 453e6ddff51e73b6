// CPU registration of the butterfly ops: ATen glue around the torch-free kernels of csrc/cpu.
// Native dtypes: float32, float64, complex64, complex128; bfloat16/float16 are computed in
// float32 and cast back.  The block butterfly runs on ATen's batched GEMMs (block_butterfly_ops.h).
#include <torch/library.h>

#include "block_butterfly_ops.h"
#include "butterfly_common.h"
#include "cpu_executor.h"

namespace structops {
namespace torch_impl {
namespace {

struct CpuButterfly {
  static constexpr const char* kName = "CPU";
  static bool native(at::ScalarType t) {
    return t == at::kFloat || t == at::kDouble || t == at::kComplexFloat || t == at::kComplexDouble;
  }
  static bool upcast(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }
  static void forward(ButterflyForwardParams& p, const at::Tensor&) { butterfly_forward_cpu(p, executor()); }
  static void backward(ButterflyBackwardParams& p, const at::Tensor&) { butterfly_backward_cpu(p, executor()); }
};

}  // namespace
}  // namespace torch_impl
}  // namespace structops

TORCH_LIBRARY_IMPL(structops, CPU, m) {
  structops::torch_impl::register_butterfly_ops<structops::torch_impl::CpuButterfly>(m);
  structops::torch_impl::register_block_butterfly_ops(m, &structops::torch_impl::BlockButterflyAten::forward,
                                                      &structops::torch_impl::BlockButterflyAten::backward);
}
