// Runs the butterfly CUDA path's block code (csrc/cuda/butterfly_pass.cuh: windows, stages,
// adjoint, recompute-and-accumulate backward, pass plans and launch sequencing) on the CPU: every
// "thread block" of every launch is executed with a host executor that runs each phase for every
// thread index in turn (the barrier semantics of __syncthreads), blocks in a grid-stride loop as
// on the device.  Fake device limits force multi-pass plans at small n (shared memory of a few
// hundred bytes), so the pass windows with lo > 0, the saved pass inputs and the in-place
// gradient buffer are all exercised.  Results are compared with a direct stage-by-stage
// evaluation of the semantics in structops/butterfly.h.
// Built and run by tests/test_cuda_host_emulation.py.  Exit code 0 = all cases pass.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "butterfly_pass.cuh"

using namespace structops;
using namespace structops::bfly_cuda;

namespace {

struct HostExec {
  int nthreads;
  template <class F>
  void phase(F&& f) {
    for (int t = 0; t < nthreads; ++t) f(t, nthreads);
  }
};

// Host stand-in of the CUDA runner: the same kernels' loops (grid-stride over work items, one
// partial per block), blocks run one after another.
template <class V>
struct HostRunner {
  const Plan& pl;
  const V* tw;
  int64_t tw_stride;
  float* partials;
  int64_t per_stack;
  int nthreads;
  int64_t launches = 0;

  template <class TS, class TD>
  const char* pass(const Pass& ps, Operand<const TS> src, Operand<TD> dst, bool adjoint) {
    ++launches;
    HostExec ex{nthreads};
    std::vector<V> sm(size_t(pl.g.rows) << ps.wb);
    const int64_t items = pass_items(pl.g, ps);
    for (int64_t stack = 0; stack < pl.g.nstacks; ++stack)
      for (int64_t b = 0; b < pl.grid_x; ++b)
        for (int64_t item = b; item < items; item += pl.grid_x) {
          int64_t row0, o;
          item_coords(pl.g, ps, item, &row0, &o);
          pass_item<V>(ex, sm.data(), src, dst, tw + stack * tw_stride, pl.g, ps, row0, o, stack, adjoint);
        }
    return nullptr;
  }
  template <class TI, class TG, class TO>
  const char* grad_pass(const Pass& ps, Operand<const TI> in, Operand<const TG> gin, Operand<TO> gout, bool store) {
    ++launches;
    HostExec ex{nthreads};
    std::vector<V> cur(size_t(pl.g.rows) << ps.wb), grad(cur.size());
    const int64_t items = pass_items(pl.g, ps);
    for (int64_t stack = 0; stack < pl.g.nstacks; ++stack)
      for (int64_t b = 0; b < pl.partial_blocks; ++b) {
        float* part = partials + (stack * pl.partial_blocks + b) * per_stack;
        for (int64_t item = b; item < items; item += pl.partial_blocks) {
          int64_t row0, o;
          item_coords(pl.g, ps, item, &row0, &o);
          grad_pass_item<V>(ex, cur.data(), grad.data(), in, gin, gout, store, part, tw + stack * tw_stride, pl.g, ps,
                            row0, o, stack);
        }
      }
    return nullptr;
  }
};

// ---- direct evaluation of the semantics (independent of the pass code) -------------------------
template <class V>
struct Ref {
  const ButterflyDims& d;
  const std::vector<V>& tw;
  int ls_of(int64_t i) const {
    const int64_t block = i / d.log_n;
    const int t = static_cast<int>(i % d.log_n);
    const bool inc = d.increasing_stride != (block % 2 == 1);
    return inc ? t : static_cast<int>(d.log_n) - 1 - t;
  }
  // apply stage i to z (length n) of stack s
  void stage(std::vector<V>& z, int64_t s, int64_t i) const {
    const int64_t n = d.n(), st = int64_t(1) << ls_of(i);
    std::vector<V> out(z.size());
    for (int64_t dd = 0; dd < n / (2 * st); ++dd)
      for (int64_t tau = 0; tau < st; ++tau) {
        const int64_t rho = dd * st + tau, e0 = dd * 2 * st + tau, e1 = e0 + st;
        const V* t = &tw[((s * d.nblocks * d.log_n + i) * (n / 2) + rho) * 4];
        out[e0] = lin(t[0], z[e0], t[1], z[e1]);
        out[e1] = lin(t[2], z[e0], t[3], z[e1]);
      }
    z = out;
  }
};

float mag(float v) { return std::fabs(v); }
float mag(C2 v) { return std::sqrt(v.x * v.x + v.y * v.y); }
float diff(float a, float b) { return std::fabs(a - b); }
float diff(C2 a, C2 b) { return std::hypot(a.x - b.x, a.y - b.y); }
void randn(float& v, std::mt19937& g) { v = std::normal_distribution<float>(0.f, 0.7f)(g); }
void randn(C2& v, std::mt19937& g) {
  std::normal_distribution<float> nd(0.f, 0.5f);
  v = C2{nd(g), nd(g)};
}

int failures = 0;

template <class V>
float max_rel(const std::vector<V>& a, const std::vector<V>& b) {
  float m = 0, s = 1e-20f;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, diff(a[i], b[i]));
    s = std::max(s, mag(b[i]));
  }
  return a.size() == b.size() ? m / s : 1e30f;
}

