// Checks the host side of the CUDA path without a GPU: the Monarch orchestration
// (csrc/cuda/monarch_cuda.cpp: every GEMM's layouts, leading dimensions and batch strides, every
// transpose, token split and workspace offset) and the GEMM engine's kernel selection
// (csrc/cuda/gemm/gemm_dispatch.cpp: alignment checks, engine switch).  The device kernels and
// the CUDA runtime calls are replaced by host implementations of their documented semantics;
// results are compared with a direct evaluation of the Monarch formulas.  Each emulated kernel
// counts its launches, so the test also asserts which kernel family ran.
// Built and run by tests/test_cuda_host_emulation.py.  Exit code 0 = all cases pass.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gemm/gemm.h"
#include "gemm/transpose_plan.h"
#include "structops/butterfly.h"
#include "structops/kfac.h"
#include "structops/monarch.h"

// ---- host stand-ins for the device code and the CUDA runtime --------------------------------
extern "C" {
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "emulated"; }
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              enum cudaMemcpyKind, cudaStream_t) {
  for (size_t r = 0; r < height; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  return cudaSuccess;
}
}

static std::map<std::string, int> g_launches;

namespace structops {
namespace cuda {
namespace gemm {
template <class T, class TC>
static const char* host_gemm(const BatchedGemm& g, const char* kind) {
  g_launches[kind]++;
  const T* A = static_cast<const T*>(g.a.ptr);
  const T* B = static_cast<const T*>(g.b.ptr);
  TC* C = static_cast<TC*>(g.c);
  auto at = [](const MatrixRef& r, const T* p, int64_t b, int64_t i, int64_t j) {
    return double(p[b * r.batch_stride + (r.layout == Layout::kRowMajor ? i * r.ld + j : j * r.ld + i)]);
  };
  for (int b = 0; b < g.batch; ++b)
    for (int i = 0; i < g.m; ++i)
      for (int j = 0; j < g.n; ++j) {
        double acc = 0;
        for (int k = 0; k < g.k; ++k) acc += at(g.a, A, b, i, k) * at(g.b, B, b, k, j);
        C[b * g.batch_stride_c + i * g.ldc + j] = TC(acc);
      }
  return nullptr;
}
static const char* host_any(const BatchedGemm& g, const char* kind) {
  if (g.dtype == DType::kFloat64) return host_gemm<double, double>(g, kind);
  if (g.dtype == DType::kFloat32) return host_gemm<float, float>(g, kind);
  g_launches[kind]++;  // 16-bit: selection only (no host arithmetic)
  return nullptr;
}
const char* tensorop_gemm_bf16(const BatchedGemm& g, Tile16 t, cudaStream_t) {
  return host_any(g, t == Tile16::kLarge ? "tensorop_large" : "tensorop_small");
}
const char* tensorop_gemm_f16(const BatchedGemm& g, Tile16 t, cudaStream_t) {
  return host_any(g, t == Tile16::kLarge ? "tensorop_large" : "tensorop_small");
}
const char* tensorop_gemm_tf32(const BatchedGemm& g, cudaStream_t) { return host_any(g, "tf32"); }
const char* tensorop_gemm_f64(const BatchedGemm& g, cudaStream_t) { return host_any(g, "dmma"); }
const char* simt_strided_gemm_f32(const BatchedGemm& g, cudaStream_t) { return host_any(g, "simt"); }
const char* simt_strided_gemm_f64(const BatchedGemm& g, cudaStream_t) { return host_any(g, "simt"); }
const char* simt_strided_gemm_bf16(const BatchedGemm& g, cudaStream_t) { return host_any(g, "simt"); }
const char* simt_strided_gemm_f16(const BatchedGemm& g, cudaStream_t) { return host_any(g, "simt"); }

// The real kernel's tiling and per-CTA phases (transpose_plan.h), run for every CTA and every
// thread: load phase for all threads, then (the barrier) the store phase.
template <class T>
static void emulated_transpose(const void* src, int64_t sld, void* dst, int64_t dld, int64_t rows, int64_t a, int64_t b) {
  const TransposePlan p = make_transpose_plan(sizeof(T), a, b);
  std::vector<T> sm(p.smem_bytes / sizeof(T) + 1);
  for (int64_t t = 0; t < rows; ++t)
    for (int ci = 0; ci < p.chunks_i; ++ci)
      for (int cj = 0; cj < p.chunks_j; ++cj) {
        for (int tid = 0; tid < kTransposeThreads; ++tid)
          transpose_load(static_cast<const T*>(src), sld, sm.data(), int(a), int(b), int(p.ai), int(p.bj), int(p.bp),
                         p.lw_load, t, ci, cj, tid);
        for (int tid = 0; tid < kTransposeThreads; ++tid)
          transpose_store(sm.data(), static_cast<T*>(dst), dld, int(a), int(b), int(p.ai), int(p.bj), int(p.bp),
                          p.lw_store, t, ci, cj, tid);
      }
}
const char* transpose_rows(DType dtype, const void* src, int64_t sld, void* dst, int64_t dld, int64_t rows, int64_t a,
                           int64_t b, cudaStream_t) {
  g_launches["transpose"]++;
  if (dtype == DType::kFloat64) emulated_transpose<double>(src, sld, dst, dld, rows, a, b);
  else if (dtype == DType::kFloat32) emulated_transpose<float>(src, sld, dst, dld, rows, a, b);
  else emulated_transpose<uint16_t>(src, sld, dst, dld, rows, a, b);
  return nullptr;
}
// transpose_row_chunks: its documented semantics, element by element
const char* transpose_row_chunks(DType dtype, const void* src, int64_t sld, void* dst, int64_t dld, int64_t rows,
                                 int64_t a, int64_t b, int64_t chunk, cudaStream_t) {
  g_launches["transpose_chunks"]++;
  const int64_t es = dtype_size(dtype);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < b; ++j)
        std::memcpy(static_cast<char*>(dst) + (t * dld + (j * a + i) * chunk) * es,
                    static_cast<const char*>(src) + (t * sld + (i * b + j) * chunk) * es, chunk * es);
  return nullptr;
}
const char* reduce_splits(DType dtype, const void* parts, int64_t size, int splits, void* out, cudaStream_t) {
  g_launches["reduce"]++;
  if (dtype == DType::kFloat64) {
    const double* P = static_cast<const double*>(parts);
    double* O = static_cast<double*>(out);
    for (int64_t e = 0; e < size; ++e) {
      double s = 0;
      for (int sp = 0; sp < splits; ++sp) s += P[sp * size + e];
      O[e] = s;
    }
    return nullptr;
  }
  return "reduce: only fp64 emulated";
}
}  // namespace gemm
}  // namespace cuda
}  // namespace structops

