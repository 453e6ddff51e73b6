// Shared by the CPU and CUDA butterfly implementations: argument validation and the translation
// of tensors into the torch-free params structs (structops/butterfly.h), so validation cannot
// drift between backends.  Backend policy (see butterfly_cpu_impl.cpp):
//   static bool native(at::ScalarType)   dtypes the kernels run directly
//   static bool upcast(at::ScalarType)   dtypes computed in float32 and cast back (others raise)
//   static void forward(ButterflyForwardParams&, const at::Tensor& like)
//   static void backward(ButterflyBackwardParams&, const at::Tensor& like)
//   static constexpr const char* kName
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

#include "monarch_common.h"  // shape_str, to_dtype
#include "structops/butterfly.h"

namespace structops {
namespace torch_impl {

// Validates twiddle / x (and output_size) and returns the dims.  Shape errors are ValueError,
// dtype/device errors RuntimeError.
inline ButterflyDims check_butterfly(const char* op, const at::Tensor& twiddle, const at::Tensor& x, bool increasing_stride,
                                     c10::optional<int64_t> output_size) {
  TORCH_CHECK_VALUE(twiddle.dim() == 6, op,
                    ": twiddle must be a 6-D tensor (nstacks, nblocks, log_n, n/2, 2, 2), got shape ", shape_str(twiddle));
  ButterflyDims d;
  d.nstacks = twiddle.size(0);
  d.nblocks = twiddle.size(1);
  d.log_n = twiddle.size(2);
  TORCH_CHECK_VALUE(d.log_n >= 0 && d.log_n <= 30, op, ": twiddle.shape[2] (log_n) must be in [0, 30], got ", d.log_n);
  const int64_t n = d.n();
  TORCH_CHECK_VALUE(twiddle.size(3) == n / 2 && twiddle.size(4) == 2 && twiddle.size(5) == 2, op,
                    ": twiddle must have shape (nstacks, nblocks, log_n, n/2, 2, 2) with n = 2^log_n = ", n,
                    ", i.e. (", d.nstacks, ", ", d.nblocks, ", ", d.log_n, ", ", n / 2, ", 2, 2), got ", shape_str(twiddle));
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be a 3-D tensor (batch, nstacks, in_size), got shape ", shape_str(x));
  TORCH_CHECK_VALUE(x.size(1) == d.nstacks, op, ": x.shape[1] must equal nstacks = twiddle.shape[0] = ", d.nstacks,
                    ", got x of shape ", shape_str(x));
  d.batch = x.size(0);
  d.in_size = x.size(2);
  d.out_size = output_size.has_value() ? *output_size : n;
  TORCH_CHECK_VALUE(d.out_size >= 0 && d.out_size <= n, op, ": output_size must be in [0, n] with n = 2^log_n = ", n,
                    ", got ", d.out_size);
  d.increasing_stride = increasing_stride;
  TORCH_CHECK(twiddle.device() == x.device(), op, ": twiddle and x must be on the same device, got twiddle: ",
              twiddle.device(), ", x: ", x.device());
  TORCH_CHECK(twiddle.scalar_type() == x.scalar_type(), op, ": twiddle and x must have the same dtype, got twiddle: ",
              twiddle.scalar_type(), ", x: ", x.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) || at::isComplexType(x.scalar_type()), op,
              ": expected a floating-point or complex dtype, got ", x.scalar_type());
  d.complex = at::isComplexType(x.scalar_type());
  return d;
}

// Unit stride along the last dim (a view when possible).
inline at::Tensor unit_last(const at::Tensor& t) { return t.size(-1) > 1 && t.stride(-1) != 1 ? t.contiguous() : t; }

inline DType real_dtype(at::ScalarType t) { return to_dtype(at::isComplexType(t) ? c10::toRealValueType(t) : t); }

// Tensors a backward call must keep alive while the kernel runs: the (possibly copied) inputs
// whose pointers are in the params struct, and the gradients it writes.
struct BackwardTensors {
  at::Tensor x, grad;       // unit stride along the last dim (views or contiguous copies)
  at::Tensor dtwiddle, dx;  // requested gradients (empty tensors otherwise)
};

// Fills the pointer/stride fields every butterfly backward params struct shares (Butterfly- or
// BlockButterflyBackwardParams) and allocates the requested gradients.
template <class Params>
BackwardTensors backward_params(Params& p, const ButterflyDims& d, DType dtype, const at::Tensor& twiddle,
                                const at::Tensor& x_in, const at::Tensor& grad_in, const std::array<bool, 2>& mask) {
  BackwardTensors t;
  t.grad = unit_last(grad_in);
  t.x = mask[0] ? unit_last(x_in) : x_in;
  const at::Tensor& x = t.x;
  const at::Tensor& grad = t.grad;
  at::Tensor& dtwiddle = t.dtwiddle;
  at::Tensor& dx = t.dx;
  dtwiddle = mask[0] ? at::empty(twiddle.sizes(), twiddle.options()) : at::empty({0}, x.options());
  dx = mask[1] ? at::empty({d.batch, d.nstacks, d.in_size}, x.options()) : at::empty({0}, x.options());
  p.dims = d;
  p.dtype = dtype;
  p.twiddle = twiddle.data_ptr();
  if (mask[0]) {
    p.x = x.data_ptr();
    p.x_batch_stride = x.stride(0);
    p.x_stack_stride = x.stride(1);
  }
  p.dy = grad.data_ptr();
  p.dy_batch_stride = grad.stride(0);
  p.dy_stack_stride = grad.stride(1);
  p.dx = mask[1] ? dx.data_ptr() : nullptr;
  p.dtwiddle = mask[0] ? dtwiddle.data_ptr() : nullptr;
  return t;
}

template <class Kernel>
struct ButterflyOps {
  static at::Tensor forward(const at::Tensor& twiddle_in, const at::Tensor& x_in, bool increasing_stride,
                            c10::optional<int64_t> output_size) {
    ButterflyDims d = check_butterfly("butterfly_multiply", twiddle_in, x_in, increasing_stride, output_size);
    const at::ScalarType st = x_in.scalar_type();
    if (!Kernel::native(st)) {
      TORCH_CHECK(Kernel::upcast(st), "butterfly_multiply: ", st, " is not supported on ", Kernel::kName);
      return forward(twiddle_in.to(at::kFloat), x_in.to(at::kFloat), increasing_stride, output_size).to(st);
    }
    const at::Tensor twiddle = twiddle_in.contiguous();
    const at::Tensor x = unit_last(x_in);
    at::Tensor y = at::empty({d.batch, d.nstacks, d.out_size}, x.options());
    ButterflyForwardParams p;
    p.dims = d;
    p.dtype = real_dtype(st);
    p.twiddle = twiddle.data_ptr();
    p.x = x.data_ptr();
    p.x_batch_stride = x.stride(0);
    p.x_stack_stride = x.stride(1);
    p.y = y.data_ptr();
    if (y.numel() > 0) Kernel::forward(p, x);
    return y;
  }

