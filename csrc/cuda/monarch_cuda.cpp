// CUDA block-diagonal / Monarch forward and backward: host-side orchestration of strided batched
// GEMMs (strided_bmm.h).  Torch-free.  See structops/monarch.h for the math and layouts.
//
// With u[t, i*q + a] (the first factor's output, u layout) every GEMM is one batched launch:
//
//   GEMM   batch  m x n x k      A (row, col, batch)           B (row=k, col=n, batch)    C (row, col, batch)
//   F1     k      B x q x p      x  (xs, 1, p)                 w1 (1, p, q*p)             u  (kq, 1, q)
//   F2     l      B x s x r      u  (kq, l, 1)        [P_mid]  w2 (1, r, s*r)             y  (m, l, 1)     [P_out]
//   dU     l      B x r x s      dy (dys, l, 1)       [P_out]  w2 (r, 1, s*r)             dU (kq, l, 1)    [P_mid]
//   dW2    l      s x r x B      dy (l, dys, 1)                u  (kq, l, 1)              dw2 (r, 1, s*r)
//   dx     k      B x p x q      dU (kq, 1, q)                 w1 (p, 1, q*p)             dx (n, 1, p)
//   dW1    k      q x p x B      dU (1, kq, q)                 x  (xs, 1, p)              dw1 (p, 1, q*p)
//
// The weight-gradient GEMMs reduce over all tokens; they run as `splits` launches over token
// ranges writing float partials that reduce_splits sums in order (deterministic).

#include <cuda_runtime_api.h>

#include "strided_bmm.h"
#include "structops/monarch.h"

