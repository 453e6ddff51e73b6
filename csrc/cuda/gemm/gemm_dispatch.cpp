// Kernel selection and launch of the shared GEMM engine (see gemm.h).  Host code only, compiled
// by the C++ compiler; the kernels live in the gemm_*.cu files.
#include <atomic>

#include "gemm.h"

namespace structops {
namespace cuda {
namespace gemm {
namespace {

std::atomic<CublasGemmFn> g_cublas{nullptr};

bool aligned(const void* p, int64_t bytes) { return (reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes)) == 0; }

// An operand is usable by a kernel reading `align` elements per access iff its pointer, leading
// dimension, batch stride and contiguous extent are multiples of that access.
bool operand_ok(const MatrixRef& r, int64_t rows, int64_t cols, int64_t align, int64_t esize) {
  const int64_t contiguous = r.layout == Layout::kRowMajor ? cols : rows;
  return aligned(r.ptr, align * esize) && r.ld % align == 0 && r.batch_stride % align == 0 && contiguous % align == 0;
}

enum class Combo { kRowCol, kRowRow, kColRow, kOther };

Combo combo(const BatchedGemm& g) {
  const bool ar = g.a.layout == Layout::kRowMajor, br = g.b.layout == Layout::kRowMajor;
  if (ar && !br) return Combo::kRowCol;
  if (ar && br) return Combo::kRowRow;
  if (!ar && br) return Combo::kColRow;
  return Combo::kOther;
}

// Instantiated (layouts, C type) combinations, see gemm.h.
bool instantiated(const BatchedGemm& g) {
  const Combo c = combo(g);
  const bool wide_out = g.dtype == DType::kFloat32 || g.dtype == DType::kFloat64;
  if (c == Combo::kOther) return false;
  if (wide_out) return true;  // fp32/fp64 kernels write fp32/fp64 C, which c_acc means too
  return c == Combo::kColRow ? g.c_acc : !g.c_acc;
}

bool all_aligned(const BatchedGemm& g, int64_t align, int64_t c_align) {
  const int64_t es = dtype_size(g.dtype);
  const int64_t ces = g.c_acc ? (g.dtype == DType::kFloat64 ? 8 : 4) : es;
  MatrixRef c;
  c.ptr = g.c; c.ld = g.ldc; c.batch_stride = g.batch_stride_c;
  return operand_ok(g.a, g.m, g.k, align, es) && operand_ok(g.b, g.k, g.n, align, es) &&
         operand_ok(c, g.m, g.n, c_align, ces);
}

}  // namespace

const char* kernel_kind_name(KernelKind k) {
  switch (k) {
    case KernelKind::kTensorOpLarge: return "tensorop_128x128x32";
    case KernelKind::kTensorOpSmall: return "tensorop_64x64x32";
    case KernelKind::kTf32: return "tf32_128x128x16";
    case KernelKind::kDmma: return "dmma_64x64x16";
    case KernelKind::kSimtStrided: return "simt_strided";
    case KernelKind::kCublas: return "cublas";
  }
  return "?";
}

KernelKind select_kernel(const BatchedGemm& g, const CudaOptions& opt) {
  if (opt.engine == GemmEngine::kCublas) return KernelKind::kCublas;
  if (!instantiated(g)) return KernelKind::kSimtStrided;
  switch (g.dtype) {
    case DType::kBFloat16:
    case DType::kFloat16: {
      // C alignment: 8 elements for 16-bit C, 4 for fp32 partials (16-byte epilogue stores).
      if (!all_aligned(g, 8, g.c_acc ? 4 : 8)) return KernelKind::kSimtStrided;
      return (g.m <= 64 || g.n <= 64) ? KernelKind::kTensorOpSmall : KernelKind::kTensorOpLarge;
    }
    case DType::kFloat32:
      if (!opt.allow_tf32 || !all_aligned(g, 4, 4)) return KernelKind::kSimtStrided;
      return KernelKind::kTf32;
    case DType::kFloat64:
      return all_aligned(g, 1, 1) ? KernelKind::kDmma : KernelKind::kSimtStrided;
  }
  return KernelKind::kSimtStrided;
}

const char* batched_gemm(const BatchedGemm& g, const CudaOptions& opt, cudaStream_t stream) {
  if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return nullptr;
  const KernelKind kind = select_kernel(g, opt);
  switch (kind) {
    case KernelKind::kCublas: {
      CublasGemmFn fn = g_cublas.load();
      if (fn == nullptr) return "structops: the cuBLAS GEMM engine is only available through the torch extension";
      return fn(g, stream);
    }
    case KernelKind::kTensorOpLarge:
    case KernelKind::kTensorOpSmall: {
      const Tile16 t = kind == KernelKind::kTensorOpLarge ? Tile16::kLarge : Tile16::kSmall;
      return g.dtype == DType::kBFloat16 ? tensorop_gemm_bf16(g, t, stream) : tensorop_gemm_f16(g, t, stream);
    }
    case KernelKind::kTf32: return tensorop_gemm_tf32(g, stream);
    case KernelKind::kDmma: return tensorop_gemm_f64(g, stream);
    case KernelKind::kSimtStrided: return simt_strided_gemm(g, stream);
  }
  return "structops: no GEMM kernel";
}

const char* simt_strided_gemm(const BatchedGemm& g, cudaStream_t stream) {
  switch (g.dtype) {
    case DType::kFloat32: return simt_strided_gemm_f32(g, stream);
    case DType::kFloat64: return simt_strided_gemm_f64(g, stream);
    case DType::kBFloat16: return simt_strided_gemm_bf16(g, stream);
    case DType::kFloat16: return simt_strided_gemm_f16(g, stream);
  }
  return "structops gemm: unsupported dtype";
}

void set_cublas_gemm(CublasGemmFn fn) { g_cublas.store(fn); }

int token_splits(int64_t k, int64_t out_tiles, int sm_count) {
  if (out_tiles <= 0 || k <= 0) return 1;
  const int64_t want = (2 * int64_t(sm_count > 0 ? sm_count : 1) + out_tiles - 1) / out_tiles;
  int64_t by_k = k / 1024;
  int64_t s = want < by_k ? want : by_k;
  if (s > 16) s = 16;
  return s < 1 ? 1 : static_cast<int>(s);
}

int64_t output_tiles(int64_t m, int64_t n, DType dtype) {
  const int64_t tm = (dtype == DType::kFloat64 || m <= 64 || n <= 64) ? 64 : 128;
  const int64_t tn = tm;
  return ((m + tm - 1) / tm) * ((n + tn - 1) / tn);
}

}  // namespace gemm
}  // namespace cuda
}  // namespace structops
