// Butterfly on CUDA: the work of one thread block, written once as __host__ __device__ code so
// that tests/cpp/butterfly_host_emulation.cpp runs exactly these functions on the CPU (every
// index, window, pass plan and partial-sum layout is checked there without a GPU).
//
// Semantics: structops/butterfly.h.  The nblocks*log_n stages are applied in "passes": a pass
// owns a window of wb consecutive stride bits [lo, lo + wb) and a run of consecutive stages whose
// log-strides lie in it.  The elements one pass mixes are the 2^wb indices
//     e(o, j) = (o >> lo) << (lo + wb) | j << lo | (o & (2^lo - 1)),   j < 2^wb,
// for each outer index o < n / 2^wb; a thread block loads `rows` rows of one such window into
// shared memory, runs the pass's stages there (one barrier per stage) and writes it back.  With
// n <= 2^wmax (4096 real / 2048-4096 complex, from the device's shared-memory limit) there is
// one pass over all stages.  Windows partition the elements, so passes may run in place.
//
// Backward: dx alone is the adjoint (conjugate-transposed twiddles, stages reversed) through the
// same pass code.  With dtwiddle, each pass's input is kept (the input x for the first pass,
// workspace buffers for later ones); for every stage s of a pass, in reverse, the block reloads
// the pass input, recomputes stages [first, s) in shared memory, adds the stage's twiddle
// gradients over its rows into a per-block partial (each partial entry is owned by one thread
// index, so no atomics and no races) and updates the gradient in place.  A second kernel sums the
// per-block partials in block order: deterministic.  The recompute costs count*(count+1)/2 stage
// applications per pass instead of count, all in shared memory.
#pragma once

#include <algorithm>
#include <cstdint>

#include "structops/butterfly.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define BFLY_HD __host__ __device__ __forceinline__
// The block procedures below are templates on an executor whose phase() is __device__ in the
// kernels and plain host code in the emulation; only the matching instantiation is ever used.
#define BFLY_EXEC_CHECK _Pragma("nv_exec_check_disable")
#else
#define BFLY_HD inline
#define BFLY_EXEC_CHECK
#endif

