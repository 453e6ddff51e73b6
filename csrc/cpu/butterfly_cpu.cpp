// Run-time selection of the butterfly CPU kernel variant (cpu_isa_dispatch.h: always the one the
// Monarch kernels use, so STRUCTOPS_CPU_ISA forces every family at once).
#include "cpu_isa_dispatch.h"
#include "structops/butterfly.h"

namespace structops {

#define STRUCTOPS_BUTTERFLY_DECLS                                                       \
  void butterfly_forward(const ButterflyForwardParams& p, const CpuExecutor& exec);   \
  void butterfly_backward(const ButterflyBackwardParams& p, const CpuExecutor& exec);
STRUCTOPS_DECLARE_ISA_VARIANTS(STRUCTOPS_BUTTERFLY_DECLS)
#undef STRUCTOPS_BUTTERFLY_DECLS

void butterfly_forward_cpu(const ButterflyForwardParams& params, const CpuExecutor& exec) {
  STRUCTOPS_DISPATCH_ISA(butterfly_forward, params, exec);
}

void butterfly_backward_cpu(const ButterflyBackwardParams& params, const CpuExecutor& exec) {
  STRUCTOPS_DISPATCH_ISA(butterfly_backward, params, exec);
}

}  // namespace structops
