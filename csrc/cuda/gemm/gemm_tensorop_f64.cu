// fp64 GEMMs on DMMA tensor cores (sm_80+: DMMA.884), fp64 accumulation and output.
#include "gemm_tensorop_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* tensorop_gemm_f64(const BatchedGemm& g, cudaStream_t stream) {
  using Tile = GemmShape<64, 64, 16>;
  using Warp = GemmShape<32, 32, 16>;
  using Inst = GemmShape<8, 8, 4>;
  const bool ar = g.a.layout == Layout::kRowMajor, br = g.b.layout == Layout::kRowMajor;
  if (ar && !br) return run_tensorop<TensorOpGemm<double, RowMajor, ColumnMajor, double, double, Tile, Warp, Inst, 4, 1>>(g, stream);
  if (ar && br) return run_tensorop<TensorOpGemm<double, RowMajor, RowMajor, double, double, Tile, Warp, Inst, 4, 1>>(g, stream);
  if (!ar && br) return run_tensorop<TensorOpGemm<double, ColumnMajor, RowMajor, double, double, Tile, Warp, Inst, 4, 1>>(g, stream);
  return "structops gemm: layout combination not instantiated for DMMA";
}
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
