// CUTLASS 2.x tensor-core instantiations of the GEMM engine (see gemm.h).  Included by one .cu
// per input dtype so ninja compiles them in parallel.  Sm80 kernels (mma.sync + cp.async
// multistage mainloop); the same code is compiled to sm_80 and sm_90a SASS.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm_universal.h>
#include <cutlass/layout/matrix.h>

#include "gemm.h"

namespace structops {
namespace cuda {
namespace gemm {

using cutlass::gemm::GemmShape;
using RowMajor = cutlass::layout::RowMajor;
using ColumnMajor = cutlass::layout::ColumnMajor;

// One tensor-op GEMM type.  Alignment of A/B in elements (16-byte cp.async); the epilogue
// stores 16 bytes per access too (one element for fp64 C, whose alignment the dispatcher does
// not require).
template <class TOut>
constexpr int epilogue_count() {
  return cutlass::sizeof_bits<TOut>::value == 64 ? 1 : 128 / cutlass::sizeof_bits<TOut>::value;
}

template <class T, class LayoutA, class LayoutB, class TOut, class TAcc, class Tile, class Warp, class Inst, int Stages,
          int Align, class MathOp = cutlass::arch::OpMultiplyAdd>
using TensorOpGemm = cutlass::gemm::device::GemmUniversal<
    T, LayoutA, T, LayoutB, TOut, RowMajor, TAcc, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, Tile, Warp,
    Inst, cutlass::epilogue::thread::LinearCombination<TOut, epilogue_count<TOut>(), TAcc, TAcc>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, Stages, Align, Align, MathOp>;

template <class Layout>
typename Layout::Stride::LongIndex ld_of(const MatrixRef& r) {
  return static_cast<typename Layout::Stride::LongIndex>(r.ld);
}

// Launches one instantiation in batched mode (no workspace needed).
template <class Gemm>
const char* run_tensorop(const BatchedGemm& g, cudaStream_t stream) {
  using LA = typename Gemm::LayoutA;
  using LB = typename Gemm::LayoutB;
  using TAcc = typename Gemm::ElementAccumulator;
  typename Gemm::Arguments args(cutlass::gemm::GemmUniversalMode::kBatched, cutlass::gemm::GemmCoord(g.m, g.n, g.k),
                                g.batch, {TAcc(1), TAcc(0)}, g.a.ptr, g.b.ptr, g.c, g.c, g.a.batch_stride,
                                g.b.batch_stride, g.batch_stride_c, g.batch_stride_c, ld_of<LA>(g.a), ld_of<LB>(g.b),
                                g.ldc, g.ldc);
  Gemm op;
  cutlass::Status s = op.can_implement(args);
  if (s != cutlass::Status::kSuccess) return cutlass::cutlassGetStatusString(s);
  s = op.initialize(args, nullptr, stream);  // sets the dynamic shared memory attribute
  if (s != cutlass::Status::kSuccess) return cutlass::cutlassGetStatusString(s);
  s = op.run(stream);
  if (s != cutlass::Status::kSuccess) return cutlass::cutlassGetStatusString(s);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// 16-bit inputs: (A row, B col) and (A row, B row) write T; (A col, B row) writes fp32.
template <class T, class Tile, class Warp, int Stages>
const char* run_16bit_tile(const BatchedGemm& g, cudaStream_t stream) {
  using Inst = GemmShape<16, 8, 16>;
  const bool ar = g.a.layout == Layout::kRowMajor, br = g.b.layout == Layout::kRowMajor;
  if (ar && !br && !g.c_acc)
    return run_tensorop<TensorOpGemm<T, RowMajor, ColumnMajor, T, float, Tile, Warp, Inst, Stages, 8>>(g, stream);
  if (ar && br && !g.c_acc)
    return run_tensorop<TensorOpGemm<T, RowMajor, RowMajor, T, float, Tile, Warp, Inst, Stages, 8>>(g, stream);
  if (!ar && br && g.c_acc)
    return run_tensorop<TensorOpGemm<T, ColumnMajor, RowMajor, float, float, Tile, Warp, Inst, Stages, 8>>(g, stream);
  return "structops gemm: layout combination not instantiated for 16-bit tensor cores";
}

template <class T>
const char* run_16bit(const BatchedGemm& g, Tile16 tile, cudaStream_t stream) {
  if (tile == Tile16::kLarge) return run_16bit_tile<T, GemmShape<128, 128, 32>, GemmShape<64, 64, 32>, 4>(g, stream);
  return run_16bit_tile<T, GemmShape<64, 64, 32>, GemmShape<32, 32, 32>, 5>(g, stream);
}

// fp32 (TF32) and fp64 (DMMA): every combination writes the input dtype, which is also the
// accumulator type (so it serves activations and weight-gradient partials alike).
template <class T, class Tile, class Warp, class Inst, int Stages, int Align>
const char* run_wide(const BatchedGemm& g, cudaStream_t stream) {
  const bool ar = g.a.layout == Layout::kRowMajor, br = g.b.layout == Layout::kRowMajor;
  if (ar && !br) return run_tensorop<TensorOpGemm<T, RowMajor, ColumnMajor, T, T, Tile, Warp, Inst, Stages, Align>>(g, stream);
  if (ar && br) return run_tensorop<TensorOpGemm<T, RowMajor, RowMajor, T, T, Tile, Warp, Inst, Stages, Align>>(g, stream);
  if (!ar && br) return run_tensorop<TensorOpGemm<T, ColumnMajor, RowMajor, T, T, Tile, Warp, Inst, Stages, Align>>(g, stream);
  return "structops gemm: layout combination not instantiated for fp32/fp64 tensor cores";
}

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