// The "cuBLAS" engine of the torch layer, emulated: plain host GEMM.
static const char* host_cublas(const structops::cuda::gemm::BatchedGemm& g, cudaStream_t) {
  return structops::cuda::gemm::host_any(g, "cublas");
}

// ---- direct evaluation of the formulas ------------------------------------------------------
using structops::MonarchDims;

static double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - b[i]));
  return m;
}

static int run_case(int64_t batch, int64_t k, int64_t q, int64_t p, int64_t l, int64_t s, int64_t r, bool save_v,
                    structops::GemmEngine engine, int sm_count, const char* expect_kernel) {
  MonarchDims d;
  d.batch = batch; d.k = k; d.q = q; d.p = p; d.l = l; d.s = s; d.r = r;
  const bool second = l > 0;
  const int64_t n = d.n(), mid = d.mid(), m = d.m(), xs = n + 8;  // padded rows of x
  std::mt19937 rng(int(batch * 7 + k * 3 + l));
  std::normal_distribution<double> nd;
  std::vector<double> x(batch * xs), w1(k * q * p), w2(second ? l * s * r : 0), dy(batch * (m + 8));
  for (auto& v : x) v = nd(rng);
  for (auto& v : w1) v = nd(rng);
  for (auto& v : w2) v = nd(rng);
  for (auto& v : dy) v = nd(rng);
  const int64_t dys = m + 8;

  // reference: u, v, y, dU, dx, dw1, dw2
  std::vector<double> u(batch * mid, 0), vv(batch * mid, 0), y(batch * m, 0), du(batch * mid, 0), dx(batch * n, 0),
      dw1(w1.size(), 0), dw2(w2.size(), 0);
  for (int64_t t = 0; t < batch; ++t)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t a = 0; a < q; ++a)
        for (int64_t c = 0; c < p; ++c) u[t * mid + i * q + a] += w1[(i * q + a) * p + c] * x[t * xs + i * p + c];
  if (second) {
    for (int64_t t = 0; t < batch; ++t)
      for (int64_t lm = 0; lm < l; ++lm)
        for (int64_t rh = 0; rh < r; ++rh) vv[t * mid + lm * r + rh] = u[t * mid + rh * l + lm];
    for (int64_t t = 0; t < batch; ++t)
      for (int64_t lm = 0; lm < l; ++lm)
        for (int64_t sg = 0; sg < s; ++sg)
          for (int64_t rh = 0; rh < r; ++rh) {
            y[t * m + sg * l + lm] += w2[(lm * s + sg) * r + rh] * u[t * mid + rh * l + lm];
            du[t * mid + rh * l + lm] += dy[t * dys + sg * l + lm] * w2[(lm * s + sg) * r + rh];
            dw2[(lm * s + sg) * r + rh] += dy[t * dys + sg * l + lm] * u[t * mid + rh * l + lm];
          }
  } else {
    y = u;
    for (int64_t t = 0; t < batch; ++t)
      for (int64_t j = 0; j < mid; ++j) du[t * mid + j] = dy[t * dys + j];
  }
  for (int64_t t = 0; t < batch; ++t)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t a = 0; a < q; ++a)
        for (int64_t c = 0; c < p; ++c) {
          dx[t * n + i * p + c] += du[t * mid + i * q + a] * w1[(i * q + a) * p + c];
          dw1[(i * q + a) * p + c] += du[t * mid + i * q + a] * x[t * xs + i * p + c];
        }

  structops::CudaOptions opt;
  opt.engine = engine;
  opt.sm_count = sm_count;
  g_launches.clear();
  // orchestrated version
  structops::MonarchForwardParams fp;
  fp.dims = d; fp.dtype = structops::DType::kFloat64; fp.cuda = opt;
  fp.x = x.data(); fp.x_stride = xs; fp.w1 = w1.data(); fp.w2 = second ? w2.data() : nullptr;
  std::vector<double> y2(batch * m, -1), v2(batch * mid, -1);
  fp.y = y2.data();
  fp.v = (second && save_v) ? v2.data() : nullptr;
  std::vector<char> ws(structops::monarch_forward_cuda_workspace(fp) + 256);
  // 256-byte aligned workspace like the caching allocator's
  void* wsp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data()) + 255) / 256 * 256);
  const char* err = structops::monarch_forward_cuda(fp, {wsp, int64_t(ws.size()) - 256}, nullptr);
  if (err) { std::printf("forward error: %s\n", err); return 1; }

  structops::MonarchBackwardParams bp;
  bp.dims = d; bp.dtype = structops::DType::kFloat64; bp.cuda = opt;
  bp.dy = dy.data(); bp.dy_stride = dys; bp.x = x.data(); bp.x_stride = xs; bp.w1 = w1.data();
  bp.w2 = second ? w2.data() : nullptr; bp.v = fp.v;
  std::vector<double> dx2(batch * n, -1), dw12(w1.size(), -1), dw22(w2.size(), -1);
  bp.dx = dx2.data(); bp.dw1 = dw12.data(); bp.dw2 = second ? dw22.data() : nullptr;
  std::vector<char> wsb(structops::monarch_backward_cuda_workspace(bp) + 256);
  void* wsbp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(wsb.data()) + 255) / 256 * 256);
  err = structops::monarch_backward_cuda(bp, {wsbp, int64_t(wsb.size()) - 256}, nullptr);
  if (err) { std::printf("backward error: %s\n", err); return 1; }

  const double e[5] = {max_abs_diff(y, y2), max_abs_diff(dx, dx2), max_abs_diff(dw1, dw12),
                       second ? max_abs_diff(dw2, dw22) : 0.0, (second && save_v) ? max_abs_diff(vv, v2) : 0.0};
  double worst = 0;
  for (double v : e) worst = std::fmax(worst, v);
  bool ok = worst < 1e-9 * (1 + std::sqrt(double(batch)) * (p + q + r + s));
  // which kernels ran
  std::string ran;
  for (auto& kv : g_launches) ran += kv.first + "=" + std::to_string(kv.second) + " ";
  if (expect_kernel && g_launches[expect_kernel] == 0) ok = false;
  if (engine == structops::GemmEngine::kCublas && g_launches["reduce"] != 0) ok = false;  // no splits with cuBLAS
  std::printf("%s batch=%lld w1=(%lld,%lld,%lld) w2=(%lld,%lld,%lld) save_v=%d sms=%d  y %.1e dx %.1e dw1 %.1e dw2 %.1e "
              "v %.1e  [%s]\n",
              ok ? "ok  " : "FAIL", (long long)batch, (long long)k, (long long)q, (long long)p, (long long)l,
              (long long)s, (long long)r, int(save_v), sm_count, e[0], e[1], e[2], e[3], e[4], ran.c_str());
  return ok ? 0 : 1;
}

