// Shared by the CPU and CUDA registrations of the random-basis ops: argument validation (shape
// errors are ValueError, dtype/device errors RuntimeError, the same wording as
// python/structops/ops/randbasis.py) and the translation into the torch-free plan
// (structops/randbasis.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <stdexcept>

#include "monarch_common.h"  // shape_str
#include "structops/randbasis.h"

namespace structops {
namespace torch_impl {

inline RandBasisStrategy to_strategy(const char* op, int64_t s) {
  TORCH_CHECK_VALUE(s >= 0 && s <= 2, op, ": strategy must be 0 (auto), 1 (factored) or 2 (merged), got ", s);
  return static_cast<RandBasisStrategy>(s);
}

// `out` is the out_features the bases imply; the weight (absent for a quantized base layer,
// whose own product runs outside the op) must agree.
inline void check_compute_tensors(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& weight_opt,
                                  int64_t out, std::initializer_list<std::pair<const char*, const at::Tensor*>> others) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (tokens, in_features), got shape ", shape_str(x));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating-point x, got ", x.scalar_type());
  if (weight_opt.has_value()) {
    const at::Tensor& weight = *weight_opt;
    TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == out && weight.size(1) == x.size(1), op,
                      ": weight must have shape (out_features, in_features) = (", out, ", ", x.size(1), "), got ",
                      shape_str(weight));
    TORCH_CHECK(weight.device() == x.device() && weight.scalar_type() == x.scalar_type(), op,
                ": weight must be on x's device with x's dtype (", x.device(), ", ", x.scalar_type(), "), got ",
                weight.device(), ", ", weight.scalar_type());
  }
  for (const auto& [name, t] : others) {
    TORCH_CHECK(t->device() == x.device(), op, ": ", name, " must be on ", x.device(), ", got ", t->device());
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have the compute dtype ", x.scalar_type(),
                " (x's dtype), got ", t->scalar_type());
  }
}

inline void check_vectors(const char* op, const at::Tensor& x, const char* n1, const at::Tensor& v1, const char* n2,
                          const at::Tensor& v2) {
  TORCH_CHECK(v1.device() == x.device() && v2.device() == x.device(), op, ": ", n1, " and ", n2, " must be on ",
              x.device(), ", got ", v1.device(), ", ", v2.device());
  TORCH_CHECK(at::isFloatingType(v1.scalar_type()) && v1.scalar_type() == v2.scalar_type(), op, ": ", n1, " and ", n2,
              " must share one floating dtype, got ", v1.scalar_type(), ", ", v2.scalar_type());
  TORCH_CHECK(v1.scalar_type() == x.scalar_type() || v1.scalar_type() == at::kFloat || v1.scalar_type() == at::kDouble,
              op, ": ", n1, " must have x's dtype (", x.scalar_type(), ") or float32/float64, got ", v1.scalar_type());
}

