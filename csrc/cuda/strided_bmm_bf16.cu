// strided_bmm for cutlass::bfloat16_t inputs (accumulation: float).  See strided_bmm.h.
#include "strided_bmm_impl.cuh"

namespace structops {
namespace cuda {
const char* strided_bmm_bf16(const StridedBmm& p, cudaStream_t stream) {
  return dispatch_strided_bmm<cutlass::bfloat16_t, float>(p, stream);
}
}  // namespace cuda
}  // namespace structops
