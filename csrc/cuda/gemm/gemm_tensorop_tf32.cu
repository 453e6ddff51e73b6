// fp32 GEMMs on TF32 tensor cores (inputs rounded to TF32, fp32 accumulation and output), tile
// 128x128x16, 4 stages.  Only selected when torch's fp32 matmul precision allows TF32
// (CudaOptions::allow_tf32).
#include "gemm_tensorop_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* tensorop_gemm_tf32(const BatchedGemm& g, cudaStream_t stream) {
  return run_wide<float, GemmShape<128, 128, 16>, GemmShape<64, 64, 16>, GemmShape<16, 8, 8>, 4, 4>(g, stream);
}
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
