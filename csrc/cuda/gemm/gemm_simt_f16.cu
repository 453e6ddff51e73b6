// SIMT fallback GEMM for fp16 inputs (fp32 accumulation; C in fp16 or fp32).  See
// gemm_simt_impl.cuh.
#include "gemm_simt_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* simt_strided_gemm_f16(const BatchedGemm& g, cudaStream_t stream) { return dispatch_simt<cutlass::half_t, float>(g, stream); }
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
