// CUTLASS 2.x instantiation of structops::cuda::strided_bmm (see strided_bmm.h).  Included by one
// .cu per input dtype.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm_universal.h>
#include <cutlass/layout/matrix.h>

#include "strided_bmm.h"

namespace structops {
namespace cuda {

// SIMT mainloop (2-stage, no cp.async: arbitrary strides forbid vector copies), 128x64x8 CTA
// tiles of 4 warps (64x32 each), fp32 (fp64) accumulation.  The Sm50 tag selects the generic
// SIMT path; the code runs on every arch the TU is compiled for (sm_80, sm_90a).
template <class TIn, class TOut, class TAcc>
using AffineGemm = cutlass::gemm::device::GemmUniversal<
    TIn, cutlass::layout::AffineRank2RowMajor,     // A (m x k)
    TIn, cutlass::layout::AffineRank2ColumnMajor,  // B (k x n)
    TOut, cutlass::layout::AffineRankN<2>,          // C, D (m x n)
    TAcc, cutlass::arch::OpClassSimt, cutlass::arch::Sm50, cutlass::gemm::GemmShape<128, 64, 8>,
    cutlass::gemm::GemmShape<64, 32, 8>, cutlass::gemm::GemmShape<1, 1, 1>,
    cutlass::epilogue::thread::LinearCombination<TOut, 1, TAcc, TAcc>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 2, 1, 1>;

inline const char* status_message(cutlass::Status s) { return cutlass::cutlassGetStatusString(s); }

template <class TIn, class TOut, class TAcc>
const char* run_strided_bmm(const StridedBmm& p, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.batch <= 0) return nullptr;
  using Gemm = AffineGemm<TIn, TOut, TAcc>;
  typename Gemm::Arguments args(
      cutlass::gemm::GemmUniversalMode::kBatched, cutlass::gemm::GemmCoord(p.m, p.n, p.k), p.batch,
      {TAcc(1), TAcc(p.beta)}, p.a, p.b, p.c, p.c, p.sa.batch, p.sb.batch, p.sc.batch, p.sc.batch,
      cutlass::make_Coord(p.sa.row, p.sa.col), cutlass::make_Coord(p.sb.row, p.sb.col),
      cutlass::make_Coord(p.sc.row, p.sc.col), cutlass::make_Coord(p.sc.row, p.sc.col));
  Gemm gemm;
  cutlass::Status s = gemm.can_implement(args);
  if (s != cutlass::Status::kSuccess) return status_message(s);
  s = gemm.initialize(args, nullptr, stream);  // batched mode needs no workspace
  if (s != cutlass::Status::kSuccess) return status_message(s);
  s = gemm.run(stream);
  if (s != cutlass::Status::kSuccess) return status_message(s);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <class TIn, class TAcc>
const char* dispatch_strided_bmm(const StridedBmm& p, cudaStream_t stream) {
  return p.c_acc ? run_strided_bmm<TIn, TAcc, TAcc>(p, stream) : run_strided_bmm<TIn, TIn, TAcc>(p, stream);
}

}  // namespace cuda
}  // namespace structops
