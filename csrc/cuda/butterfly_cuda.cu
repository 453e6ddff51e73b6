// Butterfly CUDA kernels and their host launchers (torch-free).  The per-block work lives in
// butterfly_pass.cuh (shared with the host emulation test); this file only binds it to
// threadIdx / blockIdx / shared memory and plans the launches.
//
// Storage dtypes: float, __nv_bfloat16, __half (compute and accumulate in float), float2
// (complex64, compute in float pairs).  Twiddles are stored in the activation dtype.
// Shared memory: one window (forward) or two (twiddle-gradient backward) of 2^wb elements of the
// compute type per row; wb <= 13 / 12 and the opt-in per-block limit the device reports bound it
// (cudaDevAttrMaxSharedMemoryPerBlockOptin), above 48 KiB the kernel is opted in explicitly.
// Status: compiled, not yet run on a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "butterfly_pass.cuh"
#include "structops/butterfly.h"

namespace structops {
namespace bfly_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxPartialBytes = int64_t(64) << 20;

struct DeviceExec {
  template <class F>
  __device__ __forceinline__ void phase(F&& f) {
    f(static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
    __syncthreads();
  }
};

template <class V, class TW, class TS, class TD>
__global__ void __launch_bounds__(kThreads) pass_kernel(Operand<const TS> src, Operand<TD> dst, const TW* tw,
                                                        int64_t tw_stack_stride, Geometry g, Pass ps, bool adjoint) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  V* sm = reinterpret_cast<V*>(smem_raw);
  DeviceExec ex;
  const int64_t stack = blockIdx.y;
  const int64_t items = pass_items(g, ps);
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    int64_t row0, o;
    item_coords(g, ps, item, &row0, &o);
    pass_item<V>(ex, sm, src, dst, tw + stack * tw_stack_stride, g, ps, row0, o, stack, adjoint);
  }
}

template <class V, class TW, class TI, class TG, class TO>
__global__ void __launch_bounds__(kThreads) grad_pass_kernel(Operand<const TI> in, Operand<const TG> gin, Operand<TO> gout,
                                                             bool store_gout, float* partials, int64_t part_per_stack,
                                                             const TW* tw, int64_t tw_stack_stride, Geometry g, Pass ps) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  V* cur = reinterpret_cast<V*>(smem_raw);
  V* grad = cur + (int64_t(g.rows) << ps.wb);
  DeviceExec ex;
  const int64_t stack = blockIdx.y;
  float* part = partials + (stack * gridDim.x + blockIdx.x) * part_per_stack;
  const int64_t items = pass_items(g, ps);
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    int64_t row0, o;
    item_coords(g, ps, item, &row0, &o);
    grad_pass_item<V>(ex, cur, grad, in, gin, gout, store_gout, part, tw + stack * tw_stack_stride, g, ps, row0, o, stack);
  }
}

// dtwiddle[stack][k] = sum over blocks g (in order) of partials[stack][g][k]; k indexes real scalars.
template <class S>
__global__ void reduce_partials_kernel(const float* partials, int64_t nblocks_g, int64_t per_stack, int64_t nstacks, S* out) {
  const int64_t total = nstacks * per_stack;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t stack = idx / per_stack, k = idx % per_stack;
    const float* p = partials + stack * nblocks_g * per_stack + k;
    float acc = 0.f;
    for (int64_t b = 0; b < nblocks_g; ++b) acc += p[b * per_stack];
    from_compute(out + idx, acc);
  }
}

// ---- device queries -------------------------------------------------------------------------
// SM count and opt-in shared memory of the current device, queried once per device (every call
// plans twice: workspace size, then launch).  Racing first calls write the same values.
DeviceInfo device_info() {
  constexpr int kMaxDevices = 64;
  static DeviceInfo cache[kMaxDevices];
  static std::atomic<bool> known[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return DeviceInfo{};
  if (dev >= 0 && dev < kMaxDevices && known[dev].load(std::memory_order_acquire)) return cache[dev];
  DeviceInfo d;
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess) d.sm_count = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess && v > 0) d.smem_optin = v;
  if (dev >= 0 && dev < kMaxDevices) {
    cache[dev] = d;
    known[dev].store(true, std::memory_order_release);
  }
  return d;
}

template <class K>
const char* opt_in_smem(K kernel, int64_t bytes) {
  if (bytes <= (48 << 10)) return nullptr;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)) != cudaSuccess)
    return "structops butterfly CUDA: cudaFuncSetAttribute(MaxDynamicSharedMemorySize) failed";
  return nullptr;
}

const char* last_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// ---- launchers per storage type S (compute type V) ------------------------------------------------
template <class S, class V>
struct Launch {
  static constexpr int64_t kElem = sizeof(V);
  static constexpr int kFwdCap = 13, kGradCap = 12;

  // Launches one kernel per pass on the stream (the Runner of the sequencing helpers).
  struct CudaRunner {
    const Plan& pl;
    const S* tw;
    int64_t tw_stride;
    float* partials;
    int64_t per_stack;
    cudaStream_t st;

