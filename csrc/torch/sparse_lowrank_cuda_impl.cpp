// CUDA registration of the sparse-plus-low-rank (SLTrain) ops: the same orchestration as the CPU
// (sparse_lowrank_ops.h) with the ATen sparse engine for the three sparse products — cuSPARSE
// SpMM for x S^T and g S (through ATen's CSR tensors) and SDDMM (at::sparse_sampled_addmm) for
// grad_values — and cuBLAS for the low-rank/dense GEMMs.  The same engine runs on the CPU under
// STRUCTOPS_SPARSE_KERNEL=aten, where the tests check it.  Compiled, not yet run on a GPU.
#include <torch/library.h>

#include "sparse_lowrank_ops.h"

TORCH_LIBRARY_IMPL(structops, CUDA, m) {
  m.impl("sparse_lowrank_linear", &structops::torch_impl::sparse_lowrank::forward);
  m.impl("sparse_lowrank_linear_backward", &structops::torch_impl::sparse_lowrank::backward);
}
