// CPU registration of the sparse-plus-low-rank (SLTrain) ops: ATen GEMMs for the dense and
// low-rank products, the torch-free sparse kernels of csrc/cpu for x S^T, g S and the sampled
// grad_values (STRUCTOPS_SPARSE_KERNEL=aten: the ATen sparse engine CUDA uses, for testing).
#include <torch/library.h>

#include "sparse_lowrank_ops.h"

TORCH_LIBRARY_IMPL(structops, CPU, m) {
  m.impl("sparse_lowrank_linear", &structops::torch_impl::sparse_lowrank::forward);
  m.impl("sparse_lowrank_linear_backward", &structops::torch_impl::sparse_lowrank::backward);
}