  static std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_in, const at::Tensor& twiddle_in,
                                                     const at::Tensor& x_in, bool increasing_stride,
                                                     std::array<bool, 2> mask) {
    const char* op = "butterfly_multiply_backward";
    TORCH_CHECK_VALUE(grad_in.dim() == 3, op, ": grad must be a 3-D tensor (batch, nstacks, output_size), got shape ",
                      shape_str(grad_in));
    ButterflyDims d = check_butterfly(op, twiddle_in, x_in, increasing_stride, grad_in.size(2));
    TORCH_CHECK_VALUE(grad_in.size(0) == d.batch && grad_in.size(1) == d.nstacks, op, ": grad of shape ",
                      shape_str(grad_in), " does not match x of shape ", shape_str(x_in));
    TORCH_CHECK(grad_in.scalar_type() == x_in.scalar_type() && grad_in.device() == x_in.device(), op,
                ": grad must have x's dtype and device, got ", grad_in.scalar_type(), " on ", grad_in.device());
    const at::ScalarType st = x_in.scalar_type();
    if (!Kernel::native(st)) {
      TORCH_CHECK(Kernel::upcast(st), op, ": ", st, " is not supported on ", Kernel::kName);
      auto [dt, dx] = backward(grad_in.to(at::kFloat), twiddle_in.to(at::kFloat), x_in.to(at::kFloat), increasing_stride, mask);
      return {mask[0] ? dt.to(st) : dt, mask[1] ? dx.to(st) : dx};
    }
    const at::Tensor twiddle = twiddle_in.contiguous();
    ButterflyBackwardParams p;
    BackwardTensors t = backward_params(p, d, real_dtype(st), twiddle, x_in, grad_in, mask);
    at::Tensor& dtwiddle = t.dtwiddle;
    at::Tensor& dx = t.dx;
    if (!mask[0] && !mask[1]) return {dtwiddle, dx};
    if (d.batch == 0 || d.out_size == 0 || d.nstacks == 0) {  // nothing flows: zero gradients
      if (mask[0]) dtwiddle.zero_();
      if (mask[1]) dx.zero_();
      return {dtwiddle, dx};
    }
    Kernel::backward(p, x_in);
    return {dtwiddle, dx};
  }
};

template <class Kernel>
void register_butterfly_ops(torch::Library& m) {
  m.impl("butterfly_multiply", &ButterflyOps<Kernel>::forward);
  m.impl("butterfly_multiply_backward", &ButterflyOps<Kernel>::backward);
}

}  // namespace torch_impl
}  // namespace structops
