// fp64 GEMMs on DMMA tensor cores (sm_80+: DMMA.884), fp64 accumulation and output, tile
// 64x64x16, 4 stages, 8-byte accesses (any alignment).
#include "gemm_tensorop_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* tensorop_gemm_f64(const BatchedGemm& g, cudaStream_t stream) {
  return run_wide<double, GemmShape<64, 64, 16>, GemmShape<32, 32, 16>, GemmShape<8, 8, 4>, 4, 1>(g, stream);
}
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
