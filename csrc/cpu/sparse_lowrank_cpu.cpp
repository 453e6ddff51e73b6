// Run-time selection of the sparse (SLTrain) CPU kernel variant (cpu_isa_dispatch.h) and the
// support builder.
#include "cpu_isa_dispatch.h"
#include "structops/sparse_lowrank.h"

namespace structops {

#define STRUCTOPS_SPARSE_DECLS                                                               \
  void sparse_matmul_forward(const SparseMatmulForwardParams& p, const CpuExecutor& exec); \
  void sparse_matmul_backward(const SparseMatmulBackwardParams& p, const CpuExecutor& exec);
STRUCTOPS_DECLARE_ISA_VARIANTS(STRUCTOPS_SPARSE_DECLS)
#undef STRUCTOPS_SPARSE_DECLS

int64_t sparse_support_from_flat(const int32_t* flat, int64_t nnz, int64_t rows, int64_t cols, int32_t* rowptr,
                                 int32_t* col) {
  const int64_t total = rows * cols;
  int64_t prev = -1, r = 0;
  rowptr[0] = 0;
  for (int64_t k = 0; k < nnz; ++k) {
    const int64_t f = flat[k];
    if (f < 0 || f >= total || f <= prev) return k;
    const int64_t i = f / cols;
    while (r < i) rowptr[++r] = static_cast<int32_t>(k);
    col[k] = static_cast<int32_t>(f - i * cols);
    prev = f;
  }
  while (r < rows) rowptr[++r] = static_cast<int32_t>(nnz);
  return -1;
}

void sparse_matmul_forward_cpu(const SparseMatmulForwardParams& p, const CpuExecutor& exec) {
  STRUCTOPS_DISPATCH_ISA(sparse_matmul_forward, p, exec);
}

void sparse_matmul_backward_cpu(const SparseMatmulBackwardParams& p, const CpuExecutor& exec) {
  STRUCTOPS_DISPATCH_ISA(sparse_matmul_backward, p, exec);
}

}  // namespace structops
