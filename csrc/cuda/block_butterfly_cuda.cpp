// CUDA block butterfly (fly's block_butterfly_multiply; structops/butterfly.h): host-side
// orchestration of the shared GEMM engine, torch-free.  Per stack, with B rows, N = bs*n and the
// natural activation layout z[b][e][l] (e < n blocks of bs elements):
//
//   repack   M[i][rho] (2bs x 2bs), M[(i,k),(j,l)] = T[i-th stage][rho][i][j][k][l]
//            chunk transpose of every (stage, rho, i) row: (j, k) chunks of bs -> (k, j)
//   stage i (log-stride ls, s = 2^ls), pair rho = d*s + tau of blocks e0 = d*2s + tau, e0 + s:
//     to pairs   P[b][rho][(j,l)] = z[b][d*2s + j*s + tau][l]   chunk transpose per (b, d) row:
//                                                               (a=2, b=s) chunks of bs
//     GEMM       batch n/2 (rho), m=B n=2bs k=2bs:  A = P (row, ld N, batch stride 2bs)
//                B = M[i] (col, ld 2bs, batch stride 4bs^2) = M_rho^T,  C = Q (ld N, 2bs)
//     to natural z'[b][d*2s + i*s + tau][k] = Q[b][rho][(i,k)]  chunk transpose (a=s, b=2)
//   backward (G = dL/dz' in the natural layout, GP its pairs layout):
//     dM[i]      batch n/2, m=n=2bs, k=B:  A = GP (col, ld N, 2bs) = GP_rho^T,  B = P_i (row, ld N, 2bs)
//                token splits + reduce_splits (weight_grad_gemm); unpacked into dtwiddle by the
//                inverse chunk transpose (a=bs, b=2)
//     dx path    batch n/2, m=B n=k=2bs:  A = GP (row, ld N, 2bs),  B = M[i] (row, ld 2bs, 4bs^2) = M_rho
//   The stage inputs P_i are recomputed (the forward once more) and kept in the workspace when
//   dtwiddle is requested.
// Current stream, no host synchronisation, no allocation: CUDA-graph capturable.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "gemm/gemm.h"
#include "gemm/launch_util.h"
#include "structops/butterfly.h"