// transpose_rows' tiling on its own, every element type size, shapes with several i and j tiles,
// a smem-limited ai, short last tiles, padded leading dimensions.
template <class T>
static int check_transpose_case(int64_t rows, int64_t a, int64_t b) {
  const int64_t sld = a * b + 3, dld = a * b + 5;
  std::vector<T> src(rows * sld), dst(rows * dld, T(0)), want(rows * dld, T(0));
  for (size_t e = 0; e < src.size(); ++e) src[e] = T(e % 65521 + 1);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < b; ++j) want[t * dld + j * a + i] = src[t * sld + i * b + j];
  structops::cuda::gemm::emulated_transpose<T>(src.data(), sld, dst.data(), dld, rows, a, b);
  const structops::cuda::gemm::TransposePlan p = structops::cuda::gemm::make_transpose_plan(sizeof(T), a, b);
  const bool ok = dst == want && p.smem_bytes <= structops::cuda::gemm::kTransposeSmemBytes;
  std::printf("%s transpose %zu-byte rows=%lld a=%lld b=%lld  tiles %lldx%lld (ai=%lld bj=%lld bp=%lld smem=%lld)\n",
              ok ? "ok  " : "FAIL", sizeof(T), (long long)rows, (long long)a, (long long)b, (long long)p.chunks_i,
              (long long)p.chunks_j, (long long)p.ai, (long long)p.bj, (long long)p.bp, (long long)p.smem_bytes);
  return ok ? 0 : 1;
}

