// fp32 GEMMs on TF32 tensor cores (inputs rounded to TF32, fp32 accumulation and output).  Only
// selected when torch's fp32 matmul precision allows TF32 (CudaOptions::allow_tf32).
#include "gemm_tensorop_impl.cuh"

namespace structops {
namespace cuda {
namespace gemm {
const char* tensorop_gemm_tf32(const BatchedGemm& g, cudaStream_t stream) {
  using Tile = GemmShape<128, 128, 16>;
  using Warp = GemmShape<64, 64, 16>;
  using Inst = GemmShape<16, 8, 8>;
  const bool ar = g.a.layout == Layout::kRowMajor, br = g.b.layout == Layout::kRowMajor;
  if (ar && !br) return run_tensorop<TensorOpGemm<float, RowMajor, ColumnMajor, float, float, Tile, Warp, Inst, 4, 4>>(g, stream);
  if (ar && br) return run_tensorop<TensorOpGemm<float, RowMajor, RowMajor, float, float, Tile, Warp, Inst, 4, 4>>(g, stream);
  if (!ar && br) return run_tensorop<TensorOpGemm<float, ColumnMajor, RowMajor, float, float, Tile, Warp, Inst, 4, 4>>(g, stream);
  return "structops gemm: layout combination not instantiated for TF32";
}
}  // namespace gemm
}  // namespace cuda
}  // namespace structops
