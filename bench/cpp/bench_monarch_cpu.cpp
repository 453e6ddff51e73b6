// Standalone microbenchmark of the torch-free Monarch CPU kernels (links structops_cpu_kernels
// only).  Usage: bench_monarch_cpu [threads] [batch n nblocks ...]
// Default shapes are the targets: 8192 x 1024 and 4096 x 4096 with nblocks sqrt(n), 4.
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "structops/monarch.h"

namespace {

void run_case(int threads, int64_t batch, int64_t n, int64_t nb) {
  const int64_t b = n / nb;
  structops::MonarchDims d;
  d.batch = batch;
  d.k = nb; d.q = b; d.p = b;
  d.l = nb; d.s = b; d.r = b;
  std::mt19937 rng(0);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto fill = [&](std::vector<float>& v) { for (auto& e : v) e = nd(rng); };
  std::vector<float> x(batch * n), w1(nb * b * b), w2(nb * b * b), y(batch * n), u(batch * n), dy(batch * n),
      dx(batch * n), dw1(w1.size()), dw2(w2.size());
  fill(x); fill(w1); fill(w2); fill(dy);

  structops::CpuExecutor exec = structops_bench::make_executor(&threads);

  structops::MonarchForwardParams f;
  f.dims = d; f.x = x.data(); f.x_stride = n; f.w1 = w1.data(); f.w2 = w2.data(); f.y = y.data();
  structops::MonarchBackwardParams bw;
  bw.dims = d; bw.dy = dy.data(); bw.dy_stride = n; bw.x = x.data(); bw.x_stride = n;
  bw.w1 = w1.data(); bw.w2 = w2.data(); bw.v = u.data(); bw.dx = dx.data(); bw.dw1 = dw1.data(); bw.dw2 = dw2.data();

  const double fwd_flops = 4.0 * batch * n * b;
  const std::string shape = "batch=" + std::to_string(batch) + " n=" + std::to_string(n) + " nblocks=" +
                            std::to_string(nb) + " threads=" + std::to_string(threads) +
                            " isa=" + structops::monarch_cpu_isa();
  double t = structops_bench::median_seconds([&] { structops::monarch_forward_cpu(f, exec); }, 2, 9);
  structops_bench::report("monarch_forward_cpu", shape, t, fwd_flops);
  f.v = u.data();
  t = structops_bench::median_seconds([&] { structops::monarch_forward_cpu(f, exec); }, 2, 9);
  structops_bench::report("monarch_forward_cpu(save u)", shape, t, fwd_flops);
  t = structops_bench::median_seconds([&] { structops::monarch_backward_cpu(bw, exec); }, 2, 9);
  structops_bench::report("monarch_backward_cpu", shape, t, 2 * fwd_flops);
  f.w2 = nullptr; f.v = nullptr;
  f.dims.l = f.dims.s = f.dims.r = 0;
  t = structops_bench::median_seconds([&] { structops::monarch_forward_cpu(f, exec); }, 2, 9);
  structops_bench::report("blockdiag_forward_cpu", shape, t, fwd_flops / 2);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  std::vector<int64_t> cases;
  if (!structops_bench::parse_cases(argc, argv, 3, {8192, 1024, 32, 8192, 1024, 4, 4096, 4096, 64, 4096, 4096, 4}, "batch n nblocks", &threads, &cases)) return 2;
  for (size_t i = 0; i < cases.size(); i += 3) run_case(threads, cases[i], cases[i + 1], cases[i + 2]);
  return 0;
}