static int check_transposes() {
  int f = 0;
  const int64_t shapes[][3] = {{3, 4, 1024}, {3, 1024, 4}, {2, 1, 1}, {2, 37, 53}, {1, 5, 5000}, {1, 3000, 7},
                               {2, 64, 64}, {1, 300, 300}};
  for (const auto& s : shapes) {
    f += check_transpose_case<double>(s[0], s[1], s[2]);
    f += check_transpose_case<float>(s[0], s[1], s[2]);
    f += check_transpose_case<uint16_t>(s[0], s[1], s[2]);
  }
  return f;
}

// Kernel selection: alignment and dtype rules (no arithmetic).
static int check_selection() {
  using namespace structops::cuda::gemm;
  using structops::DType;
  alignas(256) static char buf[1 << 16];
  structops::CudaOptions opt;
  int fails = 0;
  auto expect = [&](const BatchedGemm& g, const structops::CudaOptions& o, KernelKind want, const char* what) {
    const KernelKind got = select_kernel(g, o);
    const bool ok = got == want;
    std::printf("%s select %-40s -> %s\n", ok ? "ok  " : "FAIL", what, kernel_kind_name(got));
    fails += !ok;
  };
  BatchedGemm g;
  g.m = 256; g.n = 256; g.k = 256; g.batch = 4; g.dtype = DType::kBFloat16;
  g.a = {buf, 256, 256 * 256, Layout::kRowMajor};
  g.b = {buf, 256, 256 * 256, Layout::kColumnMajor};
  g.c = buf; g.ldc = 256; g.batch_stride_c = 256 * 256;
  expect(g, opt, KernelKind::kTensorOpLarge, "bf16 aligned 256^3");
  BatchedGemm h = g; h.n = 64; h.ldc = 64;
  expect(h, opt, KernelKind::kTensorOpSmall, "bf16 aligned n=64");
  h = g; h.a.ptr = buf + 2;
  expect(h, opt, KernelKind::kSimtStrided, "bf16 A pointer off by one element");
  h = g; h.a.ld = 260;
  expect(h, opt, KernelKind::kSimtStrided, "bf16 lda=260 (not a multiple of 8)");
  h = g; h.b.batch_stride = 256 * 256 + 4;
  expect(h, opt, KernelKind::kSimtStrided, "bf16 B batch stride not a multiple of 8");
  h = g; h.k = 100;
  expect(h, opt, KernelKind::kSimtStrided, "bf16 K=100 (row-major A extent)");
  h = g; h.c_acc = true;
  expect(h, opt, KernelKind::kSimtStrided, "bf16 row/col with fp32 C (not instantiated)");
  h = g; h.a.layout = Layout::kColumnMajor; h.b.layout = Layout::kRowMajor; h.c_acc = true;
  expect(h, opt, KernelKind::kTensorOpLarge, "bf16 col/row fp32 C (weight gradient)");
  h = g; h.dtype = DType::kFloat32;
  expect(h, opt, KernelKind::kSimtStrided, "fp32 without TF32 permission");
  structops::CudaOptions tf = opt; tf.allow_tf32 = true;
  expect(h, tf, KernelKind::kTf32, "fp32 with TF32 permission");
  h.a.ptr = buf + 4;
  expect(h, tf, KernelKind::kSimtStrided, "fp32 TF32, A pointer off by one element");
  h = g; h.dtype = DType::kFloat64; h.a.ptr = buf + 8; h.k = 3; h.a.ld = 3;
  expect(h, opt, KernelKind::kDmma, "fp64 any alignment");
  structops::CudaOptions cb = opt; cb.engine = structops::GemmEngine::kCublas;
  expect(g, cb, KernelKind::kCublas, "cuBLAS engine");
  // token splits: two waves, >= 1024 tokens per split, <= 16
  const int s1 = token_splits(65536, 8, 132), s2 = token_splits(4096, 8, 132), s3 = token_splits(65536, 1000, 132);
  const bool ok = s1 == 16 && s2 == 4 && s3 == 1;
  std::printf("%s token_splits(65536, 8 tiles)=%d (16)  (4096, 8)=%d (4)  (65536, 1000)=%d (1)\n", ok ? "ok  " : "FAIL",
              s1, s2, s3);
  fails += !ok;
  return fails;
}

