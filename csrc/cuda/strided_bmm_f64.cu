// strided_bmm for double inputs (accumulation: double; C is double either way).  See strided_bmm.h.
#include "strided_bmm_impl.cuh"

namespace structops {
namespace cuda {
const char* strided_bmm_f64(const StridedBmm& p, cudaStream_t stream) {
  return run_strided_bmm<double, double, double>(p, stream);
}
}  // namespace cuda
}  // namespace structops