namespace structops {
namespace bfly_cuda {

// ---- compute types: float (real) or C2 (complex, layout of float2) ---------------------------
struct C2 {
  float x, y;
};

BFLY_HD float zero_of(float) { return 0.f; }
BFLY_HD C2 zero_of(C2) { return C2{0.f, 0.f}; }
BFLY_HD float conj_of(float a) { return a; }
BFLY_HD C2 conj_of(C2 a) { return C2{a.x, -a.y}; }
// a*x + b*y
BFLY_HD float lin(float a, float x, float b, float y) { return a * x + b * y; }
BFLY_HD C2 lin(C2 a, C2 x, C2 b, C2 y) {
  return C2{a.x * x.x - a.y * x.y + b.x * y.x - b.y * y.y, a.x * x.y + a.y * x.x + b.x * y.y + b.y * y.x};
}
// acc += g * conj(a)
BFLY_HD void mac_conj(float& acc, float g, float a) { acc += g * a; }
BFLY_HD void mac_conj(C2& acc, C2 g, C2 a) {
  acc.x += g.x * a.x + g.y * a.y;
  acc.y += g.y * a.x - g.x * a.y;
}
// partial (float scalars) += v
BFLY_HD void add_partial(float* p, float v) { p[0] += v; }
BFLY_HD void add_partial(float* p, C2 v) {
  p[0] += v.x;
  p[1] += v.y;
}

// Storage -> compute conversions.  The device TU adds bf16 / half / float2 overloads.
BFLY_HD float to_compute(float v) { return v; }
BFLY_HD C2 to_compute(C2 v) { return v; }
BFLY_HD void from_compute(float* p, float v) { *p = v; }
BFLY_HD void from_compute(C2* p, C2 v) { *p = v; }
#ifdef __CUDACC__
BFLY_HD float to_compute(__nv_bfloat16 v) { return __bfloat162float(v); }
BFLY_HD float to_compute(__half v) { return __half2float(v); }
BFLY_HD C2 to_compute(float2 v) { return C2{v.x, v.y}; }
BFLY_HD void from_compute(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
BFLY_HD void from_compute(__half* p, float v) { *p = __float2half(v); }
BFLY_HD void from_compute(float2* p, C2 v) { *p = make_float2(v.x, v.y); }
#endif

// ---- geometry ---------------------------------------------------------------------------------------
BFLY_HD int stage_log_stride(int64_t i, int log_n, bool increasing) {
  const int64_t block = i / log_n;
  const int t = static_cast<int>(i % log_n);
  const bool inc = increasing != ((block & 1) == 1);
  return inc ? t : log_n - 1 - t;
}
BFLY_HD int64_t rho_of(int64_t e, int ls) { return ((e >> (ls + 1)) << ls) | (e & ((int64_t(1) << ls) - 1)); }
BFLY_HD int64_t insert0(int64_t x, int b) { return ((x >> b) << (b + 1)) | (x & ((int64_t(1) << b) - 1)); }
BFLY_HD int64_t elem_of(int64_t o, int64_t j, int lo, int wb) {
  return ((o >> lo) << (lo + wb)) | (j << lo) | (o & ((int64_t(1) << lo) - 1));
}

struct Pass {
  int lo = 0, wb = 0;     // window of stride bits
  int64_t first = 0;      // first stage (global order: stage i has twiddle slab i)
  int64_t count = 0;      // number of stages
};

// Plan: one pass when log_n <= wmax; else greedy runs of consecutive stages whose log-strides
// fit a window of wmax bits (anchored at the run's first stride, towards its direction).
// Writes up to max_passes passes, returns the number needed.
inline int plan_passes(int log_n, int64_t nblocks, bool increasing, int wmax, Pass* out, int max_passes) {
  const int64_t total = nblocks * log_n;
  if (log_n <= wmax) {
    if (max_passes > 0) out[0] = Pass{0, log_n, 0, total};
    return 1;
  }
  int np = 0;
  int64_t i = 0;
  while (i < total) {
    const int ls = stage_log_stride(i, log_n, increasing);
    const int64_t block = i / log_n;
    const bool inc = increasing != ((block & 1) == 1);
    int lo = inc ? ls : ls - wmax + 1;
    if (lo < 0) lo = 0;
    if (lo > log_n - wmax) lo = log_n - wmax;
    int64_t c = 0;
    while (i + c < total) {
      const int l2 = stage_log_stride(i + c, log_n, increasing);
      if (l2 < lo || l2 >= lo + wmax) break;
      ++c;
    }
    if (np < max_passes) out[np] = Pass{lo, wmax, i, c};
    ++np;
    i += c;
  }
  return np;
}

// ---- one block's work ------------------------------------------------------------------------------
// A (batch, nstacks, len) operand: element e of row (b, stack) at p + b*bs + stack*ss + e;
// elements e >= len read as zero / are not written.  T: storage type (user tensor) or the
// compute type (workspace).
template <class T>
struct Operand {
  T* p = nullptr;
  int64_t bs = 0, ss = 0, len = 0;
};

struct Geometry {
  int64_t batch = 0, nstacks = 0;
  int log_n = 0;
  bool increasing = true;
  int rows = 1;  // rows per block (window copies in shared memory)
  BFLY_HD int64_t n() const { return int64_t(1) << log_n; }
};

// Phase: window (row0 .. row0+rows, outer o) of `src` -> sm[r << wb | j]
BFLY_EXEC_CHECK
template <class V, class T, class Exec>
BFLY_HD void load_window(Exec& ex, V* sm, const Operand<const T>& src, const Geometry& g, const Pass& ps, int64_t row0,
                         int64_t o, int64_t stack) {
  ex.phase([&](int tid, int nt) {
    const int64_t size = int64_t(g.rows) << ps.wb;
    for (int64_t idx = tid; idx < size; idx += nt) {
      const int64_t r = idx >> ps.wb, j = idx & ((int64_t(1) << ps.wb) - 1);
      const int64_t b = row0 + r, e = elem_of(o, j, ps.lo, ps.wb);
      V v = zero_of(V{});
      if (b < g.batch && e < src.len) v = to_compute(src.p[b * src.bs + stack * src.ss + e]);
      sm[idx] = v;
    }
  });
}

BFLY_EXEC_CHECK
template <class V, class T, class Exec>
BFLY_HD void store_window(Exec& ex, const V* sm, const Operand<T>& dst, const Geometry& g, const Pass& ps, int64_t row0,
                          int64_t o, int64_t stack) {
  ex.phase([&](int tid, int nt) {
    const int64_t size = int64_t(g.rows) << ps.wb;
    for (int64_t idx = tid; idx < size; idx += nt) {
      const int64_t r = idx >> ps.wb, j = idx & ((int64_t(1) << ps.wb) - 1);
      const int64_t b = row0 + r, e = elem_of(o, j, ps.lo, ps.wb);
      if (b < g.batch && e < dst.len) from_compute(dst.p + b * dst.bs + stack * dst.ss + e, sm[idx]);
    }
  });
}

// Twiddle entry k (0..3 = (0,0), (0,1), (1,0), (1,1)) of row rho of global stage i.
template <class V, class TW>
BFLY_HD V twiddle_at(const TW* tw_stack, int64_t n, int64_t i, int64_t rho, int k) {
  return to_compute(tw_stack[(i * (n / 2) + rho) * 4 + k]);
}

// Phase: global stage i on the window (forward, or its adjoint: conjugate transpose).
BFLY_EXEC_CHECK
template <class V, class TW, class Exec>
BFLY_HD void stage_window(Exec& ex, V* sm, const TW* tw_stack, const Geometry& g, const Pass& ps, int64_t i, int64_t o,
                          bool adjoint) {
  const int ls = stage_log_stride(i, g.log_n, g.increasing);
  const int lb = ls - ps.lo;
  ex.phase([&](int tid, int nt) {
    const int64_t half = int64_t(1) << (ps.wb - 1);
    for (int64_t p = tid; p < int64_t(g.rows) * half; p += nt) {
      const int64_t r = p / half, q = p % half;
      const int64_t j0 = insert0(q, lb), j1 = j0 | (int64_t(1) << lb);
      const int64_t rho = rho_of(elem_of(o, j0, ps.lo, ps.wb), ls);
      V t00 = twiddle_at<V>(tw_stack, g.n(), i, rho, 0), t01 = twiddle_at<V>(tw_stack, g.n(), i, rho, 1);
      V t10 = twiddle_at<V>(tw_stack, g.n(), i, rho, 2), t11 = twiddle_at<V>(tw_stack, g.n(), i, rho, 3);
      if (adjoint) {
        const V a = conj_of(t00), b = conj_of(t10), c = conj_of(t01), d = conj_of(t11);
        t00 = a;
        t01 = b;
        t10 = c;
        t11 = d;
      }
      V* row = sm + (r << ps.wb);
      const V a0 = row[j0], a1 = row[j1];
      row[j0] = lin(t00, a0, t01, a1);
      row[j1] = lin(t10, a0, t11, a1);
    }
  });
}

// One forward (or adjoint) pass of one work item: load, stages, store.
BFLY_EXEC_CHECK
template <class V, class TW, class TS, class TD, class Exec>
BFLY_HD void pass_item(Exec& ex, V* sm, const Operand<const TS>& src, const Operand<TD>& dst, const TW* tw_stack,
                       const Geometry& g, const Pass& ps, int64_t row0, int64_t o, int64_t stack, bool adjoint) {
  load_window(ex, sm, src, g, ps, row0, o, stack);
  for (int64_t k = 0; k < ps.count; ++k) {
    const int64_t i = adjoint ? ps.first + ps.count - 1 - k : ps.first + k;
    stage_window(ex, sm, tw_stack, g, ps, i, o, adjoint);
  }
  store_window(ex, sm, dst, g, ps, row0, o, stack);
}

// Phase: twiddle gradients of global stage i from its input `cur` and output gradient `grad`
// (summed over the rows of the window into part_stack, entries of one stack in the twiddle's
// layout, real scalars), then grad <- stage^H grad in place.  Thread tid owns pairs q = tid,
// tid + nt, ...: the partial entries it touches depend on (q, o) only, so a fixed thread index
// owns each entry across all work items of a block.
BFLY_EXEC_CHECK
template <class V, class TW, class Exec>
BFLY_HD void stage_grad_window(Exec& ex, const V* cur, V* grad, float* part_stack, const TW* tw_stack, const Geometry& g,
                               const Pass& ps, int64_t i, int64_t o) {
  const int ls = stage_log_stride(i, g.log_n, g.increasing);
  const int lb = ls - ps.lo;
  constexpr int P = sizeof(V) / sizeof(float);
  ex.phase([&](int tid, int nt) {
    const int64_t half = int64_t(1) << (ps.wb - 1);
    for (int64_t q = tid; q < half; q += nt) {
      const int64_t j0 = insert0(q, lb), j1 = j0 | (int64_t(1) << lb);
      const int64_t rho = rho_of(elem_of(o, j0, ps.lo, ps.wb), ls);
      const V t00 = conj_of(twiddle_at<V>(tw_stack, g.n(), i, rho, 0)), t01 = conj_of(twiddle_at<V>(tw_stack, g.n(), i, rho, 1));
      const V t10 = conj_of(twiddle_at<V>(tw_stack, g.n(), i, rho, 2)), t11 = conj_of(twiddle_at<V>(tw_stack, g.n(), i, rho, 3));
      V q00 = zero_of(V{}), q01 = zero_of(V{}), q10 = zero_of(V{}), q11 = zero_of(V{});
      for (int r = 0; r < g.rows; ++r) {
        const V* c = cur + (int64_t(r) << ps.wb);
        V* gr = grad + (int64_t(r) << ps.wb);
        const V a0 = c[j0], a1 = c[j1], g0 = gr[j0], g1 = gr[j1];
        mac_conj(q00, g0, a0);
        mac_conj(q01, g0, a1);
        mac_conj(q10, g1, a0);
        mac_conj(q11, g1, a1);
        gr[j0] = lin(t00, g0, t10, g1);
        gr[j1] = lin(t01, g0, t11, g1);
      }
      float* pt = part_stack + (i * (g.n() / 2) + rho) * 4 * P;
      add_partial(pt, q00);
      add_partial(pt + P, q01);
      add_partial(pt + 2 * P, q10);
      add_partial(pt + 3 * P, q11);
    }
  });
}

// One backward pass (with twiddle gradients) of one work item.  cur, grad: two shared windows.
// gin: the pass's output gradient; gout: where the input gradient goes (store_gout false: dropped).
BFLY_EXEC_CHECK
template <class V, class TW, class TI, class TG, class TO, class Exec>
BFLY_HD void grad_pass_item(Exec& ex, V* cur, V* grad, const Operand<const TI>& in, const Operand<const TG>& gin,
                            const Operand<TO>& gout, bool store_gout, float* part_stack, const TW* tw_stack,
                            const Geometry& g, const Pass& ps, int64_t row0, int64_t o, int64_t stack) {
  load_window(ex, grad, gin, g, ps, row0, o, stack);
  for (int64_t s = ps.count - 1; s >= 0; --s) {
    load_window(ex, cur, in, g, ps, row0, o, stack);
    for (int64_t k = 0; k < s; ++k) stage_window(ex, cur, tw_stack, g, ps, ps.first + k, o, false);
    stage_grad_window(ex, cur, grad, part_stack, tw_stack, g, ps, ps.first + s, o);
  }
  if (store_gout) store_window(ex, grad, gout, g, ps, row0, o, stack);
}

// Work items of a pass: (row group, outer window) pairs of one stack.
BFLY_HD int64_t pass_items(const Geometry& g, const Pass& ps) {
  const int64_t groups = (g.batch + g.rows - 1) / g.rows;
  return groups * (g.n() >> ps.wb);
}
BFLY_HD void item_coords(const Geometry& g, const Pass& ps, int64_t item, int64_t* row0, int64_t* o) {
  const int64_t outer = g.n() >> ps.wb;
  *row0 = (item / outer) * g.rows;
  *o = item % outer;
}

}  // namespace bfly_cuda
}  // namespace structops

namespace structops {
namespace bfly_cuda {

// ---- launch plan (host) -------------------------------------------------------------------------
constexpr int kMaxPasses = 64;
constexpr int64_t kTargetSmem = 48 << 10;  // per block, for occupancy (more rows up to this)

struct DeviceInfo {
  int sm_count = 108;
  int64_t smem_optin = 48 << 10;
};

struct Plan {
  Geometry g;
  Pass passes[kMaxPasses];
  int np = 0;
  int64_t smem = 0;     // bytes per block
  int64_t grid_x = 1;
  int64_t partial_blocks = 0;  // grad: blocks with a partial each (= grid_x)
};

// bufs: windows per row in shared memory (1 forward / dx, 2 twiddle gradient)
inline const char* make_plan(const ButterflyDims& d, int64_t elem, int bufs, int wcap, const DeviceInfo& dev, Plan* plan) {
  int wmax = 0;
  while (wmax < wcap && int64_t(bufs) * (int64_t(2) << wmax) * elem <= dev.smem_optin) ++wmax;
  if (wmax < 1 && d.log_n > 0) return "structops butterfly CUDA: the device's shared memory is too small for one window";
  plan->np = plan_passes(static_cast<int>(d.log_n), d.nblocks, d.increasing_stride, wmax, plan->passes, kMaxPasses);
  if (plan->np > kMaxPasses) return "structops butterfly CUDA: too many passes";
  const int wb = plan->passes[0].wb;
  const int64_t row_bytes = int64_t(bufs) * (int64_t(1) << wb) * elem;
  const int64_t budget = std::min<int64_t>(kTargetSmem, dev.smem_optin);
  int rows = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(16, budget / row_bytes)));
  plan->g.batch = d.batch;
  plan->g.nstacks = d.nstacks;
  plan->g.log_n = static_cast<int>(d.log_n);
  plan->g.increasing = d.increasing_stride;
  plan->g.rows = rows;
  plan->smem = rows * row_bytes;
  if (d.nstacks > 65535) return "structops butterfly CUDA: at most 65535 stacks";
  const int64_t items = pass_items(plan->g, plan->passes[0]);
  plan->grid_x = std::max<int64_t>(1, std::min<int64_t>(items, int64_t(1) << 24));
  return nullptr;
}

// Twiddle-gradient blocks (each with its own partial): at most two per SM and at most
// max_partial_bytes of partials, fewer when there are fewer work items.
inline void set_partial_blocks(const ButterflyDims& d, int64_t elem, const DeviceInfo& dev, int64_t max_partial_bytes,
                               Plan* plan) {
  const int64_t per_block = d.nstacks * d.twiddle_per_stack() * (elem / 4) * int64_t(sizeof(float));
  const int64_t cap = std::max<int64_t>(1, max_partial_bytes / std::max<int64_t>(per_block, 1));
  plan->partial_blocks = std::max<int64_t>(1, std::min<int64_t>({plan->grid_x, int64_t(2) * dev.sm_count, cap}));
}

// ---- launch sequencing (shared by the CUDA launcher and the host emulation) ---------------------
// Runner: template <class TS, class TD> const char* pass(const Pass&, Operand<const TS>, Operand<TD>, bool adjoint);
//         template <class TI, class TG, class TO> const char* grad_pass(const Pass&, Operand<const TI> in,
//             Operand<const TG> gin, Operand<TO> gout, bool store_gout);
// w: a (batch, nstacks, n) work buffer of the compute type (used when np > 1).
template <class V>
inline Operand<const V> as_const(const Operand<V>& o) {
  return Operand<const V>{o.p, o.bs, o.ss, o.len};
}

template <class V, class S, class R>
inline const char* sequence_forward(R& run, const Pass* ps, int np, const Operand<const S>& x, const Operand<S>& y,
                                    const Operand<V>& w) {
  if (np == 1) return run.pass(ps[0], x, y, false);
  for (int i = 0; i < np; ++i) {
    const char* e = i == 0 ? run.pass(ps[i], x, w, false)
                    : i + 1 < np ? run.pass(ps[i], as_const(w), w, false)
                                 : run.pass(ps[i], as_const(w), y, false);
    if (e) return e;
  }
  return nullptr;
}

// dx = B^H dy: adjoint passes in reverse order.
template <class V, class S, class R>
inline const char* sequence_backward_dx(R& run, const Pass* ps, int np, const Operand<const S>& dy, const Operand<S>& dx,
                                        const Operand<V>& w) {
  if (np == 1) return run.pass(ps[0], dy, dx, true);
  for (int i = np - 1; i >= 0; --i) {
    const char* e = i == np - 1 ? run.pass(ps[i], dy, w, true)
                    : i > 0 ? run.pass(ps[i], as_const(w), w, true)
                            : run.pass(ps[i], as_const(w), dx, true);
    if (e) return e;
  }
  return nullptr;
}

// Twiddle gradients (and dx when store_dx): saved(i) (i = 1..np-1) receive the inputs of passes
// 1..np-1, then the gradient passes run in reverse with the gradient in w.
template <class V, class S, class R, class Saved>
inline const char* sequence_backward_grad(R& run, const Pass* ps, int np, const Operand<const S>& x,
                                          const Operand<const S>& dy, const Operand<S>& dx, bool store_dx,
                                          const Operand<V>& w, Saved saved) {
  if (np == 1) return run.grad_pass(ps[0], x, dy, dx, store_dx);
  for (int i = 0; i + 1 < np; ++i) {
    const char* e = i == 0 ? run.pass(ps[0], x, saved(1), false) : run.pass(ps[i], as_const(saved(i)), saved(i + 1), false);
    if (e) return e;
  }
  for (int i = np - 1; i >= 0; --i) {
    const char* e = i == np - 1 ? run.grad_pass(ps[i], as_const(saved(i)), dy, w, true)
                    : i > 0 ? run.grad_pass(ps[i], as_const(saved(i)), as_const(w), w, true)
                            : run.grad_pass(ps[i], x, as_const(w), dx, store_dx);
    if (e) return e;
  }
  return nullptr;
}

}  // namespace bfly_cuda
}  // namespace structops
