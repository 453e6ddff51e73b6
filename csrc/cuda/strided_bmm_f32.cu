// strided_bmm for float inputs (accumulation: float).  See strided_bmm.h.
#include "strided_bmm_impl.cuh"

namespace structops {
namespace cuda {
const char* strided_bmm_f32(const StridedBmm& p, cudaStream_t stream) {
  return run_strided_bmm<float, float, float>(p, stream);
}
}  // namespace cuda
}  // namespace structops