template <class V>
void run_case(int64_t batch, int64_t nstacks, int64_t nblocks, int64_t log_n, int64_t in_size, int64_t out_size, bool inc,
              int64_t smem_optin, int nthreads, int sm_count) {
  ButterflyDims d;
  d.batch = batch;
  d.nstacks = nstacks;
  d.nblocks = nblocks;
  d.log_n = log_n;
  d.in_size = in_size;
  d.out_size = out_size;
  d.increasing_stride = inc;
  d.complex = sizeof(V) == 8;
  const int64_t n = d.n(), P = sizeof(V) / 4;
  std::mt19937 gen(static_cast<unsigned>(batch * 131 + log_n * 7 + nblocks));
  std::vector<V> tw(nstacks * d.twiddle_per_stack()), x(batch * nstacks * in_size), dy(batch * nstacks * out_size);
  for (auto& v : tw) randn(v, gen);
  for (auto& v : x) randn(v, gen);
  for (auto& v : dy) randn(v, gen);
  const Ref<V> ref{d, tw};
  const int64_t ns = nblocks * log_n;

  // reference forward, dx, dtwiddle
  std::vector<V> y_ref(dy.size()), dx_ref(x.size()), dt_ref(tw.size(), zero_of(V{}));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < nstacks; ++s) {
      std::vector<std::vector<V>> zs(ns + 1, std::vector<V>(n, zero_of(V{})));
      for (int64_t e = 0; e < std::min(in_size, n); ++e) zs[0][e] = x[(b * nstacks + s) * in_size + e];
      for (int64_t i = 0; i < ns; ++i) {
        zs[i + 1] = zs[i];
        ref.stage(zs[i + 1], s, i);
      }
      for (int64_t e = 0; e < out_size; ++e) y_ref[(b * nstacks + s) * out_size + e] = zs[ns][e];
      std::vector<V> g(n, zero_of(V{}));
      for (int64_t e = 0; e < out_size; ++e) g[e] = dy[(b * nstacks + s) * out_size + e];
      for (int64_t i = ns - 1; i >= 0; --i) {
        const int64_t st = int64_t(1) << ref.ls_of(i);
        std::vector<V> gn(n);
        for (int64_t dd = 0; dd < n / (2 * st); ++dd)
          for (int64_t tau = 0; tau < st; ++tau) {
            const int64_t rho = dd * st + tau, e0 = dd * 2 * st + tau, e1 = e0 + st;
            V* dt = &dt_ref[((s * nblocks * log_n + i) * (n / 2) + rho) * 4];
            const V* t = &tw[((s * nblocks * log_n + i) * (n / 2) + rho) * 4];
            mac_conj(dt[0], g[e0], zs[i][e0]);
            mac_conj(dt[1], g[e0], zs[i][e1]);
            mac_conj(dt[2], g[e1], zs[i][e0]);
            mac_conj(dt[3], g[e1], zs[i][e1]);
            gn[e0] = lin(conj_of(t[0]), g[e0], conj_of(t[2]), g[e1]);
            gn[e1] = lin(conj_of(t[1]), g[e0], conj_of(t[3]), g[e1]);
          }
        g = gn;
      }
      for (int64_t e = 0; e < in_size; ++e) dx_ref[(b * nstacks + s) * in_size + e] = e < n ? g[e] : zero_of(V{});
    }

  DeviceInfo dev;
  dev.smem_optin = smem_optin;
  dev.sm_count = sm_count;
  const int64_t elem = sizeof(V);
  const Operand<const V> xo{x.data(), nstacks * in_size, in_size, in_size};
  const Operand<const V> dyo{dy.data(), nstacks * out_size, out_size, out_size};
  std::vector<V> work(batch * nstacks * n), y(dy.size()), dx(x.size(), zero_of(V{}));
  const Operand<V> wo{work.data(), nstacks * n, n, n};

  // forward
  Plan pf;
  if (const char* e = make_plan(d, elem, 1, 13, dev, &pf)) {
    std::printf("FAIL plan: %s\n", e);
    ++failures;
    return;
  }
  HostRunner<V> rf{pf, tw.data(), d.twiddle_per_stack(), nullptr, 0, nthreads};
  sequence_forward<V>(rf, pf.passes, pf.np, xo, Operand<V>{y.data(), nstacks * out_size, out_size, out_size}, wo);
  const float ef = max_rel(y, y_ref);

  // dx only (adjoint passes)
  const Operand<V> dxo{dx.data(), nstacks * in_size, in_size, std::min(in_size, n)};
  sequence_backward_dx<V>(rf, pf.passes, pf.np, dyo, dxo, wo);
  const float edx = max_rel(dx, dx_ref);

  // dtwiddle + dx (recompute backward), then dtwiddle without dx
  Plan pg;
  make_plan(d, elem, 2, 12, dev, &pg);
  set_partial_blocks(d, elem, dev, int64_t(64) << 20, &pg);
  const int64_t per_stack = d.twiddle_per_stack() * P;
  float etw = 0, edx2 = 0;
  for (int with_dx = 1; with_dx >= 0; --with_dx) {
    std::vector<float> partials(nstacks * pg.partial_blocks * per_stack, 0.f);
    std::vector<V> saved_bufs(std::max(1, pg.np - 1) * batch * nstacks * n), gbuf(batch * nstacks * n), dx2(x.size(), zero_of(V{}));
    HostRunner<V> rg{pg, tw.data(), d.twiddle_per_stack(), partials.data(), per_stack, nthreads};
    auto saved = [&](int i) { return Operand<V>{saved_bufs.data() + (i - 1) * batch * nstacks * n, nstacks * n, n, n}; };
    sequence_backward_grad<V>(rg, pg.passes, pg.np, xo, dyo, Operand<V>{dx2.data(), nstacks * in_size, in_size, std::min(in_size, n)},
                              with_dx == 1, Operand<V>{gbuf.data(), nstacks * n, n, n}, saved);
    // the reduce kernel: sum partials over blocks in order
    std::vector<V> dt(tw.size());
    for (int64_t s = 0; s < nstacks; ++s)
      for (int64_t k = 0; k < per_stack; ++k) {
        float acc = 0;
        for (int64_t b = 0; b < pg.partial_blocks; ++b) acc += partials[(s * pg.partial_blocks + b) * per_stack + k];
        reinterpret_cast<float*>(dt.data())[s * per_stack + k] = acc;
      }
    etw = std::max(etw, ns ? max_rel(dt, dt_ref) : 0.f);
    if (with_dx) edx2 = max_rel(dx2, dx_ref);
  }
  const bool ok = ef < 1e-5f && edx < 1e-5f && etw < 1e-4f && edx2 < 1e-5f;
  if (!ok) ++failures;
  std::printf("%s butterfly %s batch=%lld nstacks=%lld nblocks=%lld log_n=%lld in=%lld out=%lld inc=%d smem=%lld: "
              "passes fwd %d grad %d, rows %d/%d, blocks %lld/%lld; err fwd %.1e dx %.1e dtw %.1e dx(grad) %.1e\n",
              ok ? "ok  " : "FAIL", sizeof(V) == 8 ? "c64" : "f32", (long long)batch, (long long)nstacks,
              (long long)nblocks, (long long)log_n, (long long)in_size, (long long)out_size, inc ? 1 : 0,
              (long long)smem_optin, pf.np, pg.np, pf.g.rows, pg.g.rows, (long long)pf.grid_x,
              (long long)pg.partial_blocks, ef, edx, etw, edx2);
}

}  // namespace

int main() {
  // single pass (real device limit), with padding / trimming / truncation / stacks / blocks
  run_case<float>(7, 1, 1, 5, 32, 32, true, 48 << 10, 64, 2);
  run_case<float>(33, 2, 3, 6, 40, 50, false, 48 << 10, 32, 3);
  run_case<float>(5, 3, 2, 4, 20, 16, true, 48 << 10, 256, 1);
  run_case<C2>(9, 2, 2, 5, 30, 20, true, 48 << 10, 64, 2);
  run_case<float>(4, 1, 1, 0, 1, 1, true, 48 << 10, 32, 2);  // n = 1: no stages
  // multi-pass: a few hundred bytes of "shared memory" force windows of 2-4 bits
  run_case<float>(6, 1, 1, 7, 128, 128, true, 64, 16, 2);
  run_case<float>(6, 2, 2, 7, 100, 90, false, 64, 16, 3);
  run_case<float>(3, 1, 3, 8, 256, 256, true, 32, 8, 2);
  run_case<C2>(4, 2, 2, 6, 64, 40, false, 64, 16, 2);
  run_case<C2>(5, 1, 1, 7, 200, 128, true, 128, 32, 4);
  return failures == 0 ? 0 : 1;
}
