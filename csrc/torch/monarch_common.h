// Shared by the CPU and CUDA implementations: argument validation and the translation of
// tensors into the torch-free params structs (so validation cannot drift between backends).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "structops/monarch.h"

namespace structops {
namespace torch_impl {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  if (t.dim() == 1) s += ",";
  return s + ")";
}

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, "structops: unsupported dtype ", t);
  }
}

// Validates x/w1[/w2] of blockdiag_matmul (w2 undefined) or monarch_matmul and returns the
// dims with batch = number of rows of x.  Shape errors are ValueError, dtype/device RuntimeError.
inline MonarchDims check_inputs(const char* op, const at::Tensor& x, const at::Tensor& w1,
                                const at::Tensor* w2, const char* w1_name) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape (..., n) with at least 1 dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(w1.dim() == 3, op, ": ", w1_name, " must be a 3-D tensor (k, q, p) = (nblocks, block_out, block_in), got shape ",
                    shape_str(w1));
  MonarchDims d;
  d.k = w1.size(0);
  d.q = w1.size(1);
  d.p = w1.size(2);
  const int64_t n = x.size(-1);
  TORCH_CHECK_VALUE(n == d.k * d.p, op, ": x.shape[-1] must equal k*p = ", d.k, "*", d.p, " = ", d.k * d.p,
                    " for ", w1_name, " of shape (k, q, p) = ", shape_str(w1), ", got x of shape ", shape_str(x));
  if (w2) {
    TORCH_CHECK_VALUE(w2->dim() == 3, op, ": w2 must be a 3-D tensor (l, s, r), got shape ", shape_str(*w2));
    d.l = w2->size(0);
    d.s = w2->size(1);
    d.r = w2->size(2);
    TORCH_CHECK_VALUE(d.l * d.r == d.k * d.q, op, ": w2 of shape (l, s, r) = ", shape_str(*w2),
                      " needs l*r == k*q = ", d.k * d.q, " (w1 of shape ", shape_str(w1), "), got l*r = ", d.l * d.r);
    TORCH_CHECK(w2->scalar_type() == x.scalar_type() && w1.scalar_type() == x.scalar_type(), op,
                ": x, w1 and w2 must have the same dtype, got x: ", x.scalar_type(), ", w1: ", w1.scalar_type(),
                ", w2: ", w2->scalar_type());
    TORCH_CHECK(w2->device() == x.device() && w1.device() == x.device(), op,
                ": x, w1 and w2 must be on the same device, got x: ", x.device(), ", w1: ", w1.device(),
                ", w2: ", w2->device());
  } else {
    TORCH_CHECK(w1.scalar_type() == x.scalar_type(), op, ": x and ", w1_name, " must have the same dtype, got x: ",
                x.scalar_type(), ", ", w1_name, ": ", w1.scalar_type());
    TORCH_CHECK(w1.device() == x.device(), op, ": x and ", w1_name, " must be on the same device, got x: ", x.device(),
                ", ", w1_name, ": ", w1.device());
  }
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) || at::isComplexType(x.scalar_type()), op,
              ": expected a floating-point or complex dtype, got ", x.scalar_type());
  d.batch = n == 0 ? x.numel() : x.numel() / n;
  if (n == 0) {
    d.batch = 1;
    for (int64_t i = 0; i + 1 < x.dim(); ++i) d.batch *= x.size(i);
  }
  return d;
}

// Output shape: x.shape[:-1] + (features,)
inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t features) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = features;
  return s;
}

// x as a (batch, n) matrix with unit stride along n (a view when possible); returns the row
// stride in elements.
inline at::Tensor as_rows(const at::Tensor& x, int64_t batch, int64_t n, int64_t* row_stride) {
  at::Tensor x2 = x.reshape({batch, n});
  if (n > 1 && x2.stride(1) != 1) x2 = x2.contiguous();
  if (batch > 1 && x2.stride(0) < n) x2 = x2.contiguous();  // overlapping / broadcast rows
  *row_stride = batch > 1 ? x2.stride(0) : n;
  return x2;
}

}  // namespace torch_impl
}  // namespace structops
