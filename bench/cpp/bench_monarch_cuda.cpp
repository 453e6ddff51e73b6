// Standalone microbenchmark of the torch-free CUDA Monarch kernels (links structops_cuda_kernels
// and cudart only).  Compiles everywhere the CUDA build does; on a machine without a GPU it says
// so and exits 0.  Usage: bench_monarch_cuda [batch n nblocks]...   (bf16, CUTLASS engine, CUDA-event timing,
// median of 20 runs after 3 warm-ups; one JSON object per line)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "structops/monarch.h"

#define CHECK_CUDA(x)                                                                 \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e_));             \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

template <class F>
static double median_ms(F&& fn, cudaStream_t s) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < 20; ++i) {
    CHECK_CUDA(cudaEventRecord(a, s));
    fn();
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("no CUDA device: skipping\n");
    return 0;
  }
  std::vector<long long> cases;
  for (int i = 1; i < argc; ++i) cases.push_back(std::atoll(argv[i]));
  if (cases.empty()) cases = {65536, 1024, 32, 65536, 1024, 4, 16384, 4096, 64, 16384, 4096, 4};
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreate(&s));
  int sms = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  structops::CudaOptions opt;  // the CUTLASS engine (cuBLAS needs the torch layer)
  opt.sm_count = sms;
  for (size_t c = 0; c + 2 < cases.size(); c += 3) {
    const long long batch = cases[c], n = cases[c + 1], nb = cases[c + 2], b = n / nb;
    structops::MonarchDims d;
    d.batch = batch; d.k = nb; d.q = b; d.p = b; d.l = nb; d.s = b; d.r = b;
    const size_t act = size_t(batch) * n * 2, wts = size_t(nb) * b * b * 2;
    void *x, *y, *u, *dy, *dx, *w1, *w2, *dw1, *dw2;
    for (void** p : {&x, &y, &u, &dy, &dx}) CHECK_CUDA(cudaMalloc(p, act));
    for (void** p : {&w1, &w2, &dw1, &dw2}) CHECK_CUDA(cudaMalloc(p, wts));
    for (void* p : {x, y, u, dy, dx}) CHECK_CUDA(cudaMemset(p, 0, act));
    for (void* p : {w1, w2}) CHECK_CUDA(cudaMemset(p, 0, wts));
    structops::MonarchForwardParams f;
    f.dims = d; f.dtype = structops::DType::kBFloat16; f.x = x; f.x_stride = n; f.w1 = w1; f.w2 = w2; f.y = y; f.v = u;
    f.cuda = opt;
    structops::MonarchBackwardParams g;
    g.dims = d; g.dtype = structops::DType::kBFloat16; g.dy = dy; g.dy_stride = n; g.x = x; g.x_stride = n;
    g.w1 = w1; g.w2 = w2; g.v = u; g.dx = dx; g.dw1 = dw1; g.dw2 = dw2;
    g.cuda = opt;
    const long long wsb = std::max(structops::monarch_forward_cuda_workspace(f), structops::monarch_backward_cuda_workspace(g));
    void* ws = nullptr;
    if (wsb) CHECK_CUDA(cudaMalloc(&ws, wsb));
    auto fwd = [&] {
      const char* e = structops::monarch_forward_cuda(f, {ws, wsb}, s);
      if (e) { std::fprintf(stderr, "forward: %s\n", e); std::exit(1); }
    };
    auto bwd = [&] {
      const char* e = structops::monarch_backward_cuda(g, {ws, wsb}, s);
      if (e) { std::fprintf(stderr, "backward: %s\n", e); std::exit(1); }
    };
    const double flops = 4.0 * batch * n * b;
    const double tf = median_ms(fwd, s), tb = median_ms(bwd, s);
    std::printf("{\"bench\": \"monarch_cuda_bf16_cutlass\", \"batch\": %lld, \"n\": %lld, \"nblocks\": %lld, \"fwd_ms\": %.3f, "
                "\"bwd_ms\": %.3f, \"fwd_tflops\": %.1f, \"fwd_bwd_tflops\": %.1f}\n",
                batch, n, nb, tf, tb, flops / tf / 1e9, 3 * flops / (tf + tb) / 1e9);
    for (void* p : {x, y, u, dy, dx, w1, w2, dw1, dw2}) CHECK_CUDA(cudaFree(p));
    if (ws) CHECK_CUDA(cudaFree(ws));
  }
  return 0;
}
