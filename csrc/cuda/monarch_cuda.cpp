// CUDA block-diagonal / Monarch forward and backward: host-side orchestration of the shared GEMM
// engine (csrc/cuda/gemm/gemm.h).  Torch-free.  See structops/monarch.h for the math and layouts.
//
// Every block GEMM is one batched launch over the blocks with plain row/column-major operands,
// so the tensor-core kernels apply; the permutations are row transposes between the GEMMs.
// Per token: u = BD(w1) x, v = P_mid u, w = BD(w2) v, y = P_out w.
//
//   step   batch  m x n x k     A (layout, ld, batch stride)   B (layout, ld, batch stride)   C (ld, bs)
//   F1     k      B x q x p     x   (row, xs, p)               w1 (col, p, q*p)  = w1[i]^T     u  (kq, q)
//   P_mid                       v[t, lm*r + rh] = u[t, rh*l + lm]        transpose (a=r, b=l)
//   F2     l      B x s x r     v   (row, kq, r)               w2 (col, r, s*r)  = w2[lm]^T    w  (m, s)
//   P_out                       y[t, sg*l + lm] = w[t, lm*s + sg]        transpose (a=l, b=s)
// backward (dw = P_out^T dy, dV = dL/dv, dU = dL/du):
//   P_out^T                     dw[t, lm*s + sg] = dy[t, sg*l + lm]      transpose (a=s, b=l)
//   dW2    l      s x r x B     dw  (col, m, s)  = dw^T        v  (row, kq, r)                 fp32 parts (r, s*r)
//   dV     l      B x r x s     dw  (row, m, s)                w2 (row, r, s*r)                dV (kq, r)
//   P_mid^T                     dU[t, rh*l + lm] = dV[t, lm*r + rh]      transpose (a=l, b=r)
//   dx     k      B x p x q     dU  (row, kq, q)               w1 (row, p, q*p)                dx (n, p)
//   dW1    k      q x p x B     dU  (col, kq, q) = dU^T        x  (row, xs, p)                 fp32 parts (p, q*p)
//
// P_mid fold (forward, and the backward's recompute of v): when q is a multiple of l with
// q/l a multiple of 8 (16-byte rows for the tensor-op kernels) and k <= kMaxFoldBlocks, F1 writes
// v directly and the u -> v transpose disappears.  For input block i and output block lm,
//   v[t, lm*r + i*(q/l) + a'] = sum_c x[t, i*p + c] w1[i, a'*l + lm, c]
// i.e. for each i one GEMM batched over lm with B = w1[i] rows lm, lm+l, ... read in place as a
// column-major operand (ld = l*p, batch stride p) — a row-permuted w1 without packing it:
//   F1'    l (per i)  B x q/l x p   x (row, xs, 0)   w1[i] (col, l*p, p)   v + i*q/l (kq, r)
//
// The weight-gradient GEMMs reduce over all tokens.  With the CUTLASS engine they run as `splits`
// launches over token ranges (gemm::token_splits: from the SM count and the output tile count)
// writing fp32 partials that reduce_splits sums in split order and converts (deterministic, no
// atomics).  With the cuBLAS engine they are one GEMM writing the gradient directly.

#include <cuda_runtime_api.h>

#include "gemm/gemm.h"
#include "gemm/launch_util.h"
#include "structops/monarch.h"

