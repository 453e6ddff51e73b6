// Standalone microbenchmark of the torch-free sparse kernels of the sparse-plus-low-rank (SLTrain)
// family (links structops_cpu_kernels only): the forward x S^T, and the backward g S (grad_x) and
// G at the support (grad_values, the sampled dense-dense product).  The low-rank and dense
// products of sparse_lowrank_linear are plain GEMMs and are not measured here.
// Usage: bench_sparse_lowrank_cpu [threads] [tokens out in density_permille ...]
// Default cases are issue 11's shapes: 4096 tokens; 1024 x 1024 and 4096 x 1024 (out x in);
// density 0.03; float32.
#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "structops/sparse_lowrank.h"

namespace {

void run_case(int threads, int64_t tokens, int64_t rows, int64_t cols, int64_t permille) {
  // a uniform random support of exactly nnz = density * rows * cols distinct positions, sorted
  const int64_t total = rows * cols;
  const int64_t nnz = std::max<int64_t>(1, total * permille / 1000);
  std::mt19937_64 rng(0);
  std::vector<int32_t> flat(total);
  std::iota(flat.begin(), flat.end(), 0);
  for (int64_t k = 0; k < nnz; ++k) {  // partial Fisher-Yates: the first nnz entries
    std::uniform_int_distribution<int64_t> pick(k, total - 1);
    std::swap(flat[k], flat[pick(rng)]);
  }
  flat.resize(nnz);
  std::sort(flat.begin(), flat.end());
  std::vector<int32_t> rowptr(rows + 1), col(nnz);
  if (structops::sparse_support_from_flat(flat.data(), nnz, rows, cols, rowptr.data(), col.data()) != -1) {
    std::fprintf(stderr, "invalid support\n");
    std::exit(1);
  }
  structops::SparseSupport sup;
  sup.rows = rows;
  sup.cols = cols;
  sup.nnz = nnz;
  sup.rowptr = rowptr.data();
  sup.col = col.data();

  std::normal_distribution<float> nd(0.f, 1.f);
  auto filled = [&](int64_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = nd(rng);
    return v;
  };
  std::vector<float> x = filled(tokens * cols), g = filled(tokens * rows), values = filled(nnz);
  std::vector<float> y(tokens * rows), gx(tokens * cols), gv(nnz);
  structops::CpuExecutor exec = structops_bench::make_executor(&threads);

  structops::SparseMatmulForwardParams f;
  f.tokens = tokens; f.x = x.data(); f.ldx = cols; f.y = y.data(); f.ldy = rows; f.accumulate = false;
  f.values = values.data(); f.support = sup;
  structops::SparseMatmulBackwardParams b;
  b.tokens = tokens; b.g = g.data(); b.ldg = rows; b.x = x.data(); b.ldx = cols; b.values = values.data();
  b.support = sup; b.grad_x = gx.data(); b.ldgx = cols; b.accumulate_grad_x = false; b.grad_values = gv.data();

  const double flops = 2.0 * tokens * nnz;  // one multiply-add per nonzero per token, per product
  const std::string shape = "tokens=" + std::to_string(tokens) + " out=" + std::to_string(rows) + " in=" +
                            std::to_string(cols) + " density=" + std::to_string(permille / 1000.0).substr(0, 5) +
                            " nnz=" + std::to_string(nnz) + " float32 threads=" + std::to_string(threads) +
                            " isa=" + structops::monarch_cpu_isa();
  double t = structops_bench::median_seconds([&] { structops::sparse_matmul_forward_cpu(f, exec); }, 2, 9);
  structops_bench::report("sparse_matmul_forward_cpu (x S^T)", shape, t, flops);
  t = structops_bench::median_seconds([&] { structops::sparse_matmul_backward_cpu(b, exec); }, 2, 9);
  structops_bench::report("sparse_matmul_backward_cpu (g S + G[support])", shape, t, 2 * flops);
  b.grad_values = nullptr;
  t = structops_bench::median_seconds([&] { structops::sparse_matmul_backward_cpu(b, exec); }, 2, 9);
  structops_bench::report("sparse_matmul_backward_cpu (g S only)", shape, t, flops);
  b.grad_values = gv.data();
  b.grad_x = nullptr;
  t = structops_bench::median_seconds([&] { structops::sparse_matmul_backward_cpu(b, exec); }, 2, 9);
  structops_bench::report("sparse_matmul_backward_cpu (G[support] only)", shape, t, flops);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  std::vector<int64_t> cases;
  if (!structops_bench::parse_cases(argc, argv, 4, {4096, 1024, 1024, 30, 4096, 4096, 1024, 30}, "tokens out in density_permille", &threads, &cases)) return 2;
  for (size_t i = 0; i < cases.size(); i += 4) run_case(threads, cases[i], cases[i + 1], cases[i + 2], cases[i + 3]);
  return 0;
}