namespace structops {
namespace cuda {
namespace {

using gemm::Layout;

struct Geo {
  int64_t B, n, bs, N, ns, es;
  int64_t m_elems() const { return (n / 2) * 4 * bs * bs; }  // repacked twiddles of one stage
};

Geo geo(const ButterflyDims& d, int64_t bs, DType dt) {
  Geo g;
  g.B = d.batch;
  g.n = d.n();
  g.bs = bs;
  g.N = bs * g.n;
  g.ns = d.nblocks * d.log_n;
  g.es = dtype_size(dt);
  return g;
}

int log_stride_of(const ButterflyDims& d, int64_t i) {
  const int64_t block = i / d.log_n;
  const int t = static_cast<int>(i % d.log_n);
  const bool inc = d.increasing_stride != (block % 2 == 1);
  return inc ? t : static_cast<int>(d.log_n) - 1 - t;
}

const char* check_sizes(const ButterflyDims& d, int64_t bs) {
  const int64_t lim = (int64_t(1) << 31) - 1;
  if (d.complex) return "block_butterfly CUDA: complex dtypes are not supported on CUDA";
  if (d.batch > lim || bs * d.n() > lim || 2 * bs > lim) return "block_butterfly CUDA: sizes must be < 2^31";
  return nullptr;
}

char* at(const void* base, int64_t elems, int64_t es) { return static_cast<char*>(const_cast<void*>(base)) + elems * es; }

// M[i] for every stage of one stack.
const char* repack(const Geo& g, DType dt, const void* tw_stack, void* m, cudaStream_t st) {
  if (g.ns == 0) return nullptr;
  return gemm::transpose_row_chunks(dt, tw_stack, 2 * g.bs * g.bs, m, 2 * g.bs * g.bs, g.ns * (g.n / 2) * 2, 2, g.bs,
                                    g.bs, st);
}

// natural <-> pairs layout of stage i (to_pairs: (a=2, b=s); back: (a=s, b=2)), rows of 2*s*bs
const char* to_pairs(const Geo& g, DType dt, int ls, const void* src, void* dst, bool back, cudaStream_t st) {
  const int64_t s = int64_t(1) << ls, row = 2 * s * g.bs;
  return gemm::transpose_row_chunks(dt, src, row, dst, row, g.B * (g.n / (2 * s)), back ? s : 2, back ? 2 : s, g.bs, st);
}

// C (pairs) = A (pairs) * M_rho^T (transposed_m) or * M_rho
const char* stage_gemm(const Geo& g, DType dt, const CudaOptions& o, const void* a, const void* m_stage, void* c,
                       bool transposed_m, cudaStream_t st) {
  const int64_t k2 = 2 * g.bs;
  return gemm::batched_gemm(
      make_gemm(dt, g.B, k2, k2, g.n / 2, ref(a, g.N, k2, Layout::kRowMajor),
                ref(m_stage, k2, k2 * k2, transposed_m ? Layout::kColumnMajor : Layout::kRowMajor), c, g.N, k2),
      o, st);
}

// z (B x N, natural) <- rows of a (batch, nstacks, len) operand, zero-padded / trimmed to N
const char* load_rows(const Geo& g, const void* src, int64_t batch_stride, int64_t len, void* z, cudaStream_t st) {
  const int64_t w = std::min(len, g.N);
  if (w < g.N && cudaMemsetAsync(z, 0, g.B * g.N * g.es, st) != cudaSuccess) return "cudaMemsetAsync failed";
  if (w == 0 || g.B == 0) return nullptr;
  if (cudaMemcpy2DAsync(z, g.N * g.es, src, batch_stride * g.es, w * g.es, g.B, cudaMemcpyDeviceToDevice, st) != cudaSuccess)
    return "cudaMemcpy2DAsync failed";
  return nullptr;
}

const char* store_rows(const Geo& g, const void* z, void* dst, int64_t pitch, int64_t len, cudaStream_t st) {
  const int64_t w = std::min(len, g.N);
  if (w == 0 || g.B == 0) return nullptr;
  if (cudaMemcpy2DAsync(dst, pitch * g.es, z, g.N * g.es, w * g.es, g.B, cudaMemcpyDeviceToDevice, st) != cudaSuccess)
    return "cudaMemcpy2DAsync failed";
  return nullptr;
}

int64_t forward_bytes(const Geo& g) { return align_up(g.ns * g.m_elems() * g.es) + 2 * align_up(g.B * g.N * g.es); }

int64_t backward_bytes(const BlockButterflyBackwardParams& p, const Geo& g) {
  int64_t bytes = forward_bytes(g);
  if (p.dtwiddle) {
    bytes += align_up(g.ns * g.B * g.N * g.es) + align_up(g.m_elems() * g.es);
    bytes += weight_grad_workspace(g.B, p.dtype, p.cuda, 2 * g.bs, 2 * g.bs, g.n / 2, g.m_elems());
  }
  return bytes;
}

}  // namespace
}  // namespace cuda

int64_t block_butterfly_forward_cuda_workspace(const BlockButterflyForwardParams& p) {
  return cuda::forward_bytes(cuda::geo(p.dims, p.block_size, p.dtype));
}

int64_t block_butterfly_backward_cuda_workspace(const BlockButterflyBackwardParams& p) {
  return cuda::backward_bytes(p, cuda::geo(p.dims, p.block_size, p.dtype));
}

const char* block_butterfly_forward_cuda(const BlockButterflyForwardParams& p, CudaWorkspace ws, void* stream_ptr) {
  using namespace cuda;
  const ButterflyDims& d = p.dims;
  auto st = static_cast<cudaStream_t>(stream_ptr);
  STRUCTOPS_TRY(check_sizes(d, p.block_size));
  const Geo g = geo(d, p.block_size, p.dtype);
  if (g.B == 0 || d.out_size == 0) return nullptr;
  if (ws.bytes < forward_bytes(g)) return "block_butterfly_forward_cuda: workspace too small";
  Ptr alloc(ws.ptr);
  void* m = alloc.take(g.ns * g.m_elems() * g.es);
  void* cur = alloc.take(g.B * g.N * g.es);
  void* oth = alloc.take(g.B * g.N * g.es);
  const int64_t tw_stack = g.ns * g.m_elems();
  for (int64_t s = 0; s < d.nstacks; ++s) {
    STRUCTOPS_TRY(repack(g, p.dtype, at(p.twiddle, s * tw_stack, g.es), m, st));
    STRUCTOPS_TRY(load_rows(g, at(p.x, s * p.x_stack_stride, g.es), p.x_batch_stride, d.in_size, cur, st));
    for (int64_t i = 0; i < g.ns; ++i) {
      const int ls = log_stride_of(d, i);
      STRUCTOPS_TRY(to_pairs(g, p.dtype, ls, cur, oth, false, st));
      STRUCTOPS_TRY(stage_gemm(g, p.dtype, p.cuda, oth, at(m, i * g.m_elems(), g.es), cur, true, st));
      STRUCTOPS_TRY(to_pairs(g, p.dtype, ls, cur, oth, true, st));
      std::swap(cur, oth);
    }
    STRUCTOPS_TRY(store_rows(g, cur, at(p.y, s * d.out_size, g.es), d.nstacks * d.out_size, d.out_size, st));
  }
  return nullptr;
}

const char* block_butterfly_backward_cuda(const BlockButterflyBackwardParams& p, CudaWorkspace ws, void* stream_ptr) {
  using namespace cuda;
  const ButterflyDims& d = p.dims;
  auto st = static_cast<cudaStream_t>(stream_ptr);
  STRUCTOPS_TRY(check_sizes(d, p.block_size));
  const Geo g = geo(d, p.block_size, p.dtype);
  const int64_t tw_stack = g.ns * g.m_elems();
  if (g.B == 0 || d.out_size == 0) {  // nothing flows back: zero gradients
    if (p.dtwiddle && cudaMemsetAsync(p.dtwiddle, 0, d.nstacks * tw_stack * g.es, st) != cudaSuccess)
      return "cudaMemsetAsync failed";
    if (p.dx && cudaMemsetAsync(p.dx, 0, g.B * d.nstacks * d.in_size * g.es, st) != cudaSuccess)
      return "cudaMemsetAsync failed";
    return nullptr;
  }
  if (ws.bytes < backward_bytes(p, g)) return "block_butterfly_backward_cuda: workspace too small";
  Ptr alloc(ws.ptr);
  void* m = alloc.take(g.ns * g.m_elems() * g.es);
  void* cur = alloc.take(g.B * g.N * g.es);
  void* oth = alloc.take(g.B * g.N * g.es);
  void* saved = p.dtwiddle ? alloc.take(g.ns * g.B * g.N * g.es) : nullptr;
  void* dm = p.dtwiddle ? alloc.take(g.m_elems() * g.es) : nullptr;
  if (p.dx && d.in_size > g.N && cudaMemsetAsync(p.dx, 0, g.B * d.nstacks * d.in_size * g.es, st) != cudaSuccess)
    return "cudaMemsetAsync failed";
  for (int64_t s = 0; s < d.nstacks; ++s) {
    STRUCTOPS_TRY(repack(g, p.dtype, at(p.twiddle, s * tw_stack, g.es), m, st));
    if (p.dtwiddle) {  // recompute the forward, keeping every stage's input in the pairs layout
      STRUCTOPS_TRY(load_rows(g, at(p.x, s * p.x_stack_stride, g.es), p.x_batch_stride, d.in_size, cur, st));
      for (int64_t i = 0; i < g.ns; ++i) {
        const int ls = log_stride_of(d, i);
        void* pi = at(saved, i * g.B * g.N, g.es);
        STRUCTOPS_TRY(to_pairs(g, p.dtype, ls, cur, pi, false, st));
        if (i + 1 == g.ns) break;  // the last stage's output is not needed
        STRUCTOPS_TRY(stage_gemm(g, p.dtype, p.cuda, pi, at(m, i * g.m_elems(), g.es), oth, true, st));
        STRUCTOPS_TRY(to_pairs(g, p.dtype, ls, oth, cur, true, st));
      }
    }
    STRUCTOPS_TRY(load_rows(g, at(p.dy, s * p.dy_stack_stride, g.es), p.dy_batch_stride, d.out_size, cur, st));
    for (int64_t i = g.ns - 1; i >= 0; --i) {
      const int ls = log_stride_of(d, i);
      STRUCTOPS_TRY(to_pairs(g, p.dtype, ls, cur, oth, false, st));  // oth = GP
      if (p.dtwiddle) {
        Ptr parts = alloc;  // partials reuse the same region for every stage
        STRUCTOPS_TRY(weight_grad_gemm(
            make_gemm(p.dtype, 2 * g.bs, 2 * g.bs, 0, g.n / 2, ref(oth, g.N, 2 * g.bs, Layout::kColumnMajor),
                      ref(at(saved, i * g.B * g.N, g.es), g.N, 2 * g.bs, Layout::kRowMajor), dm, 2 * g.bs, 4 * g.bs * g.bs),
            g.B, g.N, g.N, dm, g.m_elems(), g.n / 2, p.cuda, parts, st));
        STRUCTOPS_TRY(gemm::transpose_row_chunks(p.dtype, dm, 2 * g.bs * g.bs,
                                                 at(p.dtwiddle, s * tw_stack + i * g.m_elems(), g.es), 2 * g.bs * g.bs,
                                                 (g.n / 2) * 2, g.bs, 2, g.bs, st));
      }
      if (i == 0 && !p.dx) break;
      STRUCTOPS_TRY(stage_gemm(g, p.dtype, p.cuda, oth, at(m, i * g.m_elems(), g.es), cur, false, st));
      STRUCTOPS_TRY(to_pairs(g, p.dtype, ls, cur, oth, true, st));
      std::swap(cur, oth);
    }
    if (p.dx) STRUCTOPS_TRY(store_rows(g, cur, at(p.dx, s * d.in_size, g.es), d.nstacks * d.in_size, d.in_size, st));
  }
  return nullptr;
}

}  // namespace structops