namespace structops {
namespace cuda {
namespace {

using gemm::BatchedGemm;
using gemm::Layout;
using gemm::MatrixRef;

const char* check_int(const MonarchDims& d) {
  const int64_t lim = (int64_t(1) << 31) - 1;
  if (d.batch > lim || d.n() > lim || d.mid() > lim || d.m() > lim)
    return "structops CUDA kernels: batch and feature sizes must be < 2^31";
  return nullptr;
}

// u = BD(w1) x, written with row stride ldu (u may be y for the block-diagonal op).
BatchedGemm first_factor(const MonarchDims& d, DType dt, const void* x, int64_t xs, const void* w1, void* u,
                         int64_t ldu) {
  return make_gemm(dt, d.batch, d.q, d.p, d.k, ref(x, xs, d.p, Layout::kRowMajor),
                   ref(w1, d.p, d.q * d.p, Layout::kColumnMajor), u, ldu, d.q);
}

constexpr int64_t kMaxFoldBlocks = 16;  // k launches: worth it only for few, large blocks

bool fold_pmid(const MonarchDims& d) {
  return d.has_second_factor() && d.q % d.l == 0 && (d.q / d.l) % 8 == 0 && d.k <= kMaxFoldBlocks;
}

// v = P_mid BD(w1) x: folded (k GEMMs writing v) or u -> scratch then a row transpose.
const char* first_factor_v(const MonarchDims& d, DType dt, const CudaOptions& o, const void* x, int64_t xs,
                           const void* w1, void* v, void* u_scratch, cudaStream_t stream) {
  if (fold_pmid(d)) {
    const int64_t ql = d.q / d.l, es = dtype_size(dt);
    for (int64_t i = 0; i < d.k; ++i) {
      const char* xi = static_cast<const char*>(x) + i * d.p * es;
      const char* wi = static_cast<const char*>(w1) + i * d.q * d.p * es;
      char* vi = static_cast<char*>(v) + i * ql * es;
      const char* err = gemm::batched_gemm(
          make_gemm(dt, d.batch, ql, d.p, d.l, ref(xi, xs, 0, Layout::kRowMajor),
                    ref(wi, d.l * d.p, d.p, Layout::kColumnMajor), vi, d.mid(), d.r),
          o, stream);
      if (err) return err;
    }
    return nullptr;
  }
  const char* err = gemm::batched_gemm(first_factor(d, dt, x, xs, w1, u_scratch, d.mid()), o, stream);
  if (err) return err;
  return gemm::transpose_rows(dt, u_scratch, d.mid(), v, d.mid(), d.batch, d.r, d.l, stream);
}

}  // namespace
}  // namespace cuda

int64_t monarch_forward_cuda_workspace(const MonarchForwardParams& p) {
  using namespace cuda;
  const MonarchDims& d = p.dims;
  if (!d.has_second_factor()) return 0;
  const int64_t es = dtype_size(p.dtype);
  const int64_t wide = fold_pmid(d) ? d.m() : (d.mid() > d.m() ? d.mid() : d.m());
  int64_t bytes = align_up(d.batch * wide * es);         // u (unless folded), then w
  if (!p.v) bytes += align_up(d.batch * d.mid() * es);   // v when it is not saved
  return bytes;
}

const char* monarch_forward_cuda(const MonarchForwardParams& p, CudaWorkspace ws, void* stream_ptr) {
  using namespace cuda;
  const MonarchDims& d = p.dims;
  const CudaOptions& o = p.cuda;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (d.batch == 0) return nullptr;
  STRUCTOPS_TRY(check_int(d));
  if (ws.bytes < monarch_forward_cuda_workspace(p)) return "monarch_forward_cuda: workspace too small";
  if (!d.has_second_factor())
    return gemm::batched_gemm(first_factor(d, p.dtype, p.x, p.x_stride, p.w1, p.y, d.mid()), o, stream);

  const int64_t es = dtype_size(p.dtype);
  Ptr alloc(ws.ptr);
  const int64_t wide = fold_pmid(d) ? d.m() : (d.mid() > d.m() ? d.mid() : d.m());
  void* uw = alloc.take(d.batch * wide * es);  // u (unless folded), later w
  void* v = p.v ? p.v : alloc.take(d.batch * d.mid() * es);
  STRUCTOPS_TRY(first_factor_v(d, p.dtype, o, p.x, p.x_stride, p.w1, v, uw, stream));  // BD(w1), P_mid
  STRUCTOPS_TRY(gemm::batched_gemm(make_gemm(p.dtype, d.batch, d.s, d.r, d.l, ref(v, d.mid(), d.r, Layout::kRowMajor),
                                             ref(p.w2, d.r, d.s * d.r, Layout::kColumnMajor), uw, d.m(), d.s),
                                   o, stream));
  return gemm::transpose_rows(p.dtype, uw, d.m(), p.y, d.m(), d.batch, d.l, d.s, stream);            // P_out
}

int64_t monarch_backward_cuda_workspace(const MonarchBackwardParams& p) {
  using namespace cuda;
  const MonarchDims& d = p.dims;
  const CudaOptions& o = p.cuda;
  const bool second = d.has_second_factor();
  const int64_t es = dtype_size(p.dtype), as = acc_size(p.dtype);
  int64_t bytes = 0;
  if (second) {
    bytes += align_up(d.batch * d.m() * es);  // dw = P_out^T dy
    const bool need_du = p.dx || p.dw1;
    const bool recompute_v = p.dw2 && !p.v;
    // buffer A: recomputed v, then dV;  buffer B: recomputed u, then dU
    if (need_du || recompute_v) bytes += align_up(d.batch * d.mid() * es);
    if (need_du || recompute_v) bytes += align_up(d.batch * d.mid() * es);
    if (p.dw2) {
      const int sp = weight_grad_splits(d.batch, p.dtype, o, d.s, d.r, d.l);
      if (uses_partials(p.dtype, o, sp)) bytes += align_up(sp * d.l * d.s * d.r * as);
    }
  }
  if (p.dw1) {
    const int sp = weight_grad_splits(d.batch, p.dtype, o, d.q, d.p, d.k);
    if (uses_partials(p.dtype, o, sp)) bytes += align_up(sp * d.k * d.q * d.p * as);
  }
  return bytes;
}

const char* monarch_backward_cuda(const MonarchBackwardParams& p, CudaWorkspace ws, void* stream_ptr) {
  using namespace cuda;
  const MonarchDims& d = p.dims;
  const CudaOptions& o = p.cuda;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const bool second = d.has_second_factor();
  const int64_t es = dtype_size(p.dtype);
  const int64_t w1_size = d.k * d.q * d.p, w2_size = second ? d.l * d.s * d.r : 0;
  void* dw2 = second ? p.dw2 : nullptr;
  if (d.batch == 0) {  // empty batch: weight gradients are zero
    if (p.dw1 && cudaMemsetAsync(p.dw1, 0, w1_size * es, stream) != cudaSuccess) return "cudaMemsetAsync failed";
    if (dw2 && cudaMemsetAsync(dw2, 0, w2_size * es, stream) != cudaSuccess) return "cudaMemsetAsync failed";
    return nullptr;
  }
  STRUCTOPS_TRY(check_int(d));
  if (ws.bytes < monarch_backward_cuda_workspace(p)) return "monarch_backward_cuda: workspace too small";
  Ptr alloc(ws.ptr);

  // Weight gradient: C[blk] (mo x no) = sum over tokens t of A[blk](:, t) B[blk](t, :).
  // a_t / b_t: element offset of token t in A / B.  Token ranges [sp*per, (sp+1)*per).
  auto weight_grad = [&](BatchedGemm g, int64_t a_t, int64_t b_t, void* out, int64_t out_size,
                         int64_t blocks) -> const char* {
    return weight_grad_gemm(g, d.batch, a_t, b_t, out, out_size, blocks, o, alloc, stream);
  };

  const void* dU = p.dy;  // block-diagonal op: dU = dy
  int64_t ldu = p.dy_stride;
  if (second) {
    void* dw = alloc.take(d.batch * d.m() * es);
    const bool need_du = p.dx || p.dw1;
    const bool recompute_v = dw2 && !p.v;
    void* buf_a = (need_du || recompute_v) ? alloc.take(d.batch * d.mid() * es) : nullptr;
    void* buf_b = (need_du || recompute_v) ? alloc.take(d.batch * d.mid() * es) : nullptr;
    STRUCTOPS_TRY(gemm::transpose_rows(p.dtype, p.dy, p.dy_stride, dw, d.m(), d.batch, d.s, d.l, stream));  // P_out^T
    if (dw2) {
      const void* v = p.v;
      if (!v) {  // recompute: v -> buf_a (u -> buf_b unless folded)
        STRUCTOPS_TRY(first_factor_v(d, p.dtype, o, p.x, p.x_stride, p.w1, buf_a, buf_b, stream));
        v = buf_a;
      }
      // dW2[lm] (s x r) = dw_lm^T v_lm
      BatchedGemm g = make_gemm(p.dtype, d.s, d.r, 0, d.l, ref(dw, d.m(), d.s, Layout::kColumnMajor),
                                ref(v, d.mid(), d.r, Layout::kRowMajor), nullptr, d.r, d.s * d.r);
      STRUCTOPS_TRY(weight_grad(g, d.m(), d.mid(), dw2, w2_size, d.l));
    }
    if (need_du) {
      // dV[t, lm*r + rh] = sum_sg dw[t, lm*s + sg] w2[lm, sg, rh]   -> buf_a (v is no longer needed)
      STRUCTOPS_TRY(gemm::batched_gemm(make_gemm(p.dtype, d.batch, d.r, d.s, d.l, ref(dw, d.m(), d.s, Layout::kRowMajor),
                                                 ref(p.w2, d.r, d.s * d.r, Layout::kRowMajor), buf_a, d.mid(), d.r),
                                       o, stream));
      STRUCTOPS_TRY(gemm::transpose_rows(p.dtype, buf_a, d.mid(), buf_b, d.mid(), d.batch, d.l, d.r, stream));  // P_mid^T
      dU = buf_b;
      ldu = d.mid();
    }
  }
  if (p.dx) {  // dx[t, i*p + c] = sum_a dU[t, i*q + a] w1[i, a, c]
    STRUCTOPS_TRY(gemm::batched_gemm(make_gemm(p.dtype, d.batch, d.p, d.q, d.k, ref(dU, ldu, d.q, Layout::kRowMajor),
                                               ref(p.w1, d.p, d.q * d.p, Layout::kRowMajor), p.dx, d.n(), d.p),
                                     o, stream));
  }
  if (p.dw1) {  // dW1[i] (q x p) = dU_i^T x_i
    BatchedGemm g = make_gemm(p.dtype, d.q, d.p, 0, d.k, ref(dU, ldu, d.q, Layout::kColumnMajor),
                              ref(p.x, p.x_stride, d.p, Layout::kRowMajor), nullptr, d.p, d.q * d.p);
    STRUCTOPS_TRY(weight_grad(g, ldu, p.x_stride, p.dw1, w1_size, d.k));
  }
  return nullptr;
}

}  // namespace structops
