// CPU registration of the random-basis ops (RandLoRA, VeRA): the ATen GEMM orchestration of
// randbasis_ops.h on MKL/oneDNN.  dtypes: float32, float64, bfloat16, float16 (the last two as
// far as ATen's CPU GEMMs support them).  Also registers randbasis_plan (no tensor arguments:
// CompositeExplicitAutograd), the torch-free cost model exposed for benchmarks and tests.
#include <torch/library.h>

#include "randbasis_ops.h"

TORCH_LIBRARY_IMPL(structops, CPU, m) { structops::torch_impl::register_randbasis_ops(m); }

TORCH_LIBRARY_IMPL(structops, CompositeExplicitAutograd, m) {
  m.impl("randbasis_plan", &structops::torch_impl::randbasis::plan_op);
}
