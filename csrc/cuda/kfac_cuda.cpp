// K-FAC factor update on the GEMM engine (structops/kfac.h, KfacLowerBlocksParams): one
// weight-gradient-layout GEMM per lower-triangle block pair, A = x[:, I] read column-major (its
// transpose, no copy), B = x[:, J] row-major, C in the accumulation dtype (c_acc).  Host code
// only; every launch goes through gemm/gemm.h.  Compiled, not yet run on a GPU; the host
// emulation (tests/cpp/cuda_host_emulation.cpp) checks every description and split.
#include <algorithm>

#include "gemm/launch_util.h"
#include "structops/kfac.h"

namespace structops {

using cuda::Ptr;
using cuda::gemm::BatchedGemm;
using cuda::gemm::Layout;

namespace {

int64_t acc_bytes(DType t) { return t == DType::kFloat64 ? 8 : 4; }
DType acc_dtype(DType t) { return t == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32; }

int splits_for(const KfacLowerBlocksParams& p, int64_t bi, int64_t bj) {
  if (!cuda::splits_allowed(p.cuda)) return 1;
  return cuda::gemm::token_splits(p.tokens, cuda::gemm::output_tiles(bi, bj, p.dtype), p.cuda.sm_count);
}

// One block pair's products into `out` (bi x bj, ld = block); token splits through partials.
const char* lower_block(const KfacLowerBlocksParams& p, CudaWorkspace workspace, cudaStream_t stream, int64_t b,
                        int64_t i0, int64_t bi, int64_t j0, int64_t bj) {
  const int64_t es = dtype_size(p.dtype), as = acc_bytes(p.dtype);
  char* out = static_cast<char*>(p.out) + b * p.block * p.block * as;
  if (p.tokens == 0) {
    for (int64_t r = 0; r < bi; ++r)
      if (cudaMemsetAsync(out + r * p.block * as, 0, bj * as, stream) != cudaSuccess) return "cudaMemsetAsync failed";
    return nullptr;
  }
  const char* xi = static_cast<const char*>(p.x) + i0 * es;
  const char* xj = static_cast<const char*>(p.x) + j0 * es;
  const int s = splits_for(p, bi, bj);
  const int64_t per = (p.tokens + s - 1) / s;
  Ptr alloc(workspace.ptr);
  char* parts = s > 1 ? static_cast<char*>(alloc.take(s * bi * bj * as)) : nullptr;
  for (int sp = 0; sp < s; ++sp) {
    const int64_t t0 = sp * per, rows = std::max<int64_t>(0, std::min(per, p.tokens - t0));
    // C (bi x bj) = x[t0:t0+rows, I]^T x[t0:t0+rows, J]
    BatchedGemm g = cuda::make_gemm(p.dtype, bi, bj, rows, 1,
                                    cuda::ref(xi + t0 * p.x_stride * es, p.x_stride, 0, Layout::kColumnMajor),
                                    cuda::ref(xj + t0 * p.x_stride * es, p.x_stride, 0, Layout::kRowMajor),
                                    s > 1 ? parts + sp * bi * bj * as : out, s > 1 ? bj : p.block, 0);
    g.c_acc = true;
    if (rows == 0) {
      if (cudaMemsetAsync(g.c, 0, bi * bj * as, stream) != cudaSuccess) return "cudaMemsetAsync failed";
      continue;
    }
    STRUCTOPS_TRY(cuda::gemm::batched_gemm(g, p.cuda, stream));
  }
  if (s > 1) {
    // partials are compact bi x bj; reduce into a compact run, then it must land with ld = block
    if (bj == p.block) {
      STRUCTOPS_TRY(cuda::gemm::reduce_splits(acc_dtype(p.dtype), parts, bi * bj, s, out, stream));
    } else {
      char* tmp = static_cast<char*>(alloc.take(bi * bj * as));
      STRUCTOPS_TRY(cuda::gemm::reduce_splits(acc_dtype(p.dtype), parts, bi * bj, s, tmp, stream));
      if (cudaMemcpy2DAsync(out, p.block * as, tmp, bj * as, bj * as, bi, cudaMemcpyDeviceToDevice, stream) !=
          cudaSuccess)
        return "cudaMemcpy2DAsync failed";
    }
  }
  return nullptr;
}

}  // namespace

int64_t kfac_lower_blocks_cuda_workspace(const KfacLowerBlocksParams& p) {
  // One block's partials at a time (blocks run in sequence on the stream).
  int64_t most = 0;
  const int64_t as = acc_bytes(p.dtype);
  kfac_for_each_lower_block(p.d, p.block, [&](int64_t, int64_t, int64_t bi, int64_t, int64_t bj) {
    const int s = splits_for(p, bi, bj);
    if (s > 1)  // partials, plus a compact sum for an edge block (ld = block != bj)
      most = std::max(most, cuda::align_up(s * bi * bj * as) + (bj != p.block ? cuda::align_up(bi * bj * as) : 0));
  });
  return most;
}

const char* kfac_lower_blocks_cuda(const KfacLowerBlocksParams& p, CudaWorkspace workspace, void* stream_ptr) {
  if (p.d <= 0 || p.block <= 0 || p.tokens < 0) return "kfac_lower_blocks_cuda: bad dims";
  if (workspace.bytes < kfac_lower_blocks_cuda_workspace(p)) return "kfac_lower_blocks_cuda: workspace too small";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const char* err = nullptr;
  kfac_for_each_lower_block(p.d, p.block, [&](int64_t b, int64_t i0, int64_t bi, int64_t j0, int64_t bj) {
    if (err == nullptr) err = lower_block(p, workspace, stream, b, i0, bi, j0, bj);
  });
  return err;
}

}  // namespace structops