namespace structops {
namespace cuda {

const char* strided_bmm(DType dtype, const StridedBmm& p, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return strided_bmm_f32(p, stream);
    case DType::kFloat64: return strided_bmm_f64(p, stream);
    case DType::kBFloat16: return strided_bmm_bf16(p, stream);
    case DType::kFloat16: return strided_bmm_f16(p, stream);
  }
  return "strided_bmm: unsupported dtype";
}

namespace {

int64_t elem_size(DType t) {
  switch (t) {
    case DType::kFloat64: return 8;
    case DType::kFloat32: return 4;
    default: return 2;
  }
}
int64_t acc_size(DType t) { return t == DType::kFloat64 ? 8 : 4; }

int64_t align_up(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// Token splits for the weight-gradient reductions: enough CTAs to fill a GPU when the output
// (the weights) is small, at most 16 partial copies of the weights.
int token_splits(int64_t batch) {
  int64_t s = batch / 8192;
  if (s < 1) s = 1;
  if (s > 16) s = 16;
  return static_cast<int>(s);
}

const char* check_int(const MonarchDims& d) {
  const int64_t lim = (int64_t(1) << 31) - 1;
  if (d.batch > lim || d.n() > lim || d.mid() > lim || d.m() > lim)
    return "structops CUDA kernels: batch and feature sizes must be < 2^31";
  return nullptr;
}

struct Ptr {
  char* p;
  explicit Ptr(void* base) : p(static_cast<char*>(base)) {}
  void* take(int64_t bytes) {
    void* r = p;
    p += align_up(bytes);
    return r;
  }
};

#define STRUCTOPS_TRY(expr)           \
  do {                                \
    const char* _err = (expr);        \
    if (_err != nullptr) return _err; \
  } while (0)

// u = BD(w1) x for tokens [t0, t0 + rows)
StridedBmm first_factor(const MonarchDims& d, const void* x, int64_t xs, const void* w1, void* u) {
  StridedBmm g;
  g.m = static_cast<int>(d.batch); g.n = static_cast<int>(d.q); g.k = static_cast<int>(d.p);
  g.batch = static_cast<int>(d.k);
  g.a = x; g.sa = {xs, 1, d.p};
  g.b = w1; g.sb = {1, d.p, d.q * d.p};
  g.c = u; g.sc = {d.mid(), 1, d.q};
  return g;
}

}  // namespace

}  // namespace cuda

int64_t monarch_forward_cuda_workspace(const MonarchForwardParams& p) {
  const MonarchDims& d = p.dims;
  if (!d.has_second_factor() || p.v) return 0;
  return cuda::align_up(d.batch * d.mid() * cuda::elem_size(p.dtype));
}

const char* monarch_forward_cuda(const MonarchForwardParams& p, CudaWorkspace ws, void* stream_ptr) {
  using namespace cuda;
  const MonarchDims& d = p.dims;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (d.batch == 0) return nullptr;
  STRUCTOPS_TRY(check_int(d));
  if (ws.bytes < monarch_forward_cuda_workspace(p)) return "monarch_forward_cuda: workspace too small";
  if (!d.has_second_factor()) return strided_bmm(p.dtype, first_factor(d, p.x, p.x_stride, p.w1, p.y), stream);

  void* u = p.v ? p.v : ws.ptr;  // CUDA saves u (see monarch.h)
  STRUCTOPS_TRY(strided_bmm(p.dtype, first_factor(d, p.x, p.x_stride, p.w1, u), stream));
  StridedBmm g;  // F2: y[t, sg*l + lm] = sum_rh u[t, rh*l + lm] w2[lm, sg, rh]
  g.m = static_cast<int>(d.batch); g.n = static_cast<int>(d.s); g.k = static_cast<int>(d.r);
  g.batch = static_cast<int>(d.l);
  g.a = u; g.sa = {d.mid(), d.l, 1};
  g.b = p.w2; g.sb = {1, d.r, d.s * d.r};
  g.c = p.y; g.sc = {d.m(), d.l, 1};
  return strided_bmm(p.dtype, g, stream);
}

int64_t monarch_backward_cuda_workspace(const MonarchBackwardParams& p) {
  using namespace cuda;
  const MonarchDims& d = p.dims;
  const bool second = d.has_second_factor();
  const int64_t es = elem_size(p.dtype), as = acc_size(p.dtype);
  int64_t bytes = 0;
  if (second && (p.dx || p.dw1)) bytes += align_up(d.batch * d.mid() * es);   // dU
  if (second && p.dw2 && !p.v) bytes += align_up(d.batch * d.mid() * es);     // recomputed u
  const int splits = token_splits(d.batch);
  if (splits > 1) {
    if (p.dw1) bytes += align_up(splits * d.k * d.q * d.p * as);
    if (second && p.dw2) bytes += align_up(splits * d.l * d.s * d.r * as);
  }
  return bytes;
}

const char* monarch_backward_cuda(const MonarchBackwardParams& p, CudaWorkspace ws, void* stream_ptr) {
  using namespace cuda;
  const MonarchDims& d = p.dims;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const bool second = d.has_second_factor();
  const int64_t es = elem_size(p.dtype), as = acc_size(p.dtype);
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
  const int splits = token_splits(d.batch);
  const int64_t per_split = (d.batch + splits - 1) / splits;

  // Weight gradient C[b](i, j) = sum over tokens of A[b](i, t) B[b](t, j), split over tokens.
  // a_t / b_t: element stride of A / B per token (the K dimension).
  auto weight_grad = [&](StridedBmm g, int64_t a_t, int64_t b_t, void* out, int64_t out_size) -> const char* {
    if (splits == 1) {
      g.k = static_cast<int>(d.batch);
      g.c = out;
      return strided_bmm(p.dtype, g, stream);
    }
    void* parts = alloc.take(splits * out_size * as);
    const void* a0 = g.a;
    const void* b0 = g.b;
    for (int sp = 0; sp < splits; ++sp) {
      const int64_t t0 = sp * per_split;
      const int64_t rows = t0 < d.batch ? (d.batch - t0 < per_split ? d.batch - t0 : per_split) : 0;
      StridedBmm gs = g;
      gs.k = static_cast<int>(rows);
      gs.a = static_cast<const char*>(a0) + t0 * a_t * es;
      gs.b = static_cast<const char*>(b0) + t0 * b_t * es;
      gs.c = static_cast<char*>(parts) + sp * out_size * as;
      gs.c_acc = true;
      if (rows == 0) {
        if (cudaMemsetAsync(gs.c, 0, out_size * as, stream) != cudaSuccess) return "cudaMemsetAsync failed";
        continue;
      }
      STRUCTOPS_TRY(strided_bmm(p.dtype, gs, stream));
    }
    return reduce_splits(p.dtype, parts, out_size, splits, out, stream);
  };

  const void* dU = p.dy;  // block-diagonal op: dU = dy
  int64_t ldu = p.dy_stride;
  if (second) {
    if (dw2) {
      const void* u = p.v;
      if (!u) {
        void* ub = alloc.take(d.batch * d.mid() * es);
        STRUCTOPS_TRY(strided_bmm(p.dtype, first_factor(d, p.x, p.x_stride, p.w1, ub), stream));
        u = ub;
      }
      StridedBmm g;  // dW2[lm](sg, rh) = sum_t dy[t, sg*l + lm] u[t, rh*l + lm]
      g.m = static_cast<int>(d.s); g.n = static_cast<int>(d.r); g.batch = static_cast<int>(d.l);
      g.a = p.dy; g.sa = {d.l, p.dy_stride, 1};
      g.b = u; g.sb = {d.mid(), d.l, 1};
      g.sc = {d.r, 1, d.s * d.r};
      STRUCTOPS_TRY(weight_grad(g, p.dy_stride, d.mid(), dw2, w2_size));
    }
    if (p.dx || p.dw1) {
      void* dub = alloc.take(d.batch * d.mid() * es);
      StridedBmm g;  // dU[t, rh*l + lm] = sum_sg dy[t, sg*l + lm] w2[lm, sg, rh]
      g.m = static_cast<int>(d.batch); g.n = static_cast<int>(d.r); g.k = static_cast<int>(d.s);
      g.batch = static_cast<int>(d.l);
      g.a = p.dy; g.sa = {p.dy_stride, d.l, 1};
      g.b = p.w2; g.sb = {d.r, 1, d.s * d.r};
      g.c = dub; g.sc = {d.mid(), d.l, 1};
      STRUCTOPS_TRY(strided_bmm(p.dtype, g, stream));
      dU = dub;
      ldu = d.mid();
    }
  }
  if (p.dx) {
    StridedBmm g;  // dx[t, i*p + c] = sum_a dU[t, i*q + a] w1[i, a, c]
    g.m = static_cast<int>(d.batch); g.n = static_cast<int>(d.p); g.k = static_cast<int>(d.q);
    g.batch = static_cast<int>(d.k);
    g.a = dU; g.sa = {ldu, 1, d.q};
    g.b = p.w1; g.sb = {d.p, 1, d.q * d.p};
    g.c = p.dx; g.sc = {d.n(), 1, d.p};
    STRUCTOPS_TRY(strided_bmm(p.dtype, g, stream));
  }
  if (p.dw1) {
    StridedBmm g;  // dW1[i](a, c) = sum_t dU[t, i*q + a] x[t, i*p + c]
    g.m = static_cast<int>(d.q); g.n = static_cast<int>(d.p); g.batch = static_cast<int>(d.k);
    g.a = dU; g.sa = {1, ldu, d.q};
    g.b = p.x; g.sb = {p.x_stride, 1, d.p};
    g.sc = {d.p, 1, d.q * d.p};
    STRUCTOPS_TRY(weight_grad(g, ldu, p.x_stride, p.dw1, w1_size));
  }
  return nullptr;
}

}  // namespace structops