// ---- block butterfly (csrc/cuda/block_butterfly_cuda.cpp) against its definition ------------
static int run_block_butterfly_case(int64_t batch, int64_t nstacks, int64_t nblocks, int64_t log_n, int64_t bs,
                                    int64_t in_size, int64_t out_size, bool inc, structops::GemmEngine engine, int sms,
                                    const char* must_run) {
  using namespace structops;
  const int64_t n = int64_t(1) << log_n, N = bs * n, ns = nblocks * log_n, per_stage = (n / 2) * 4 * bs * bs;
  std::mt19937 gen(static_cast<unsigned>(batch + 7 * log_n + bs));
  std::normal_distribution<double> nd(0.0, 0.5);
  std::vector<double> tw(nstacks * ns * per_stage), x(batch * nstacks * in_size), dy(batch * nstacks * out_size);
  for (auto* v : {&tw, &x, &dy})
    for (auto& e : *v) e = nd(gen);
  auto T = [&](int64_t st, int64_t i, int64_t rho, int64_t a, int64_t b, int64_t k, int64_t l) -> double& {
    return tw[((((st * ns + i) * (n / 2) + rho) * 2 + a) * 2 + b) * bs * bs + k * bs + l];
  };
  auto ls_of = [&](int64_t i) {
    const int64_t blk = i / log_n, t = i % log_n;
    return (inc != (blk % 2 == 1)) ? t : log_n - 1 - t;
  };
  // reference: forward with every stage input kept, then the backward by hand
  std::vector<double> y_ref(dy.size()), dx_ref(x.size(), 0.0), dt_ref(tw.size(), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t st = 0; st < nstacks; ++st) {
      std::vector<std::vector<double>> z(ns + 1, std::vector<double>(N, 0.0));
      for (int64_t e = 0; e < std::min(in_size, N); ++e) z[0][e] = x[(b * nstacks + st) * in_size + e];
      for (int64_t i = 0; i < ns; ++i) {
        const int64_t s = int64_t(1) << ls_of(i);
        for (int64_t d = 0; d < n / (2 * s); ++d)
          for (int64_t tau = 0; tau < s; ++tau)
            for (int64_t a = 0; a < 2; ++a)
              for (int64_t k = 0; k < bs; ++k) {
                double acc = 0;
                for (int64_t c = 0; c < 2; ++c)
                  for (int64_t l = 0; l < bs; ++l) acc += T(st, i, d * s + tau, a, c, k, l) * z[i][(d * 2 * s + c * s + tau) * bs + l];
                z[i + 1][(d * 2 * s + a * s + tau) * bs + k] = acc;
              }
      }
      for (int64_t e = 0; e < out_size; ++e) y_ref[(b * nstacks + st) * out_size + e] = z[ns][e];
      std::vector<double> g(N, 0.0);
      for (int64_t e = 0; e < out_size; ++e) g[e] = dy[(b * nstacks + st) * out_size + e];
      for (int64_t i = ns - 1; i >= 0; --i) {
        const int64_t s = int64_t(1) << ls_of(i);
        std::vector<double> gn(N, 0.0);
        for (int64_t d = 0; d < n / (2 * s); ++d)
          for (int64_t tau = 0; tau < s; ++tau)
            for (int64_t a = 0; a < 2; ++a)
              for (int64_t k = 0; k < bs; ++k)
                for (int64_t c = 0; c < 2; ++c)
                  for (int64_t l = 0; l < bs; ++l) {
                    const int64_t eo = (d * 2 * s + a * s + tau) * bs + k, ei = (d * 2 * s + c * s + tau) * bs + l;
                    dt_ref[&T(st, i, d * s + tau, a, c, k, l) - tw.data()] += g[eo] * z[i][ei];
                    gn[ei] += T(st, i, d * s + tau, a, c, k, l) * g[eo];
                  }
        g = gn;
      }
      for (int64_t e = 0; e < std::min(in_size, N); ++e) dx_ref[(b * nstacks + st) * in_size + e] = g[e];
    }
  ButterflyDims dims;
  dims.batch = batch; dims.nstacks = nstacks; dims.nblocks = nblocks; dims.log_n = log_n;
  dims.in_size = in_size; dims.out_size = out_size; dims.increasing_stride = inc;
  BlockButterflyForwardParams fp;
  fp.dims = dims; fp.block_size = bs; fp.dtype = DType::kFloat64; fp.twiddle = tw.data(); fp.x = x.data();
  fp.x_batch_stride = nstacks * in_size; fp.x_stack_stride = in_size; fp.cuda.engine = engine; fp.cuda.sm_count = sms;
  std::vector<double> y(dy.size(), -1.0), dx(x.size(), -1.0), dt(tw.size(), -1.0);
  fp.y = y.data();
  g_launches.clear();
  std::vector<char> ws(block_butterfly_forward_cuda_workspace(fp) + 64);
  const char* e1 = block_butterfly_forward_cuda(fp, {ws.data(), int64_t(ws.size())}, nullptr);
  BlockButterflyBackwardParams bp;
  bp.dims = dims; bp.block_size = bs; bp.dtype = DType::kFloat64; bp.twiddle = tw.data(); bp.x = x.data();
  bp.x_batch_stride = nstacks * in_size; bp.x_stack_stride = in_size; bp.dy = dy.data();
  bp.dy_batch_stride = nstacks * out_size; bp.dy_stack_stride = out_size; bp.dx = dx.data(); bp.dtwiddle = dt.data();
  bp.cuda = fp.cuda;
  std::vector<char> wb(block_butterfly_backward_cuda_workspace(bp) + 64);
  const char* e2 = block_butterfly_backward_cuda(bp, {wb.data(), int64_t(wb.size())}, nullptr);
  // dx alone (no recompute)
  std::vector<double> dx2(x.size(), -1.0);
  bp.dtwiddle = nullptr;
  bp.dx = dx2.data();
  std::vector<char> wb2(block_butterfly_backward_cuda_workspace(bp) + 64);
  const char* e3 = block_butterfly_backward_cuda(bp, {wb2.data(), int64_t(wb2.size())}, nullptr);
  const double ey = max_abs_diff(y, y_ref), edx = max_abs_diff(dx, dx_ref), edt = max_abs_diff(dt, dt_ref),
               edx2 = max_abs_diff(dx2, dx_ref);
  const bool ran = must_run == nullptr || g_launches[must_run] > 0;
  const bool ok = !e1 && !e2 && !e3 && ey < 1e-9 && edx < 1e-9 && edt < 1e-8 && edx2 < 1e-9 && ran;
  std::printf("%s block_butterfly batch=%lld nstacks=%lld nblocks=%lld log_n=%lld bs=%lld in=%lld out=%lld inc=%d %s: "
              "err y %.1e dx %.1e dtw %.1e dx(only) %.1e%s%s\n",
              ok ? "ok  " : "FAIL", (long long)batch, (long long)nstacks, (long long)nblocks, (long long)log_n,
              (long long)bs, (long long)in_size, (long long)out_size, inc ? 1 : 0,
              engine == GemmEngine::kCublas ? "cublas" : "cutlass", ey, edx, edt, edx2, e1 ? e1 : "", e2 ? e2 : "");
  return ok ? 0 : 1;
}

