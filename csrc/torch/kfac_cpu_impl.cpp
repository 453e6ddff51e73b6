// CPU registration of the K-FAC ops: the ATen orchestration of kfac_ops.h on MKL/LAPACK (or
// OpenBLAS on aarch64 builds of torch).  Factors float32/float64; x of the factor update any
// floating dtype.  Also registers the torch-free plans (no tensor arguments).
#include <torch/library.h>

#include "kfac_ops.h"

TORCH_LIBRARY_IMPL(structops, CPU, m) { structops::torch_impl::kfac::register_kfac_ops(m); }

TORCH_LIBRARY_IMPL(structops, CompositeExplicitAutograd, m) {
  m.impl("kfac_factor_plan", [](int64_t d, int64_t tokens, int64_t elem_bytes) {
    const auto p = structops::kfac_factor_plan(d, tokens, elem_bytes);
    return std::make_tuple(p.block, p.num_blocks, p.chunk_tokens);
  });
  m.impl("kfac_inverse_plan", [](int64_t n, int64_t batch, int64_t method, bool on_cuda) {
    TORCH_CHECK_VALUE(method >= 0 && method <= 2, "kfac_inverse_plan: method must be 0, 1 or 2, got ", method);
    const auto p = structops::kfac_inverse_plan(n, batch, static_cast<structops::KfacInverseMethod>(method), on_cuda);
    return std::make_tuple(static_cast<int64_t>(p.method), p.leaf);
  });
}
