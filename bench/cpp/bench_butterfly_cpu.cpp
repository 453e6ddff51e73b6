// Standalone microbenchmark of the torch-free butterfly CPU kernels (links structops_cpu_kernels
// only).  Usage: bench_butterfly_cpu [threads] [batch n nblocks complex(0|1) ...]
// Default cases are the targets: batch 2048, fp32, n = 256, 1024, 4096; plus complex64.
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "structops/butterfly.h"

namespace {

void run_case(int threads, int64_t batch, int64_t n, int64_t nblocks, bool complex) {
  int64_t log_n = 0;
  while ((int64_t(1) << log_n) < n) ++log_n;
  structops::ButterflyDims d;
  d.batch = batch;
  d.nstacks = 1;
  d.nblocks = nblocks;
  d.log_n = log_n;
  d.in_size = n;
  d.out_size = n;
  d.complex = complex;
  const int64_t P = complex ? 2 : 1;
  std::mt19937 rng(0);
  std::normal_distribution<float> nd(0.f, 0.7f);
  auto fill = [&](std::vector<float>& v) { for (auto& e : v) e = nd(rng); };
  std::vector<float> tw(d.twiddle_per_stack() * P), x(batch * n * P), y(batch * n * P), dy(batch * n * P),
      dx(batch * n * P), dtw(tw.size());
  fill(tw); fill(x); fill(dy);
  structops::CpuExecutor exec = structops_bench::make_executor(&threads);

  structops::ButterflyForwardParams f;
  f.dims = d; f.twiddle = tw.data(); f.x = x.data(); f.x_batch_stride = n; f.x_stack_stride = n; f.y = y.data();
  structops::ButterflyBackwardParams b;
  b.dims = d; b.twiddle = tw.data(); b.x = x.data(); b.x_batch_stride = n; b.x_stack_stride = n;
  b.dy = dy.data(); b.dy_batch_stride = n; b.dy_stack_stride = n; b.dx = dx.data(); b.dtwiddle = dtw.data();

  const double flops = 6.0 * batch * nblocks * log_n * (n / 2) * (complex ? 4 : 1);
  const std::string shape = "batch=" + std::to_string(batch) + " n=" + std::to_string(n) + " nblocks=" +
                            std::to_string(nblocks) + (complex ? " complex64" : " float32") +
                            " threads=" + std::to_string(threads) + " isa=" + structops::monarch_cpu_isa();
  double t = structops_bench::median_seconds([&] { structops::butterfly_forward_cpu(f, exec); }, 2, 9);
  structops_bench::report("butterfly_forward_cpu", shape, t, flops);
  t = structops_bench::median_seconds([&] { structops::butterfly_backward_cpu(b, exec); }, 2, 9);
  structops_bench::report("butterfly_backward_cpu", shape, t, 2 * flops);
  b.dtwiddle = nullptr;
  t = structops_bench::median_seconds([&] { structops::butterfly_backward_cpu(b, exec); }, 2, 9);
  structops_bench::report("butterfly_backward_cpu(dx only)", shape, t, flops);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  std::vector<int64_t> cases;
  if (!structops_bench::parse_cases(argc, argv, 4, {2048, 256, 1, 0, 2048, 1024, 1, 0, 2048, 4096, 1, 0, 2048, 1024, 1, 1}, "batch n nblocks complex", &threads, &cases)) return 2;
  for (size_t i = 0; i < cases.size(); i += 4) run_case(threads, cases[i], cases[i + 1], cases[i + 2], cases[i + 3] != 0);
  return 0;
}
