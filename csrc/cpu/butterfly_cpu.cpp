// Run-time selection of the butterfly CPU kernel variant: always the one the Monarch kernels use
// (monarch_cpu_isa(): the best the CPU supports, or a lower one forced with STRUCTOPS_CPU_ISA),
// so a forced variant applies to every family at once.
#include <cstring>

#include "structops/butterfly.h"

namespace structops {
namespace cpu {
#define STRUCTOPS_DECLARE_ISA(ns)                                                  \
  namespace ns {                                                                   \
  void butterfly_forward(const ButterflyForwardParams& p, const CpuExecutor& exec);   \
  void butterfly_backward(const ButterflyBackwardParams& p, const CpuExecutor& exec); \
  }
STRUCTOPS_DECLARE_ISA(generic)
#if STRUCTOPS_CPU_HAVE_X86
STRUCTOPS_DECLARE_ISA(avx2)
STRUCTOPS_DECLARE_ISA(avx512)
#endif
#undef STRUCTOPS_DECLARE_ISA
}  // namespace cpu

void butterfly_forward_cpu(const ButterflyForwardParams& params, const CpuExecutor& exec) {
  const char* isa = monarch_cpu_isa();
#if STRUCTOPS_CPU_HAVE_X86
  if (std::strcmp(isa, "avx512") == 0) return cpu::avx512::butterfly_forward(params, exec);
  if (std::strcmp(isa, "avx2") == 0) return cpu::avx2::butterfly_forward(params, exec);
#endif
  (void)isa;
  cpu::generic::butterfly_forward(params, exec);
}

void butterfly_backward_cpu(const ButterflyBackwardParams& params, const CpuExecutor& exec) {
  const char* isa = monarch_cpu_isa();
#if STRUCTOPS_CPU_HAVE_X86
  if (std::strcmp(isa, "avx512") == 0) return cpu::avx512::butterfly_backward(params, exec);
  if (std::strcmp(isa, "avx2") == 0) return cpu::avx2::butterfly_backward(params, exec);
#endif
  (void)isa;
  cpu::generic::butterfly_backward(params, exec);
}

}  // namespace structops
