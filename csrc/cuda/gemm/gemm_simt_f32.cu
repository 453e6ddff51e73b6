// SIMT fallback GEMM for fp32 inputs (float accumulation and C).  See gemm_simt_impl.cuh.
#include "gemm_simt_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* simt_strided_gemm_f32(const BatchedGemm& g, cudaStream_t stream) { return run_simt<float, float, float>(g, stream); }
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
