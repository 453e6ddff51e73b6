// The per-call CUDA options every family's CUDA implementation passes to its torch-free kernels:
// the GEMM engine (STRUCTOPS_CUDA_GEMM=auto|cutlass|cublas; auto = cuBLAS until a GPU benchmark
// has measured the CUTLASS engine faster), TF32 permission (torch's
// allow_tf32 / float32 matmul precision, as cuBLAS through ATen would use) and the SM count of
// the tensor's device (cached per device).
#pragma once

#include <ATen/core/Tensor.h>

#include "structops/common.h"

namespace structops {
namespace torch_impl {

GemmEngine cuda_gemm_engine();
CudaOptions cuda_options(const at::Tensor& like);

}  // namespace torch_impl
}  // namespace structops
