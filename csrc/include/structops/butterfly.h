// structops — torch-free interface of the butterfly kernels (CPU and CUDA).
//
// Semantics are exactly torch_butterfly's `butterfly_multiply(twiddle, input, increasing_stride,
// output_size)` (reference/monarch_butterfly.md §2.6):
//
//   twiddle (nstacks, nblocks, log_n, n/2, 2, 2)   contiguous, n = 2^log_n
//   x       (batch, nstacks, in_size)              unit stride along in_size; zero-padded (or
//                                                  trimmed) to n
//   y       (batch, nstacks, out_size)             contiguous, out_size <= n: the first out_size
//                                                  outputs
//
// Block beta in [0, nblocks), stage t in [0, log_n): the stride is s = 2^t while the direction
// is increasing, else 2^(log_n-1-t); the direction starts at `increasing_stride` and flips after
// every block.  With an element index e = d*2s + j*s + tau (j in {0,1}, tau < s) and the
// twiddle row rho = d*s + tau, one stage maps
//     z[d*2s + i*s + tau] = sum_j T[stack, beta, t, rho, i, j] * z[d*2s + j*s + tau].
// Stacks are independent butterflies, each applied to its own input row x[b, stack, :].
//
// Complex tensors (complex64 / complex128) are interleaved (re, im) pairs of the real DType and
// every stride below counts complex elements.  Gradients follow torch's convention for complex
// autograd: dx = B^H dy, dT[rho, i, j] = sum_rows dz_out[i] * conj(z_in[j]).
//
// Nothing in this header (or in csrc/cpu, csrc/cuda) knows about torch.
#pragma once

#include <cstdint>

#include "structops/common.h"
#include "structops/monarch.h"  // CpuExecutor, the CPU scratch cache and ISA selection

