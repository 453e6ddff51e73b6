// Plans of the K-FAC family (structops/kfac.h): torch-free, shared by the CPU and CUDA
// registrations of csrc/torch/kfac_ops.h.  The constants were chosen by bench/bench_kfac.py on
// the 2-core AVX-512 machine of docs/BENCHMARKS.md.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "structops/kfac.h"

namespace structops {

KfacFactorPlan kfac_factor_plan(int64_t d, int64_t tokens, int64_t factor_elem_bytes) {
  if (d <= 0 || tokens < 0 || factor_elem_bytes <= 0)
    throw std::invalid_argument("kfac factor plan: need d > 0, tokens >= 0, elem_bytes > 0, got d=" +
                                std::to_string(d) + " tokens=" + std::to_string(tokens));
  KfacFactorPlan p;
  // Blocks of >= 384 keep every block product a large GEMM; below that the triangle saving
  // (1 - (nb+1)/(2 nb)) does not pay for the extra GEMM calls.
  constexpr int64_t kMinBlock = 384;
  p.num_blocks = std::max<int64_t>(1, d / kMinBlock);
  p.block = (d + p.num_blocks - 1) / p.num_blocks;
  if (p.num_blocks > 1) {
    // Multiples of 64: each block's first column stays 16-byte aligned for the CUDA tensor-op
    // kernels (kfac_lower_blocks_cuda) when x's rows are.
    p.block = (p.block + 63) / 64 * 64;
    p.num_blocks = (d + p.block - 1) / p.block;
  }
  // A cast chunk of about 32 MiB but at least 1024 rows: every chunk runs nb(nb+1)/2 block
  // GEMMs with k = chunk rows, and short k (682 rows at d = 3072 with 8 MiB) made the bf16 path
  // 0.8x the one-shot cast + einsum (bench_kfac.py).
  const int64_t rows = (int64_t{32} << 20) / std::max<int64_t>(1, d * factor_elem_bytes);
  p.chunk_tokens = std::max<int64_t>(1024, std::min<int64_t>(std::max<int64_t>(tokens, 1), rows));
  return p;
}

KfacInversePlan kfac_inverse_plan(int64_t n, int64_t batch, KfacInverseMethod requested, bool on_cuda) {
  if (n <= 0 || batch < 0) throw std::invalid_argument("kfac inverse plan: need n > 0, batch >= 0");
  KfacInversePlan p;
  p.leaf = 32;
  switch (requested) {
    case KfacInverseMethod::Cholesky: p.method = KfacInverseMethod::Cholesky; break;
    case KfacInverseMethod::Schur: p.method = KfacInverseMethod::Schur; break;
    case KfacInverseMethod::Auto:
      // Measured (bench_kfac.py, CPU fp32): Schur 2.8x Cholesky at 48 x 256^2, 1.3x at 48 x 768^2,
      // 1.4x at 12 x 3072^2; below 2 * leaf there is no recursion to gain from.
      p.method = (!on_cuda && n >= 2 * p.leaf) ? KfacInverseMethod::Schur : KfacInverseMethod::Cholesky;
      break;
  }
  return p;
}

int64_t kfac_num_lower_blocks(int64_t d, int64_t block) {
  const int64_t nb = (d + block - 1) / block;
  return nb * (nb + 1) / 2;
}

double kfac_default_neg_tol(int64_t n, double eps) {
  return std::max<double>(1.0, static_cast<double>(n)) * eps * 4.0;
}

}  // namespace structops
