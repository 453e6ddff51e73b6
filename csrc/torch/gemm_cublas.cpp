// The cuBLAS engine of the shared GEMM interface (csrc/cuda/gemm/gemm.h), through ATen: each
// operand becomes a strided view (from_blob, no copy) and at::bmm_out runs it on the current
// stream with cuBLAS.  Registered with the engine when _C loads; selected by
// STRUCTOPS_CUDA_GEMM=cublas (and, until a GPU benchmark says otherwise, by auto).
#include <ATen/ops/bmm.h>
#include <ATen/ops/from_blob.h>
#include <c10/cuda/CUDAFunctions.h>

#include <exception>
#include <string>

#include "gemm/gemm.h"
#include "monarch_common.h"

namespace structops {
namespace torch_impl {
namespace {

using cuda::gemm::BatchedGemm;
using cuda::gemm::Layout;
using cuda::gemm::MatrixRef;

at::ScalarType scalar_type(DType t) {
  switch (t) {
    case DType::kFloat64: return at::kDouble;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kFloat16: return at::kHalf;
    default: return at::kFloat;
  }
}

at::Tensor view(const MatrixRef& r, int64_t rows, int64_t cols, int64_t batch, at::ScalarType st, int dev) {
  const bool row = r.layout == Layout::kRowMajor;
  return at::from_blob(const_cast<void*>(r.ptr), {batch, rows, cols},
                       {r.batch_stride, row ? r.ld : 1, row ? 1 : r.ld},
                       at::TensorOptions().dtype(st).device(at::kCUDA, dev));
}

const char* cublas_gemm(const BatchedGemm& g, cudaStream_t /*stream: ATen uses the current one, the same*/) {
  thread_local std::string error;
  try {
    const int dev = c10::cuda::current_device();
    const at::ScalarType st = scalar_type(g.dtype);
    const at::Tensor a = view(g.a, g.m, g.k, g.batch, st, dev);
    const at::Tensor b = view(g.b, g.k, g.n, g.batch, st, dev);
    const bool wide = g.dtype == DType::kFloat32 || g.dtype == DType::kFloat64;
    const at::ScalarType ct = (g.c_acc && !wide) ? at::kFloat : st;
    at::Tensor c = at::from_blob(g.c, {g.batch, g.m, g.n}, {g.batch_stride_c, g.ldc, 1},
                                 at::TensorOptions().dtype(ct).device(at::kCUDA, dev));
    if (ct == st) {
      at::bmm_out(c, a, b);
    } else {  // fp32 C from 16-bit inputs (the orchestrations do not ask cuBLAS for this)
      c.copy_(at::bmm(a.to(at::kFloat), b.to(at::kFloat)));
    }
    return nullptr;
  } catch (const std::exception& e) {
    error = std::string("structops cuBLAS engine: ") + e.what();
    return error.c_str();
  }
}

struct Register {
  Register() { cuda::gemm::set_cublas_gemm(&cublas_gemm); }
} register_cublas;

}  // namespace
}  // namespace torch_impl
}  // namespace structops
