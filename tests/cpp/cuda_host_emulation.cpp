// Checks the host-side orchestration of the CUDA Monarch kernels (csrc/cuda/monarch_cuda.cpp:
// every stride, batch, token split and workspace offset) without a GPU: the device primitives
// strided_bmm / reduce_splits and the two CUDA runtime calls it makes are replaced by host
// implementations with the documented semantics, and the results are compared with a direct
// evaluation of the Monarch formulas.  Built and run by tests/test_cuda_host_emulation.py.
// Exit code 0 = all cases pass.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "strided_bmm.h"
#include "structops/monarch.h"

// ---- host stand-ins for the device code and the CUDA runtime --------------------------------
extern "C" {
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "emulated"; }
}

namespace structops {
namespace cuda {
template <class T, class TC>
static const char* host_bmm(const StridedBmm& p) {
  const T* A = static_cast<const T*>(p.a);
  const T* B = static_cast<const T*>(p.b);
  TC* C = static_cast<TC*>(p.c);
  for (int b = 0; b < p.batch; ++b)
    for (int i = 0; i < p.m; ++i)
      for (int j = 0; j < p.n; ++j) {
        double acc = 0;
        for (int k = 0; k < p.k; ++k)
          acc += double(A[b * p.sa.batch + i * p.sa.row + k * p.sa.col]) * double(B[b * p.sb.batch + k * p.sb.row + j * p.sb.col]);
        TC& c = C[b * p.sc.batch + i * p.sc.row + j * p.sc.col];
        c = TC(acc + (p.beta != 0 ? p.beta * double(c) : 0.0));
      }
  return nullptr;
}
const char* strided_bmm_f32(const StridedBmm& p, cudaStream_t) { return host_bmm<float, float>(p); }
const char* strided_bmm_f64(const StridedBmm& p, cudaStream_t) { return host_bmm<double, double>(p); }
const char* strided_bmm_bf16(const StridedBmm&, cudaStream_t) { return "bf16 not emulated"; }
const char* strided_bmm_f16(const StridedBmm&, cudaStream_t) { return "f16 not emulated"; }
const char* reduce_splits(DType dtype, const void* parts, int64_t size, int splits, void* out, cudaStream_t) {
  if (dtype != DType::kFloat64) return "only float64 emulated";
  const double* P = static_cast<const double*>(parts);
  double* O = static_cast<double*>(out);
  for (int64_t e = 0; e < size; ++e) {
    double s = 0;
    for (int sp = 0; sp < splits; ++sp) s += P[sp * size + e];
    O[e] = s;
  }
  return nullptr;
}
}  // namespace cuda
}  // namespace structops

// ---- direct evaluation of the formulas ------------------------------------------------------
using structops::MonarchDims;

static double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - b[i]));
  return m;
}

static int run_case(int64_t batch, int64_t k, int64_t q, int64_t p, int64_t l, int64_t s, int64_t r, bool save_u) {
  MonarchDims d;
  d.batch = batch; d.k = k; d.q = q; d.p = p; d.l = l; d.s = s; d.r = r;
  const bool second = l > 0;
  const int64_t n = d.n(), mid = d.mid(), m = d.m(), xs = n + 3;  // padded rows of x
  std::mt19937 rng(int(batch * 7 + k * 3 + l));
  std::normal_distribution<double> nd;
  std::vector<double> x(batch * xs), w1(k * q * p), w2(second ? l * s * r : 0), dy(batch * (m + 1));
  for (auto& v : x) v = nd(rng);
  for (auto& v : w1) v = nd(rng);
  for (auto& v : w2) v = nd(rng);
  for (auto& v : dy) v = nd(rng);
  const int64_t dys = m + 1;

  // reference: u, y, dU, dx, dw1, dw2
  std::vector<double> u(batch * mid, 0), y(batch * m, 0), du(batch * mid, 0), dx(batch * n, 0), dw1(w1.size(), 0),
      dw2(w2.size(), 0);
  for (int64_t t = 0; t < batch; ++t)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t a = 0; a < q; ++a)
        for (int64_t c = 0; c < p; ++c) u[t * mid + i * q + a] += w1[(i * q + a) * p + c] * x[t * xs + i * p + c];
  if (second) {
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

  // orchestrated version
  structops::MonarchForwardParams fp;
  fp.dims = d; fp.dtype = structops::DType::kFloat64;
  fp.x = x.data(); fp.x_stride = xs; fp.w1 = w1.data(); fp.w2 = second ? w2.data() : nullptr;
  std::vector<double> y2(batch * m, -1), u2(batch * mid, -1);
  fp.y = y2.data();
  fp.v = (second && save_u) ? u2.data() : nullptr;
  std::vector<char> ws(structops::monarch_forward_cuda_workspace(fp) + 256);
  const char* err = structops::monarch_forward_cuda(fp, {ws.data(), int64_t(ws.size())}, nullptr);
  if (err) { std::printf("forward error: %s\n", err); return 1; }

  structops::MonarchBackwardParams bp;
  bp.dims = d; bp.dtype = structops::DType::kFloat64;
  bp.dy = dy.data(); bp.dy_stride = dys; bp.x = x.data(); bp.x_stride = xs; bp.w1 = w1.data();
  bp.w2 = second ? w2.data() : nullptr; bp.v = fp.v;
  std::vector<double> dx2(batch * n, -1), dw12(w1.size(), -1), dw22(w2.size(), -1);
  bp.dx = dx2.data(); bp.dw1 = dw12.data(); bp.dw2 = second ? dw22.data() : nullptr;
  std::vector<char> wsb(structops::monarch_backward_cuda_workspace(bp) + 256);
  err = structops::monarch_backward_cuda(bp, {wsb.data(), int64_t(wsb.size())}, nullptr);
  if (err) { std::printf("backward error: %s\n", err); return 1; }

  const double e[5] = {max_abs_diff(y, y2), max_abs_diff(dx, dx2), max_abs_diff(dw1, dw12),
                       second ? max_abs_diff(dw2, dw22) : 0.0, (second && save_u) ? max_abs_diff(u, u2) : 0.0};
  double worst = 0;
  for (double v : e) worst = std::fmax(worst, v);
  const bool ok = worst < 1e-9 * (1 + std::sqrt(double(batch)) * (p + q + r + s));
  std::printf("%s batch=%lld w1=(%lld,%lld,%lld) w2=(%lld,%lld,%lld) save_u=%d  y %.1e dx %.1e dw1 %.1e dw2 %.1e u %.1e\n",
              ok ? "ok  " : "FAIL", (long long)batch, (long long)k, (long long)q, (long long)p, (long long)l,
              (long long)s, (long long)r, int(save_u), e[0], e[1], e[2], e[3], e[4]);
  return ok ? 0 : 1;
}

int main() {
  int fails = 0;
  // (batch, k, q, p, l, s, r); batch 20000 exercises the token-split weight-gradient path.
  const int64_t cases[][7] = {{7, 4, 4, 4, 4, 4, 4},     {33, 3, 5, 2, 5, 7, 3},  {50, 2, 10, 3, 4, 6, 5},
                              {20000, 2, 3, 2, 2, 2, 3}, {16, 1, 6, 5, 1, 4, 6},  {9, 4, 6, 3, 0, 0, 0},
                              {20000, 2, 2, 3, 0, 0, 0}};
  for (const auto& c : cases)
    for (int save = 0; save < 2; ++save) fails += run_case(c[0], c[1], c[2], c[3], c[4], c[5], c[6], save);
  return fails ? 1 : 0;
}