    template <class TS, class TD>
    const char* pass(const Pass& ps, Operand<const TS> src, Operand<TD> dst, bool adjoint) const {
      auto k = &pass_kernel<V, S, TS, TD>;
      if (const char* e = opt_in_smem(k, pl.smem)) return e;
      const dim3 grid(static_cast<unsigned>(pl.grid_x), static_cast<unsigned>(pl.g.nstacks));
      k<<<grid, kThreads, pl.smem, st>>>(src, dst, tw, tw_stride, pl.g, ps, adjoint);
      return last_error();
    }
    template <class TI, class TG, class TO>
    const char* grad_pass(const Pass& ps, Operand<const TI> in, Operand<const TG> gin, Operand<TO> gout, bool store) const {
      auto k = &grad_pass_kernel<V, S, TI, TG, TO>;
      if (const char* e = opt_in_smem(k, pl.smem)) return e;
      const dim3 grid(static_cast<unsigned>(pl.partial_blocks), static_cast<unsigned>(pl.g.nstacks));
      k<<<grid, kThreads, pl.smem, st>>>(in, gin, gout, store, partials, per_stack, tw, tw_stride, pl.g, ps);
      return last_error();
    }
  };

  static int64_t n_elems(const ButterflyDims& d) { return d.batch * d.nstacks * d.n(); }
  static Operand<V> work(V* p, const ButterflyDims& d) { return Operand<V>{p, d.nstacks * d.n(), d.n(), d.n()}; }
  static Operand<const V> cwork(const V* p, const ButterflyDims& d) { return Operand<const V>{p, d.nstacks * d.n(), d.n(), d.n()}; }

  static const char* forward(const ButterflyForwardParams& p, CudaWorkspace ws, cudaStream_t st) {
    const ButterflyDims& d = p.dims;
    Plan pl;
    if (const char* e = make_plan(d, kElem, 1, kFwdCap, device_info(), &pl)) return e;
    const Operand<const S> x{static_cast<const S*>(p.x), p.x_batch_stride, p.x_stack_stride, d.in_size};
    const Operand<S> y{static_cast<S*>(p.y), d.nstacks * d.out_size, d.out_size, d.out_size};
    if (pl.np > 1 && ws.bytes < n_elems(d) * kElem) return "structops butterfly CUDA: workspace too small";
    CudaRunner run{pl, static_cast<const S*>(p.twiddle), d.twiddle_per_stack(), nullptr, 0, st};
    return sequence_forward<V>(run, pl.passes, pl.np, x, y, work(static_cast<V*>(ws.ptr), d));
  }

  static int64_t forward_workspace(const ButterflyForwardParams& p) {
    Plan pl;
    if (make_plan(p.dims, kElem, 1, kFwdCap, device_info(), &pl)) return 0;
    return pl.np > 1 ? n_elems(p.dims) * kElem : 0;
  }

  // workspace layout: [grad buffer][saved inputs of passes 1..np-1][partials]  (bytes, each
  // region 256-byte aligned); dx-only: [grad buffer] when np > 1.
  struct Layout {
    int64_t grad = 0, saved = 0, partials = 0, total = 0;
  };
  static int64_t align(int64_t b) { return (b + 255) / 256 * 256; }
  static Layout layout(const ButterflyBackwardParams& p, const Plan& pl) {
    const ButterflyDims& d = p.dims;
    Layout L;
    const int64_t buf = align(n_elems(d) * kElem);
    int64_t off = 0;
    if (pl.np > 1) {
      L.grad = off;
      off += buf;
    }
    if (p.dtwiddle) {
      L.saved = off;
      off += buf * (pl.np - 1);
      L.partials = off;
      off += align(d.nstacks * pl.partial_blocks * d.twiddle_per_stack() * (kElem / 4) * int64_t(sizeof(float)));
    }
    L.total = off;
    return L;
  }
  static const char* backward_plan(const ButterflyBackwardParams& p, Plan* pl) {
    const DeviceInfo dev = device_info();
    const bool grad_t = p.dtwiddle != nullptr;
    if (const char* e = make_plan(p.dims, kElem, grad_t ? 2 : 1, grad_t ? kGradCap : kFwdCap, dev, pl)) return e;
    if (grad_t) set_partial_blocks(p.dims, kElem, dev, kMaxPartialBytes, pl);
    return nullptr;
  }
  static int64_t backward_workspace(const ButterflyBackwardParams& p) {
    Plan pl;
    if (backward_plan(p, &pl)) return 0;
    return layout(p, pl).total;
  }