// K-FAC factor update on the engine (csrc/cuda/kfac_cuda.cpp): every lower block pair's GEMM
// description (column-major view of x for the transposed operand, row offsets of token splits,
// ld = block outputs, edge blocks) against x^T x computed directly.  fp64 runs the arithmetic;
// bf16 checks the kernel selection only (the host stand-ins do no 16-bit arithmetic).
static int run_kfac_case(int64_t T, int64_t d, int64_t block, structops::DType dt, structops::GemmEngine engine,
                         int sms, const char* must_run) {
  using namespace structops;
  g_launches.clear();
  // fp64: a row stride wider than d; bf16: aligned rows, so the tensor-op kernel is eligible
  const int64_t ld = dt == structops::DType::kFloat64 ? d + 3 : d;
  std::mt19937 rng(7);
  std::normal_distribution<double> nd;
  std::vector<double> x(T * ld);
  for (auto& v : x) v = nd(rng);
  std::vector<uint16_t> x16(T * ld, 0);
  KfacLowerBlocksParams p;
  p.dtype = dt;
  p.x = dt == DType::kFloat64 ? static_cast<const void*>(x.data()) : static_cast<const void*>(x16.data());
  p.x_stride = ld;
  p.tokens = T;
  p.d = d;
  p.block = block;
  p.cuda.engine = engine;
  p.cuda.sm_count = sms;
  const int64_t nl = kfac_num_lower_blocks(d, block);
  std::vector<double> out(nl * block * block, -7.0);
  p.out = out.data();
  std::vector<char> ws(kfac_lower_blocks_cuda_workspace(p) + 256);
  const char* err = kfac_lower_blocks_cuda(p, {ws.data(), int64_t(ws.size())}, nullptr);
  double e = 0;
  if (dt == DType::kFloat64 && !err) {
    int64_t b = 0;
    for (int64_t i0 = 0; i0 < d; i0 += block)
      for (int64_t j0 = 0; j0 <= i0; j0 += block, ++b)
        for (int64_t i = i0; i < std::min(d, i0 + block); ++i)
          for (int64_t j = j0; j < std::min(d, j0 + block); ++j) {
            double ref = 0;
            for (int64_t t = 0; t < T; ++t) ref += x[t * ld + i] * x[t * ld + j];
            e = std::max(e, std::fabs(out[b * block * block + (i - i0) * block + (j - j0)] - ref));
          }
  }
  const bool ran = must_run == nullptr || g_launches[must_run] > 0;
  const bool ok = !err && e < 1e-9 && ran;
  std::printf("%s kfac lower blocks T=%lld d=%lld block=%lld %s %s: err %.1e%s%s\n", ok ? "ok  " : "FAIL", (long long)T,
              (long long)d, (long long)block, dt == DType::kFloat64 ? "fp64" : "bf16",
              engine == GemmEngine::kCublas ? "cublas" : "cutlass", e, err ? " " : "", err ? err : "");
  return ok ? 0 : 1;
}

