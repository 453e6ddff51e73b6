// structops — torch-free types shared by every kernel family (CPU and CUDA).
#pragma once

#include <cstdint>

namespace structops {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat64: return 8;
    case DType::kFloat32: return 4;
    default: return 2;
  }
}

// ---- CUDA launch options, filled by the torch layer (csrc/torch) for every call ----
enum class GemmEngine : int {
  kCutlass = 0,  // structops' CUTLASS tensor-core kernels (csrc/cuda/gemm)
  kCublas = 1,   // cuBLAS through ATen (the A/B baseline; registered by the torch layer)
};

struct CudaOptions {
  GemmEngine engine = GemmEngine::kCutlass;
  bool allow_tf32 = false;  // fp32 GEMMs may use TF32 tensor cores (torch's matmul precision)
  int sm_count = 108;       // multiprocessors of the current device (sizes token splits)
};

// Device scratch memory handed in by the caller (e.g. from PyTorch's caching allocator).
struct CudaWorkspace {
  void* ptr = nullptr;
  int64_t bytes = 0;
};

}  // namespace structops