  static const char* backward(const ButterflyBackwardParams& p, CudaWorkspace ws, cudaStream_t st) {
    const ButterflyDims& d = p.dims;
    Plan pl;
    if (const char* e = backward_plan(p, &pl)) return e;
    const Layout L = layout(p, pl);
    if (ws.bytes < L.total) return "structops butterfly CUDA: workspace too small";
    char* base = static_cast<char*>(ws.ptr);
    const Operand<const S> x{static_cast<const S*>(p.x), p.x_batch_stride, p.x_stack_stride, d.in_size};
    const Operand<const S> dy{static_cast<const S*>(p.dy), p.dy_batch_stride, p.dy_stack_stride, d.out_size};
    S* dxp = static_cast<S*>(p.dx);
    const Operand<S> dx{dxp, d.nstacks * d.in_size, d.in_size, std::min(d.in_size, d.n())};
    if (dxp && d.in_size > d.n()) {  // trimmed inputs get no gradient
      if (cudaMemsetAsync(dxp, 0, d.batch * d.nstacks * d.in_size * sizeof(S), st) != cudaSuccess) return last_error();
    }
    const Operand<V> gbuf = work(reinterpret_cast<V*>(base + L.grad), d);
    const int64_t per_stack = d.twiddle_per_stack() * (kElem / 4);  // real scalars per stack
    float* partials = p.dtwiddle ? reinterpret_cast<float*>(base + L.partials) : nullptr;
    CudaRunner run{pl, static_cast<const S*>(p.twiddle), d.twiddle_per_stack(), partials, per_stack, st};
    if (!p.dtwiddle) return sequence_backward_dx<V>(run, pl.passes, pl.np, dy, dx, gbuf);
    if (cudaMemsetAsync(partials, 0, d.nstacks * pl.partial_blocks * per_stack * sizeof(float), st) != cudaSuccess)
      return last_error();
    const int64_t buf_bytes = align(n_elems(d) * kElem);
    auto saved = [&](int i) { return work(reinterpret_cast<V*>(base + L.saved + (i - 1) * buf_bytes), d); };
    if (const char* e = sequence_backward_grad<V>(run, pl.passes, pl.np, x, dy, dx, dxp != nullptr, gbuf, saved)) return e;
    using Scalar = typename std::conditional<sizeof(V) == 8, float, S>::type;  // complex: float pairs
    const int64_t total = d.nstacks * per_stack;
    const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + 255) / 256, 4096)));
    reduce_partials_kernel<Scalar><<<blocks, 256, 0, st>>>(partials, pl.partial_blocks, per_stack, d.nstacks,
                                                            static_cast<Scalar*>(p.dtwiddle));
    return last_error();
  }
};

}  // namespace
}  // namespace bfly_cuda

namespace {
using bfly_cuda::C2;
using bfly_cuda::Launch;
using LF32 = Launch<float, float>;
using LBF16 = Launch<__nv_bfloat16, float>;
using LF16 = Launch<__half, float>;
using LC64 = Launch<float2, C2>;
constexpr const char* kBadDtype = "structops butterfly CUDA: supported dtypes are float32, bfloat16, float16 and complex64";

template <class L>
const char* fwd(const ButterflyForwardParams& p, CudaWorkspace ws, void* st) {
  return L::forward(p, ws, static_cast<cudaStream_t>(st));
}
template <class L>
const char* bwd(const ButterflyBackwardParams& p, CudaWorkspace ws, void* st) {
  return L::backward(p, ws, static_cast<cudaStream_t>(st));
}
}  // namespace

int64_t butterfly_forward_cuda_workspace(const ButterflyForwardParams& p) {
  if (p.dims.complex) return LC64::forward_workspace(p);
  switch (p.dtype) {
    case DType::kFloat32: return LF32::forward_workspace(p);
    case DType::kBFloat16: return LBF16::forward_workspace(p);
    case DType::kFloat16: return LF16::forward_workspace(p);
    default: return 0;
  }
}

int64_t butterfly_backward_cuda_workspace(const ButterflyBackwardParams& p) {
  if (p.dims.complex) return LC64::backward_workspace(p);
  switch (p.dtype) {
    case DType::kFloat32: return LF32::backward_workspace(p);
    case DType::kBFloat16: return LBF16::backward_workspace(p);
    case DType::kFloat16: return LF16::backward_workspace(p);
    default: return 0;
  }
}

const char* butterfly_forward_cuda(const ButterflyForwardParams& p, CudaWorkspace ws, void* stream) {
  if (p.dims.complex) return p.dtype == DType::kFloat32 ? fwd<LC64>(p, ws, stream) : kBadDtype;
  switch (p.dtype) {
    case DType::kFloat32: return fwd<LF32>(p, ws, stream);
    case DType::kBFloat16: return fwd<LBF16>(p, ws, stream);
    case DType::kFloat16: return fwd<LF16>(p, ws, stream);
    default: return kBadDtype;
  }
}

const char* butterfly_backward_cuda(const ButterflyBackwardParams& p, CudaWorkspace ws, void* stream) {
  if (p.dims.complex) return p.dtype == DType::kFloat32 ? bwd<LC64>(p, ws, stream) : kBadDtype;
  switch (p.dtype) {
    case DType::kFloat32: return bwd<LF32>(p, ws, stream);
    case DType::kBFloat16: return bwd<LBF16>(p, ws, stream);
    case DType::kFloat16: return bwd<LF16>(p, ws, stream);
    default: return kBadDtype;
  }
}

}  // namespace structops