namespace structops {

struct ButterflyDims {
  int64_t batch = 0;
  int64_t nstacks = 1;
  int64_t nblocks = 1;
  int64_t log_n = 0;
  int64_t in_size = 0;   // x.shape[-1] (any size: padded with zeros or trimmed to n)
  int64_t out_size = 0;  // <= n
  bool increasing_stride = true;
  bool complex = false;  // interleaved complex elements of `dtype`
  int64_t n() const { return int64_t(1) << log_n; }
  // twiddle elements (real scalars; complex: scalar pairs) of one stack
  int64_t twiddle_per_stack() const { return nblocks * log_n * (n() / 2) * 4; }
};

struct ButterflyForwardParams {
  ButterflyDims dims;
  DType dtype = DType::kFloat32;  // the real scalar type (complex64 -> kFloat32)
  const void* twiddle = nullptr;  // contiguous (nstacks, nblocks, log_n, n/2, 2, 2)
  const void* x = nullptr;
  int64_t x_batch_stride = 0;  // elements between x[b, s, :] and x[b+1, s, :]
  int64_t x_stack_stride = 0;  // elements between x[b, s, :] and x[b, s+1, :]
  void* y = nullptr;           // (batch, nstacks, out_size) contiguous
  CudaOptions cuda;
};

struct ButterflyBackwardParams {
  ButterflyDims dims;
  DType dtype = DType::kFloat32;
  const void* twiddle = nullptr;  // contiguous
  const void* x = nullptr;        // as in the forward (needed for dtwiddle only)
  int64_t x_batch_stride = 0;
  int64_t x_stack_stride = 0;
  const void* dy = nullptr;  // (batch, nstacks, out_size), unit stride along out_size
  int64_t dy_batch_stride = 0;
  int64_t dy_stack_stride = 0;
  void* dx = nullptr;        // (batch, nstacks, in_size) contiguous, or nullptr if not needed
  void* dtwiddle = nullptr;  // like twiddle, or nullptr if not needed
  CudaOptions cuda;
};

// ------------------------------------------------------------------------------------------
// CPU (csrc/cpu/butterfly_cpu*.cpp).  All nblocks*log_n stages of a tile of rows run in one
// pass over a cache-resident tile (SIMD across rows, two stages per sweep); parallel over
// (stack, tile).  The backward recomputes the forward inside the tile (the input of every
// two-stage sweep is kept in per-thread scratch, never in main memory) and reduces twiddle
// gradients from a fixed number of per-chunk partials in chunk order: the result does not depend
// on the thread count.  Dtypes: kFloat32, kFloat64, real or complex.  The ISA variant is the
// one monarch_cpu_isa() reports (STRUCTOPS_CPU_ISA applies).
// ------------------------------------------------------------------------------------------
void butterfly_forward_cpu(const ButterflyForwardParams& params, const CpuExecutor& exec);
void butterfly_backward_cpu(const ButterflyBackwardParams& params, const CpuExecutor& exec);

// ------------------------------------------------------------------------------------------
// CUDA (csrc/cuda/butterfly_cuda.cu).  One thread block owns a few rows of one stack; the rows
// live in shared memory (fp32 accumulation for bf16/fp16 storage) and all stages of a pass run
// there; n <= 4096 (complex: 2048) is one pass, larger n is split into passes over windows of
// stride bits.  The shared-memory request is checked against the device's opt-in limit.  The
// backward recomputes each pass's forward in shared memory and writes per-block twiddle partials
// that a second kernel sums in block order (deterministic, no atomics).
// Dtypes: kFloat32, kBFloat16, kFloat16 real; kFloat32 complex.  Archs: sm_80 and newer.
// Status: compiled, not yet run on a GPU.
// Returns nullptr on success, else a static error message.
// ------------------------------------------------------------------------------------------
int64_t butterfly_forward_cuda_workspace(const ButterflyForwardParams& params);
int64_t butterfly_backward_cuda_workspace(const ButterflyBackwardParams& params);
const char* butterfly_forward_cuda(const ButterflyForwardParams& params, CudaWorkspace workspace, void* stream);
const char* butterfly_backward_cuda(const ButterflyBackwardParams& params, CudaWorkspace workspace, void* stream);

// ------------------------------------------------------------------------------------------
// Block butterfly (fly's `block_butterfly_multiply`, Pixelfly): every twiddle entry is a bs x bs
// matrix and every element a bs-vector, so the dimension is N = bs * n:
//   twiddle (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs)   contiguous, in x's dtype
//   x (batch, nstacks, in_size) zero-padded / trimmed to N; y (batch, nstacks, out_size <= N)
//   z'[(d*2s + i*s + tau)*bs + k] = sum_{j, l} T[stack, beta, t, rho, i, j, k, l] z[(d*2s + j*s + tau)*bs + l]
// CUDA: each stage is one batched GEMM of the engine (batch over the n/2 twiddle rows rho, M = the
// batch rows, K = N = 2*bs) between chunk transposes into and out of the "pairs" layout
// (csrc/cuda/block_butterfly_cuda.cpp).  dims.in_size / out_size count elements; dims.complex
// must be false.  Dtypes: kFloat32 (TF32 when allowed), kBFloat16, kFloat16, kFloat64.
// CPU: batched ATen GEMMs in the torch layer (csrc/torch/block_butterfly_ops.h).
// ------------------------------------------------------------------------------------------
struct BlockButterflyForwardParams {
  ButterflyDims dims;
  int64_t block_size = 1;
  DType dtype = DType::kFloat32;
  const void* twiddle = nullptr;
  const void* x = nullptr;
  int64_t x_batch_stride = 0, x_stack_stride = 0;
  void* y = nullptr;  // (batch, nstacks, out_size) contiguous
  CudaOptions cuda;
};

struct BlockButterflyBackwardParams {
  ButterflyDims dims;
  int64_t block_size = 1;
  DType dtype = DType::kFloat32;
  const void* twiddle = nullptr;
  const void* x = nullptr;  // needed for dtwiddle only
  int64_t x_batch_stride = 0, x_stack_stride = 0;
  const void* dy = nullptr;
  int64_t dy_batch_stride = 0, dy_stack_stride = 0;
  void* dx = nullptr;        // (batch, nstacks, in_size) contiguous or nullptr
  void* dtwiddle = nullptr;  // like twiddle or nullptr
  CudaOptions cuda;
};

int64_t block_butterfly_forward_cuda_workspace(const BlockButterflyForwardParams& params);
int64_t block_butterfly_backward_cuda_workspace(const BlockButterflyBackwardParams& params);
const char* block_butterfly_forward_cuda(const BlockButterflyForwardParams& params, CudaWorkspace workspace, void* stream);
const char* block_butterfly_backward_cuda(const BlockButterflyBackwardParams& params, CudaWorkspace workspace, void* stream);

}  // namespace structops