// RandLoRA: validates and returns the shape (rank = R = r*n).
inline RandBasisShape check_randlora(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                     const c10::optional<at::Tensor>& bias, const at::Tensor& A, const at::Tensor& B,
                                     const at::Tensor& lam, const at::Tensor& gamma) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (tokens, in_features), got shape ", shape_str(x));
  TORCH_CHECK_VALUE(A.dim() == 2 && B.dim() == 2, op, ": basis_A must be 2-D (r, d_min) and basis_B 2-D (d_max, r*n), got ",
                    shape_str(A), " and ", shape_str(B));
  const int64_t in = x.size(1);
  int64_t out;
  if (weight.has_value() && weight->dim() == 2) {
    out = weight->size(0);
  } else {
    // without a weight the bases imply out: the other one of (d_min, d_max)
    TORCH_CHECK_VALUE(in == A.size(1) || in == B.size(0), op, ": in_features = x.shape[1] = ", in,
                      " must equal d_min = basis_A.shape[1] = ", A.size(1), " or d_max = basis_B.shape[0] = ", B.size(0));
    out = in == A.size(1) ? B.size(0) : A.size(1);
  }
  check_compute_tensors(op, x, weight, out, {{"basis_A", &A}, {"basis_B", &B}});
  const int64_t d_min = std::min(in, out), d_max = std::max(in, out);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out, op, ": bias must have shape (", out, ",), got ",
                      shape_str(*bias));
    TORCH_CHECK(bias->device() == x.device() && bias->scalar_type() == x.scalar_type(), op,
                ": bias must have x's device and dtype");
  }
  TORCH_CHECK_VALUE(lam.dim() == 2 && lam.size(0) > 0 && lam.size(1) > 0, op,
                    ": lam (randlora_lambda) must be 2-D (r, n), got shape ", shape_str(lam));
  const int64_t r = lam.size(0), n = lam.size(1);
  TORCH_CHECK_VALUE(n * r >= d_min, op, ": r * n = ", r * n, " must be >= min(in, out) = ", d_min,
                    " (n = ceil(d_min / r) bases make the update full rank), got lam of shape ", shape_str(lam));
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == r && A.size(1) == d_min, op, ": basis_A must have shape (r, d_min) = (",
                    r, ", ", d_min, "), got ", shape_str(A));
  TORCH_CHECK_VALUE(B.dim() == 2 && B.size(0) == d_max && B.size(1) == r * n, op,
                    ": basis_B must have shape (d_max, r*n) = (", d_max, ", ", r * n, "), got ", shape_str(B));
  TORCH_CHECK_VALUE(gamma.dim() == 2 && gamma.size(0) == n && gamma.size(1) == d_min, op,
                    ": gamma (randlora_gamma) must have shape (n, d_min) = (", n, ", ", d_min, "), got ", shape_str(gamma));
  check_vectors(op, x, "lam", lam, "gamma", gamma);
  RandBasisShape s;
  s.tokens = x.size(0);
  s.in = in;
  s.out = out;
  s.rank = r * n;
  s.basis_on_input = in == d_min;
  return s;
}

// VeRA: validates and returns the shape (rank = r).
inline RandBasisShape check_vera(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& bias, const at::Tensor& A, const at::Tensor& B,
                                 const at::Tensor& lambda_d, const at::Tensor& lambda_b) {
  TORCH_CHECK_VALUE(B.dim() == 2, op, ": vera_B must be 2-D (out, r), got ", shape_str(B));
  const int64_t out = weight.has_value() && weight->dim() == 2 ? weight->size(0) : B.size(0);
  check_compute_tensors(op, x, weight, out, {{"vera_A", &A}, {"vera_B", &B}});
  const int64_t in = x.size(1);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out, op, ": bias must have shape (", out, ",), got ",
                      shape_str(*bias));
    TORCH_CHECK(bias->device() == x.device() && bias->scalar_type() == x.scalar_type(), op,
                ": bias must have x's device and dtype");
  }
  TORCH_CHECK_VALUE(lambda_d.dim() == 1 && lambda_d.size(0) > 0, op, ": lambda_d must be 1-D (r,), got shape ",
                    shape_str(lambda_d));
  const int64_t r = lambda_d.size(0);
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == r && A.size(1) == in, op, ": vera_A must have shape (r, in) = (", r,
                    ", ", in, "), got ", shape_str(A));
  TORCH_CHECK_VALUE(B.dim() == 2 && B.size(0) == out && B.size(1) == r, op, ": vera_B must have shape (out, r) = (", out,
                    ", ", r, "), got ", shape_str(B));
  TORCH_CHECK_VALUE(lambda_b.dim() == 1 && lambda_b.size(0) == out, op, ": lambda_b must have shape (", out, ",), got ",
                    shape_str(lambda_b));
  check_vectors(op, x, "lambda_d", lambda_d, "lambda_b", lambda_b);
  RandBasisShape s;
  s.tokens = x.size(0);
  s.in = in;
  s.out = out;
  s.rank = r;
  return s;
}

// Runs a torch-free planning call, turning std::invalid_argument into a ValueError.
template <class F>
RandBasisPlan plan_or_throw(const char* op, F&& f) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, op, ": ", e.what());
  }
  return {};
}

}  // namespace torch_impl
}  // namespace structops
