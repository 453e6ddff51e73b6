// bf16 x bf16 -> bf16 / fp32 GEMMs on tensor cores (HMMA.16816.F32.BF16), fp32 accumulation.
#include "gemm_tensorop_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* tensorop_gemm_bf16(const BatchedGemm& g, Tile16 tile, cudaStream_t stream) {
  return run_16bit<cutlass::bfloat16_t>(g, tile, stream);
}
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