int main() {
  int fails = check_selection();
  fails += check_transposes();
  using structops::GemmEngine;
  // (batch, k, q, p, l, s, r, engine, sms, kernel that must have run)
  struct Case { int64_t c[7]; GemmEngine e; int sms; const char* kernel; };
  const Case cases[] = {
      {{7, 4, 4, 4, 4, 4, 4}, GemmEngine::kCutlass, 108, "dmma"},
      {{33, 3, 5, 2, 5, 7, 3}, GemmEngine::kCutlass, 108, "dmma"},
      {{50, 2, 10, 3, 4, 6, 5}, GemmEngine::kCutlass, 108, nullptr},
      {{5000, 2, 3, 2, 2, 2, 3}, GemmEngine::kCutlass, 132, "reduce"},  // token splits
      {{5000, 2, 8, 8, 2, 8, 8}, GemmEngine::kCutlass, 132, "reduce"},
      {{16, 1, 6, 5, 1, 4, 6}, GemmEngine::kCutlass, 108, nullptr},
      {{9, 4, 6, 3, 0, 0, 0}, GemmEngine::kCutlass, 108, nullptr},    // block-diagonal op
      {{5000, 2, 2, 3, 0, 0, 0}, GemmEngine::kCutlass, 132, "reduce"},
      {{33, 3, 5, 2, 5, 7, 3}, GemmEngine::kCublas, 108, "cublas"},
      {{5000, 2, 3, 2, 2, 2, 3}, GemmEngine::kCublas, 132, "cublas"},
      {{9, 4, 6, 3, 0, 0, 0}, GemmEngine::kCublas, 108, "cublas"},
      // P_mid folded into F1 (q/l = 8): k GEMMs batched over l write v directly
      {{37, 2, 16, 8, 2, 24, 16}, GemmEngine::kCutlass, 108, "dmma"},
      {{3000, 3, 32, 16, 4, 8, 24}, GemmEngine::kCutlass, 132, "reduce"},
      {{37, 2, 16, 8, 2, 24, 16}, GemmEngine::kCublas, 108, "cublas"},
  };
  // cuBLAS without a registered engine must report an error, not crash.
  {
    structops::MonarchForwardParams fp;
    fp.dims.batch = 2; fp.dims.k = 1; fp.dims.q = 1; fp.dims.p = 1; fp.dtype = structops::DType::kFloat64;
    double x[2] = {1, 2}, w[1] = {3}, y[2];
    fp.x = x; fp.x_stride = 1; fp.w1 = w; fp.y = y; fp.cuda.engine = GemmEngine::kCublas;
    const char* err = structops::monarch_forward_cuda(fp, {nullptr, 0}, nullptr);
    std::printf("%s cuBLAS engine unregistered -> %s\n", err ? "ok  " : "FAIL", err ? err : "(no error)");
    fails += err == nullptr;
  }
  structops::cuda::gemm::set_cublas_gemm(&host_cublas);
  for (const auto& c : cases)
    for (int save = 0; save < 2; ++save)
      fails += run_case(c.c[0], c.c[1], c.c[2], c.c[3], c.c[4], c.c[5], c.c[6], save, c.e, c.sms, c.kernel);
  // block butterfly: (batch, nstacks, nblocks, log_n, bs, in, out, increasing, engine, SMs, kernel)
  fails += run_block_butterfly_case(5, 1, 1, 3, 4, 32, 32, true, GemmEngine::kCutlass, 108, "transpose_chunks");
  fails += run_block_butterfly_case(7, 2, 2, 2, 3, 10, 9, false, GemmEngine::kCutlass, 108, "dmma");
  fails += run_block_butterfly_case(3000, 1, 1, 2, 2, 8, 8, true, GemmEngine::kCutlass, 132, "reduce");  // token splits
  fails += run_block_butterfly_case(6, 3, 1, 3, 2, 20, 12, true, GemmEngine::kCublas, 108, "cublas");
  fails += run_block_butterfly_case(4, 1, 2, 0, 3, 2, 3, true, GemmEngine::kCutlass, 108, nullptr);  // n = 1
  // K-FAC factor update: (tokens, d, block, dtype, engine, SMs, kernel)
  fails += run_kfac_case(40, 150, 64, structops::DType::kFloat64, GemmEngine::kCutlass, 108, "dmma");  // 3 blocks, edges
  fails += run_kfac_case(6000, 70, 64, structops::DType::kFloat64, GemmEngine::kCutlass, 132, "reduce");  // token splits
  fails += run_kfac_case(37, 129, 128, structops::DType::kFloat64, GemmEngine::kCublas, 108, "cublas");
  fails += run_kfac_case(0, 20, 64, structops::DType::kFloat64, GemmEngine::kCutlass, 108, nullptr);  // no tokens: zeros
  fails += run_kfac_case(64, 256, 128, structops::DType::kBFloat16, GemmEngine::kCutlass, 108, "tensorop_large");
  std::printf("%d failed\n", fails);
  return fails ? 1 : 0;
}
