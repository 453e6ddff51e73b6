// CUDA registration of the random-basis ops: the same ATen GEMM orchestration as the CPU
// (randbasis_ops.h), so on CUDA every product runs on cuBLAS (tensor cores for bf16/fp16, TF32
// when torch allows it), not yet on the structops GEMM engine (csrc/cuda/gemm): the fused
// in-mainloop basis generation of finetune.md §12.2 is not implemented.  Compiled, not yet run
// on a GPU.
#include <torch/library.h>

#include "randbasis_ops.h"

TORCH_LIBRARY_IMPL(structops, CUDA, m) { structops::torch_impl::register_randbasis_ops(m); }
