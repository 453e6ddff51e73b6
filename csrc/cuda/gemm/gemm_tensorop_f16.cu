// fp16 x fp16 -> fp16 / fp32 GEMMs on tensor cores (HMMA.16816.F32), fp32 accumulation.
#include "gemm_tensorop_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* tensorop_gemm_f16(const BatchedGemm& g, Tile16 tile, cudaStream_t stream) {
  return run_16bit<cutlass::half_t>(g, tile, stream);
}
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
