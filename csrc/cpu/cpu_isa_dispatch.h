// Run-time dispatch to the instruction-set variant of a family's CPU kernels: the one the
// Monarch kernels use (monarch_cpu_isa(): the best the CPU supports, or a lower one forced with
// STRUCTOPS_CPU_ISA), so a forced variant applies to every family at once.  Each family's
// <family>_cpu_kernels.inc is compiled once per variant into structops::cpu::{avx512,avx2,generic}.
//
//   STRUCTOPS_DECLARE_ISA_VARIANTS(DECLS)   declares DECLS (a macro expanding to the family's
//                                           function declarations) in every variant namespace
//   STRUCTOPS_DISPATCH_ISA(fn, args...)     returns cpu::<variant>::fn(args...)
#pragma once

#include <cstring>

#include "structops/monarch.h"  // cpu_isa_for_kernel_call

#if STRUCTOPS_CPU_HAVE_X86
#define STRUCTOPS_DECLARE_ISA_VARIANTS(DECLS) \
  namespace cpu {                             \
  namespace generic { DECLS }                 \
  namespace avx2 { DECLS }                    \
  namespace avx512 { DECLS }                  \
  }
#define STRUCTOPS_DISPATCH_ISA(fn, ...)                                              \
  do {                                                                               \
    const char* isa_ = cpu_isa_for_kernel_call();                                    \
    if (std::strcmp(isa_, "avx512") == 0) return cpu::avx512::fn(__VA_ARGS__);       \
    if (std::strcmp(isa_, "avx2") == 0) return cpu::avx2::fn(__VA_ARGS__);           \
    return cpu::generic::fn(__VA_ARGS__);                                            \
  } while (0)
#else
#define STRUCTOPS_DECLARE_ISA_VARIANTS(DECLS) \
  namespace cpu {                             \
  namespace generic { DECLS }                 \
  }
#define STRUCTOPS_DISPATCH_ISA(fn, ...)                                              \
  do {                                                                               \
    (void)cpu_isa_for_kernel_call(); /* counted */                                   \
    return cpu::generic::fn(__VA_ARGS__);                                            \
  } while (0)
#endif
