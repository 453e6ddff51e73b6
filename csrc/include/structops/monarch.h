// structops — torch-free interface of the block-diagonal / Monarch kernels (CPU and CUDA).
//
// Semantics are exactly HazyResearch/fly's `blockdiag_multiply` and
// `blockdiag_butterfly_multiply` (see docs/ARCHITECTURE.md and reference/monarch_butterfly.md §2):
//
//   x  (batch, n)        n = k*p, row stride x_stride elements, unit stride along n
//   w1 (k, q, p)         contiguous: k blocks of q x p
//   u  (batch, k*q)      u[b, i*q + a] = sum_c w1[i, a, c] * x[b, i*p + c]          (BD(w1) x)
//   v  (batch, k*q)      v[b, lm*r + rh] = u[b, rh*l + lm]                          (P_mid u)
//   w2 (l, s, r)         contiguous, k*q == l*r
//   y  (batch, l*s)      y[b, sg*l + lm] = sum_rh w2[lm, sg, rh] * v[b, lm*r + rh]   (P_out BD(w2) v)
//
// i.e. y = x M^T with M = P_out BD(w2) P_mid BD(w1): P_mid reads u as an (r, l) matrix and
// transposes it, P_out writes the (l, s) result transposed.  On the CPU both permutations are
// folded into the fused kernels' index arithmetic or in-cache transposes; on CUDA they are
// coalesced row transposes between tensor-core GEMMs.  v is the intermediate saved for the
// backward pass on both backends (it is fly's `out1`, viewed as (batch, l, r)).
//
// The block-diagonal op is the first factor alone: w2 == nullptr and y == u.
//
// Nothing in this header (or in csrc/cpu, csrc/cuda) knows about torch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "structops/common.h"

