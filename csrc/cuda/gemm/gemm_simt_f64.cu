// SIMT fallback GEMM for fp64 inputs (double accumulation and C).  See gemm_simt_impl.cuh.
#include "gemm_simt_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* simt_strided_gemm_f64(const BatchedGemm& g, cudaStream_t stream) { return run_simt<double, double, double>(g, stream); }
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
