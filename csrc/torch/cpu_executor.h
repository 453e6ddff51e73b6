// at::parallel_for as the CPU kernels' executor (structops::CpuExecutor, structops/monarch.h), so
// torch.set_num_threads applies to every family's CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include "structops/monarch.h"

namespace structops {
namespace torch_impl {

inline void run_parallel(void* /*exec_ctx*/, int64_t n, ParallelBody body, void* body_ctx) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(body_ctx, i);
  });
}

inline CpuExecutor executor() {
  CpuExecutor e;
  e.num_threads = at::get_num_threads();
  e.parallel = &run_parallel;
  return e;
}

}  // namespace torch_impl
}  // namespace structops
