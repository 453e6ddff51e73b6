// CUTLASS 2.x SIMT fallback of the GEMM engine (see gemm.h): every operand addressed through
// affine (row stride, column stride) layouts, so any leading dimension, any pointer alignment
// and both layouts work.  It is the last resort (no tensor cores): operands that are not aligned
// for vector accesses, exact fp32 (TF32 not allowed), and layout combinations the tensor-op
// kernels do not instantiate.  Included by one .cu per input dtype.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm_universal.h>
#include <cutlass/layout/matrix.h>

#include "gemm.h"

namespace structops {
namespace cuda {
namespace gemm {

// 2-stage SIMT mainloop (no cp.async: arbitrary strides forbid vector copies), 128x64x8 CTA
// tiles of 4 warps (64x32 each), fp32 (fp64) accumulation.  The Sm50 tag selects the generic
// SIMT path; it runs on every arch the TU is compiled for.
template <class TIn, class TOut, class TAcc>
using AffineGemm = cutlass::gemm::device::GemmUniversal<
    TIn, cutlass::layout::AffineRank2RowMajor,     // A (m x k)
    TIn, cutlass::layout::AffineRank2ColumnMajor,  // B (k x n)
    TOut, cutlass::layout::AffineRankN<2>,          // C, D (m x n)
    TAcc, cutlass::arch::OpClassSimt, cutlass::arch::Sm50, cutlass::gemm::GemmShape<128, 64, 8>,
    cutlass::gemm::GemmShape<64, 32, 8>, cutlass::gemm::GemmShape<1, 1, 1>,
    cutlass::epilogue::thread::LinearCombination<TOut, 1, TAcc, TAcc>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 2, 1, 1>;

// (row stride, column stride) of an operand.
inline cutlass::Coord<2, int64_t> affine(const MatrixRef& r) {
  return r.layout == Layout::kRowMajor ? cutlass::make_Coord(r.ld, int64_t(1)) : cutlass::make_Coord(int64_t(1), r.ld);
}

template <class TIn, class TOut, class TAcc>
const char* run_simt(const BatchedGemm& g, cudaStream_t stream) {
  using Gemm = AffineGemm<TIn, TOut, TAcc>;
  const auto sc = cutlass::make_Coord(g.ldc, int64_t(1));
  typename Gemm::Arguments args(cutlass::gemm::GemmUniversalMode::kBatched, cutlass::gemm::GemmCoord(g.m, g.n, g.k),
                                g.batch, {TAcc(1), TAcc(0)}, g.a.ptr, g.b.ptr, g.c, g.c, g.a.batch_stride,
                                g.b.batch_stride, g.batch_stride_c, g.batch_stride_c, affine(g.a), affine(g.b), sc, sc);
  Gemm op;
  cutlass::Status s = op.can_implement(args);
  if (s != cutlass::Status::kSuccess) return cutlass::cutlassGetStatusString(s);
  s = op.initialize(args, nullptr, stream);
  if (s != cutlass::Status::kSuccess) return cutlass::cutlassGetStatusString(s);
  s = op.run(stream);
  if (s != cutlass::Status::kSuccess) return cutlass::cutlassGetStatusString(s);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <class TIn, class TAcc>
const char* dispatch_simt(const BatchedGemm& g, cudaStream_t stream) {
  return g.c_acc ? run_simt<TIn, TAcc, TAcc>(g, stream) : run_simt<TIn, TIn, TAcc>(g, stream);
}

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