namespace structops {

struct MonarchDims {
  int64_t batch = 0;       // flattened leading dims of x
  int64_t k = 0, q = 0, p = 0;  // w1: k blocks of q x p
  int64_t l = 0, s = 0, r = 0;  // w2: l blocks of s x r (all 0 for the block-diagonal op)
  bool has_second_factor() const { return l > 0; }
  int64_t n() const { return k * p; }    // input features
  int64_t mid() const { return k * q; }  // intermediate features (= l*r)
  int64_t m() const { return has_second_factor() ? l * s : k * q; }  // output features
};

struct MonarchForwardParams {
  MonarchDims dims;
  DType dtype = DType::kFloat32;
  const void* x = nullptr;
  int64_t x_stride = 0;      // elements between rows of x (>= n)
  const void* w1 = nullptr;  // (k, q, p) contiguous
  const void* w2 = nullptr;  // (l, s, r) contiguous; nullptr for the block-diagonal op
  void* y = nullptr;         // (batch, m) contiguous
  void* v = nullptr;         // optional (batch, k*q) contiguous: saves v for the backward pass
  CudaOptions cuda;          // CUDA only: engine, TF32, SM count
};

struct MonarchBackwardParams {
  MonarchDims dims;
  DType dtype = DType::kFloat32;
  const void* dy = nullptr;   // (batch, m), row stride dy_stride, unit stride along m
  int64_t dy_stride = 0;
  const void* x = nullptr;    // (batch, n), row stride x_stride
  int64_t x_stride = 0;
  const void* w1 = nullptr;   // (k, q, p) contiguous
  const void* w2 = nullptr;   // (l, s, r) contiguous or nullptr (block-diagonal op)
  const void* v = nullptr;    // saved v (batch, k*q) contiguous, or nullptr: recomputed from x
  void* dx = nullptr;         // (batch, n) contiguous, or nullptr if not needed
  void* dw1 = nullptr;        // (k, q, p) contiguous, or nullptr
  void* dw2 = nullptr;        // (l, s, r) contiguous, or nullptr
  CudaOptions cuda;           // CUDA only: engine, TF32, SM count
};

// ------------------------------------------------------------------------------------------
// CPU.  Threading is injected by the caller (the torch layer passes at::parallel_for, the C++
// benchmark a std::thread pool) so the kernels stay torch-free.  Plain function pointers on
// purpose: the ISA-specific translation units must not instantiate std:: templates that other
// TUs also instantiate (an AVX-512 copy of an inline function could be picked by the linker
// for the generic path).
// ------------------------------------------------------------------------------------------
using ParallelBody = void (*)(void* body_ctx, int64_t index);
struct CpuExecutor {
  int num_threads = 1;
  // Must call body(body_ctx, i) once for every i in [0, n), possibly concurrently, and return
  // when all calls have finished.
  void (*parallel)(void* exec_ctx, int64_t n, ParallelBody body, void* body_ctx) = nullptr;
  void* exec_ctx = nullptr;
};

// Scratch memory of the CPU kernels (packed weights, tile buffers, weight-gradient partials) is
// recycled through a small process-wide cache instead of being returned to the OS after every
// call: fresh pages from mmap cost a page fault each, which on some machines is slower than the
// kernel itself.  At most STRUCTOPS_CPU_SCRATCH_CACHE_MB (default 256) MiB are kept; call
// monarch_cpu_release_scratch() to free them now.
void monarch_cpu_release_scratch();
// The same cache for callers' temporaries (64-byte aligned; *capacity receives the real size,
// which must be passed back on release).
void* monarch_cpu_scratch_acquire(int64_t bytes, int64_t* capacity);
void monarch_cpu_scratch_release(void* ptr, int64_t capacity);

// Row-wise transpose, the permutations P_mid / P_out on their own: for every row t < rows,
//   dst[t*dst_ld + j*a + i] = src[t*src_ld + i*b + j]   (i < a, j < b)
// i.e. each row, viewed as an (a x b) matrix, is transposed.  Used by the BLAS path of the torch
// layer for large blocks.  Non-temporal stores; parallel over rows.
void permute_rows_cpu(DType dtype, const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows,
                      int64_t a, int64_t b, const CpuExecutor& exec);

// Supported dtypes: kFloat32, kFloat64 (others: the caller converts).  Deterministic for a
// given executor thread count: weight gradients are reduced from per-chunk partials in a fixed
// order, never with atomics.
void monarch_forward_cpu(const MonarchForwardParams& params, const CpuExecutor& exec);
void monarch_backward_cpu(const MonarchBackwardParams& params, const CpuExecutor& exec);

// Name of the instruction-set variant the CPU kernels use on this machine: "avx512", "avx2" or
// "generic".  The environment variable STRUCTOPS_CPU_ISA (same names) can force a lower one
// (tests use it to cover every variant); an unsupported request falls back to the best one.
const char* monarch_cpu_isa();
// The same selection, for one call of an ISA-variant kernel: every dispatch to a variant goes
// through here and is counted (cpu_variant_kernel_calls(): calls since the library loaded).
// `make test` uses the count to run only the tests whose results can depend on the variant in
// its second and later passes (tests/conftest.py).
const char* cpu_isa_for_kernel_call();
int64_t cpu_variant_kernel_calls();
// Comma-separated list of the variants usable on this machine, best first.
const char* monarch_cpu_available_isas();

// ------------------------------------------------------------------------------------------
// CUDA (implemented in csrc/cuda/monarch_cuda.cpp; only built with STRUCTOPS_WITH_CUDA).
//
// Every block GEMM is one batched launch of the shared GEMM engine (csrc/cuda/gemm/gemm.h):
// tensor cores for bf16/fp16 (HMMA, fp32 accumulation), TF32 for fp32 when params.cuda allows
// it, DMMA for fp64.  P_mid and P_out are coalesced shared-memory row transposes between the
// GEMMs, never strided gathers inside a mainloop.  The saved intermediate (params.v) is v, the
// same layout as on the CPU.  Weight gradients reduce over tokens in token splits sized from the
// SM count and the output tile count; the fp32 partials are summed in split order (deterministic,
// no atomics).  `stream` is a cudaStream_t; nothing synchronises the host and nothing allocates,
// so the calls are CUDA-graph capturable.
//
// Dtypes: kFloat32, kFloat64, kBFloat16, kFloat16.  Archs: sm_80 and newer.
// Status: compiled in CI (SASS checked for HMMA), not yet run on a GPU.
//
// Workspace: the caller allocates monarch_*_cuda_workspace(params) bytes (e.g. from its caching
// allocator).  Returns nullptr on success, else a static error message.
// ------------------------------------------------------------------------------------------
int64_t monarch_forward_cuda_workspace(const MonarchForwardParams& params);
int64_t monarch_backward_cuda_workspace(const MonarchBackwardParams& params);
const char* monarch_forward_cuda(const MonarchForwardParams& params, CudaWorkspace workspace, void* stream);
const char* monarch_backward_cuda(const MonarchBackwardParams& params, CudaWorkspace workspace, void* stream);

}  // namespace structops
