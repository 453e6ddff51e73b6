// CPU registration: ATen glue around the torch-free kernels of csrc/cpu.
// Native dtypes: float32, float64; bfloat16/float16 are computed in float32 and cast back;
// complex64/complex128 go through ComplexMonarch (monarch_ops.h: batched ATen GEMMs).
//
// Two execution paths, chosen per call from the shapes (the benchmark decided the rule):
//   * fused kernels (csrc/cpu): small and medium blocks, where a BLAS call per block would be
//     dominated by overheads and copies;
//   * "BLAS path": blocks too large for L2 (> 2 MiB of weights, e.g. 1024 x 1024).  Every block
//     GEMM is one MKL/OpenBLAS call (at::mm_out) on a strided view.  P_mid is folded into the
//     GEMMs by splitting each first-factor block into l row-interleaved sub-blocks when those are
//     wide (q/l >= 128), else it is a row-wise transpose (permute_rows_cpu, vectorised); P_out is
//     always such a transpose.  Needs q % l == 0.  Temporaries come from the kernels' scratch cache, so repeated calls do
//     not page-fault fresh memory.
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "cpu_executor.h"
#include "monarch_ops.h"

namespace structops {
namespace torch_impl {
namespace {

// A (rows x cols) tensor over memory from the kernels' scratch cache, returned on destruction.
struct ScratchTensor {
  void* ptr = nullptr;
  int64_t capacity = 0;
  at::Tensor t;
  ScratchTensor(int64_t rows, int64_t cols, const at::TensorOptions& opts) {
    const int64_t bytes = rows * cols * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
    ptr = monarch_cpu_scratch_acquire(bytes > 0 ? bytes : 1, &capacity);
    t = at::from_blob(ptr, {rows, cols}, opts);
  }
  ~ScratchTensor() { monarch_cpu_scratch_release(ptr, capacity); }
  ScratchTensor(const ScratchTensor&) = delete;
  ScratchTensor& operator=(const ScratchTensor&) = delete;
};

at::Tensor view(const void* ptr, at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& opts) {
  return at::from_blob(const_cast<void*>(ptr), sizes, strides, opts);
}
at::Tensor view(const void* ptr, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::from_blob(const_cast<void*>(ptr), sizes, opts);
}

// BLAS path rule: a block whose weights exceed 2 MiB (e.g. 1024 x 1024 fp32; our kernels keep
// a tile's weights in L2 and have no further cache blocking) and q % l == 0.  Measured with
// bench/bench_monarch.py: 8192 x 1024 with 4 blocks of 256 (and 128, 512) is faster fused,
// 4096 x 4096 with 4 blocks of 1024 is faster on MKL.
// STRUCTOPS_CPU_BLAS=0|1 forces the choice where the BLAS path applies (benchmarks, tests).
bool use_blas(const MonarchDims& d, int64_t element_size) {
  const bool possible = !d.has_second_factor() || d.q % d.l == 0;
  if (!possible) return false;
  if (const char* env = std::getenv("STRUCTOPS_CPU_BLAS")) return env[0] == '1';
  const int64_t block_elems = d.has_second_factor() ? std::max(d.p * d.q, d.r * d.s) : d.p * d.q;
  return block_elems * element_size > (int64_t(2) << 20);
}

// P_mid is folded into the first-factor GEMMs (row-interleaved sub-blocks of q/l columns) when
// those sub-blocks are wide enough for BLAS to run at full speed; otherwise the GEMMs run on
// whole blocks and P_mid is one row-wise transpose of the intermediate.
bool fold_pmid(const MonarchDims& d) { return d.q / d.l >= 128; }

// v = P_mid BD(w1) x  (v layout, rows of length k*q)
void blas_first_factor_v(const MonarchDims& d, DType dtype, const at::Tensor& x, const at::Tensor& w1, at::Tensor& v,
                         const at::TensorOptions& opts) {
  if (fold_pmid(d)) {
    // v[:, lm*r + i*q/l + a'] = x_i w1[i, lm + l*a', :]^T
    const int64_t ql = d.q / d.l;
    for (int64_t i = 0; i < d.k; ++i) {
      const at::Tensor xi = x.narrow(1, i * d.p, d.p);
      for (int64_t lm = 0; lm < d.l; ++lm) {
        at::Tensor out = v.narrow(1, lm * d.r + i * ql, ql);
        at::mm_out(out, xi, w1[i].slice(0, lm, d.q, d.l).t());
      }
    }
    return;
  }
  ScratchTensor ubuf(d.batch, d.mid(), opts);
  for (int64_t i = 0; i < d.k; ++i) {
    at::Tensor out = ubuf.t.narrow(1, i * d.q, d.q);
    at::mm_out(out, x.narrow(1, i * d.p, d.p), w1[i].t());
  }
  // v[t][lm*r + rh] = u[t][rh*l + lm]
  permute_rows_cpu(dtype, ubuf.ptr, d.mid(), v.data_ptr(), d.mid(), d.batch, d.r, d.l, executor());
}

// y = x BD(w1)^T (block-diagonal op), or the Monarch forward; optional saved v.
void blas_forward(const MonarchForwardParams& p, const at::TensorOptions& opts) {
  const MonarchDims& d = p.dims;
  const at::Tensor x = view(p.x, {d.batch, d.n()}, {p.x_stride, 1}, opts);
  const at::Tensor w1 = view(p.w1, {d.k, d.q, d.p}, opts);
  if (!d.has_second_factor()) {
    const at::Tensor y = view(p.y, {d.batch, d.m()}, opts);
    for (int64_t i = 0; i < d.k; ++i) {
      at::Tensor yi = y.narrow(1, i * d.q, d.q);
      at::mm_out(yi, x.narrow(1, i * d.p, d.p), w1[i].t());
    }
    return;
  }
  const at::Tensor w2 = view(p.w2, {d.l, d.s, d.r}, opts);
  std::unique_ptr<ScratchTensor> vtmp;
  at::Tensor v;
  if (p.v) {
    v = view(p.v, {d.batch, d.mid()}, opts);
  } else {
    vtmp = std::make_unique<ScratchTensor>(d.batch, d.mid(), opts);
    v = vtmp->t;
  }
  blas_first_factor_v(d, p.dtype, x, w1, v, opts);
  // w-layout result of the second factor, then P_out into y.
  ScratchTensor wbuf(d.batch, d.m(), opts);
  for (int64_t lm = 0; lm < d.l; ++lm) {
    at::Tensor out = wbuf.t.narrow(1, lm * d.s, d.s);
    at::mm_out(out, v.narrow(1, lm * d.r, d.r), w2[lm].t());
  }
  permute_rows_cpu(p.dtype, wbuf.ptr, d.m(), p.y, d.m(), d.batch, d.l, d.s, executor());
}

void blas_backward(const MonarchBackwardParams& p, const at::TensorOptions& opts) {
  const MonarchDims& d = p.dims;
  const at::Tensor dy = view(p.dy, {d.batch, d.m()}, {p.dy_stride, 1}, opts);
  const at::Tensor w1 = view(p.w1, {d.k, d.q, d.p}, opts);
  at::Tensor x;
  if (p.x) x = view(p.x, {d.batch, d.n()}, {p.x_stride, 1}, opts);
  auto first_factor_grads = [&](const at::Tensor& dU) {  // dU in u layout
    for (int64_t i = 0; i < d.k; ++i) {
      const at::Tensor gi = dU.narrow(1, i * d.q, d.q);
      if (p.dx) {
        at::Tensor dxi = view(p.dx, {d.batch, d.n()}, opts).narrow(1, i * d.p, d.p);
        at::mm_out(dxi, gi, w1[i]);
      }
      if (p.dw1) {
        at::Tensor dwi = view(p.dw1, {d.k, d.q, d.p}, opts)[i];
        at::mm_out(dwi, gi.t(), x.narrow(1, i * d.p, d.p));
      }
    }
  };
  if (!d.has_second_factor()) {  // block-diagonal: dU = dy
    first_factor_grads(dy);
    return;
  }
  const at::Tensor w2 = view(p.w2, {d.l, d.s, d.r}, opts);
  // D = P_out^T dy: D[t][lm*s + sg] = dy[t][sg*l + lm]
  ScratchTensor dbuf(d.batch, d.m(), opts);
  permute_rows_cpu(p.dtype, p.dy, p.dy_stride, dbuf.ptr, d.m(), d.batch, d.s, d.l, executor());
  const at::Tensor D = dbuf.t;

  if (p.dw2) {
    std::unique_ptr<ScratchTensor> vtmp;
    at::Tensor v;
    if (p.v) {
      v = view(p.v, {d.batch, d.mid()}, opts);
    } else {  // recompute v exactly as the forward does
      vtmp = std::make_unique<ScratchTensor>(d.batch, d.mid(), opts);
      v = vtmp->t;
      blas_first_factor_v(d, p.dtype, x, w1, v, opts);
    }
    const at::Tensor dw2 = view(p.dw2, {d.l, d.s, d.r}, opts);
    for (int64_t lm = 0; lm < d.l; ++lm) {
      at::Tensor out = dw2[lm];
      at::mm_out(out, D.narrow(1, lm * d.s, d.s).t(), v.narrow(1, lm * d.r, d.r));
    }
  }
  if (!p.dx && !p.dw1) return;
  // dV = D_lm w2[lm] per block (v layout).
  ScratchTensor dvbuf(d.batch, d.mid(), opts);
  const at::Tensor dV = dvbuf.t;
  for (int64_t lm = 0; lm < d.l; ++lm) {
    at::Tensor out = dV.narrow(1, lm * d.r, d.r);
    at::mm_out(out, D.narrow(1, lm * d.s, d.s), w2[lm]);
  }
  if (!fold_pmid(d)) {  // dU = P_mid^T dV: dU[t][rh*l + lm] = dV[t][lm*r + rh]
    ScratchTensor dubuf(d.batch, d.mid(), opts);
    permute_rows_cpu(p.dtype, dvbuf.ptr, d.mid(), dubuf.ptr, d.mid(), d.batch, d.l, d.r, executor());
    first_factor_grads(dubuf.t);
    return;
  }
  // Folded: the first-factor gradients read dV through the forward's row-interleaved sub-blocks.
  const int64_t ql = d.q / d.l;
  for (int64_t i = 0; i < d.k; ++i) {
    for (int64_t lm = 0; lm < d.l; ++lm) {
      const at::Tensor dvi = dV.narrow(1, lm * d.r + i * ql, ql);
      const at::Tensor w1s = w1[i].slice(0, lm, d.q, d.l);  // (q/l, p), row stride l*p
      if (p.dx) {
        at::Tensor dxi = view(p.dx, {d.batch, d.n()}, opts).narrow(1, i * d.p, d.p);
        if (lm == 0)
          at::mm_out(dxi, dvi, w1s);
        else
          at::addmm_out(dxi, dxi, dvi, w1s);
      }
      if (p.dw1) {
        at::Tensor out = view(p.dw1, {d.k, d.q, d.p}, opts)[i].slice(0, lm, d.q, d.l);
        at::mm_out(out, dvi.t(), x.narrow(1, i * d.p, d.p));
      }
    }
  }
}

struct CpuKernel {
  static constexpr bool kComplex = true;
  static constexpr const char* kName = "CPU";
  static bool native(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }
  // Large outputs come from the kernels' recycling cache and return to it when the tensor dies:
  // a fresh allocation of this size is an mmap whose first touch page-faults every page, which
  // on some machines costs as much as the whole kernel.  Small ones use the normal allocator.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
    if (bytes < (int64_t(4) << 20)) return at::empty(sizes, opts);
    int64_t capacity = 0;
    void* ptr = monarch_cpu_scratch_acquire(bytes, &capacity);
    return at::from_blob(ptr, sizes, [capacity](void* p) { monarch_cpu_scratch_release(p, capacity); }, opts);
  }
  static void forward(MonarchForwardParams& p, const at::Tensor& like) {
    if (use_blas(p.dims, like.element_size()))
      blas_forward(p, like.options());
    else
      monarch_forward_cpu(p, executor());
  }
  static void backward(MonarchBackwardParams& p, const at::Tensor& like) {
    if (use_blas(p.dims, like.element_size()))
      blas_backward(p, like.options());
    else
      monarch_backward_cpu(p, executor());
  }
};

}  // namespace
}  // namespace torch_impl
}  // namespace structops

TORCH_LIBRARY_IMPL(structops, CPU, m) { structops::torch_impl::register_monarch_ops<structops::torch_impl::CpuKernel>(m); }
