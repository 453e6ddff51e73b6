// CUDA registration of the K-FAC ops: the same ATen orchestration as the CPU (kfac_ops.h), so on
// CUDA the factor update and preconditioning run on cuBLAS and the factorizations on cuSOLVER
// (ATen's batched potrf/potri and syevd), not on the structops GEMM engine.  Compiled, not yet
// run on a GPU.
#include <torch/library.h>

#include "kfac_ops.h"

TORCH_LIBRARY_IMPL(structops, CUDA, m) { structops::torch_impl::kfac::register_kfac_ops(m); }
