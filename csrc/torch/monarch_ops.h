// Backend-independent bodies of the block-diagonal / Monarch operators.  The CPU and CUDA
// registration files instantiate them with a Kernel policy:
//   static bool native(at::ScalarType)            dtypes the kernels run directly; other floating
//                                                 dtypes are computed in float32 and cast back
//   static void forward(const MonarchForwardParams&, const at::Tensor& like)
//   static void backward(const MonarchBackwardParams&, const at::Tensor& like)
//   static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions&)   output allocation
//   static constexpr bool kComplex                whether complex64/complex128 are supported
//                                                 (computed by ComplexMonarch below)
//   static constexpr const char* kName            backend name for error messages
// The bodies validate, reshape to (batch, features) rows, allocate outputs, fill the params
// struct and call the kernel.  No data is copied unless x is not row-addressable.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

#include "monarch_common.h"

namespace structops {
namespace torch_impl {

inline bool need_x_for(const std::array<bool, 3>& mask, bool have_v) { return mask[1] || (mask[2] && !have_v); }

// complex64 / complex128 (fly's ops take them: the DFT is a Monarch matrix).  Batched ATen GEMMs
// (MKL cgemm/zgemm on CPU) on block views of the same four steps; gradients follow torch's
// convention for complex autograd (conjugate Wirtinger): dx = dy conj(M), dW = dy^T conj(x)
// block by block, as fly's backward.
struct ComplexMonarch {
  // x2 (B, n) -> (y (B, m), v (B, k*q) or undefined)
  static std::tuple<at::Tensor, at::Tensor> forward(const MonarchDims& d, const at::Tensor& x2, const at::Tensor& w1,
                                                    const at::Tensor* w2) {
    const at::Tensor xb = x2.reshape({d.batch, d.k, d.p}).transpose(0, 1);                          // (k, B, p)
    at::Tensor u = at::bmm(xb, w1.transpose(1, 2)).transpose(0, 1).reshape({d.batch, d.mid()});  // u layout
    if (!w2) return {u, at::Tensor()};
    const at::Tensor v = u.view({d.batch, d.r, d.l}).transpose(1, 2).reshape({d.batch, d.mid()});   // P_mid
    const at::Tensor w = at::bmm(v.view({d.batch, d.l, d.r}).transpose(0, 1), w2->transpose(1, 2));  // (l, B, s)
    return {w.permute({1, 2, 0}).reshape({d.batch, d.m()}), v};                                      // P_out
  }
  // grads of (x, w1, w2); v is recomputed when undefined
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const MonarchDims& d, const at::Tensor& g2,
                                                                 const at::Tensor& x2, const at::Tensor& w1,
                                                                 const at::Tensor* w2, at::Tensor v,
                                                                 std::array<bool, 3> mask) {
    at::Tensor dx, dw1, dw2, dUb;  // dUb: (k, B, q)
    if (w2) {
      const at::Tensor dW = g2.reshape({d.batch, d.s, d.l}).permute({2, 0, 1});  // (l, B, s)
      if (mask[2]) {
        if (!v.defined()) v = std::get<1>(forward(d, x2, w1, w2));
        dw2 = at::bmm(dW.transpose(1, 2), v.reshape({d.batch, d.l, d.r}).transpose(0, 1).conj());
      }
      if (mask[0] || mask[1]) {
        const at::Tensor dV = at::bmm(dW, w2->conj());                         // (l, B, r)
        const at::Tensor dU = dV.permute({1, 2, 0}).reshape({d.batch, d.mid()});  // P_mid^T: u layout
        dUb = dU.view({d.batch, d.k, d.q}).transpose(0, 1);
      }
    } else {
      dUb = g2.reshape({d.batch, d.k, d.q}).transpose(0, 1);
    }
    if (mask[0]) dx = at::bmm(dUb, w1.conj()).transpose(0, 1).reshape({d.batch, d.n()});
    if (mask[1]) dw1 = at::bmm(dUb.transpose(1, 2), x2.reshape({d.batch, d.k, d.p}).transpose(0, 1).conj());
    return {dx, dw1, dw2};
  }
};

template <class Kernel>
void check_complex_supported(const char* op, const at::Tensor& x) {
  TORCH_CHECK(!at::isComplexType(x.scalar_type()) || Kernel::kComplex, op, ": complex inputs (", x.scalar_type(),
              ") are supported on CPU only, not on ", Kernel::kName,
              "; compute on the CPU or split into real and imaginary parts");
}

template <class Kernel>
struct MonarchOps {
  // Forward of blockdiag_matmul (w2 == nullptr) and monarch_matmul[_fwd].  Returns (y, v); v (the
  // permuted intermediate, saved for the backward) is undefined unless save_v.
  static std::tuple<at::Tensor, at::Tensor> forward(const char* op, const at::Tensor& x_in, const at::Tensor& w1_in,
                                                    const at::Tensor* w2_in, bool save_v) {
    MonarchDims d = check_inputs(op, x_in, w1_in, w2_in, w2_in ? "w1" : "w");
    check_complex_supported<Kernel>(op, x_in);
    if (at::isComplexType(x_in.scalar_type())) {
      auto [y, v] = ComplexMonarch::forward(d, x_in.reshape({d.batch, d.n()}), w1_in, w2_in);
      y = y.view(out_shape(x_in, d.m()));
      if (save_v) return {y, v.view(out_shape(x_in, d.mid()))};
      return {y, at::Tensor()};
    }
    const at::ScalarType out_type = x_in.scalar_type();
    const bool upcast = !Kernel::native(out_type);
    const at::Tensor x = upcast ? x_in.to(at::kFloat) : x_in;
    const at::Tensor w1 = (upcast ? w1_in.to(at::kFloat) : w1_in).contiguous();
    at::Tensor w2;
    if (w2_in) w2 = (upcast ? w2_in->to(at::kFloat) : *w2_in).contiguous();

    int64_t xs = 0;
    const at::Tensor x2 = as_rows(x, d.batch, d.n(), &xs);
    at::Tensor y = Kernel::empty({d.batch, d.m()}, x.options());
    at::Tensor v;
    if (save_v) v = Kernel::empty({d.batch, d.mid()}, x.options());

    MonarchForwardParams p;
    p.dims = d;
    p.dtype = to_dtype(x.scalar_type());
    p.x = x2.data_ptr();
    p.x_stride = xs;
    p.w1 = w1.data_ptr();
    p.w2 = w2_in ? w2.data_ptr() : nullptr;
    p.y = y.data_ptr();
    p.v = save_v ? v.data_ptr() : nullptr;
    if (d.batch > 0 && d.m() > 0) Kernel::forward(p, x);

    y = y.view(out_shape(x_in, d.m()));
    if (upcast) y = y.to(out_type);
    if (save_v) {
      v = v.view(out_shape(x_in, d.mid()));
      if (upcast) v = v.to(out_type);
    }
    return {y, v};
  }

  // Backward of both ops.  mask = (dx, dw1, dw2); unrequested gradients come back as empty
  // tensors of shape (0,).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const char* op, const at::Tensor& grad_in,
                                                                 const at::Tensor& x_in, const at::Tensor& w1_in,
                                                                 const at::Tensor* w2_in,
                                                                 const c10::optional<at::Tensor>& v_in,
                                                                 std::array<bool, 3> mask) {
    MonarchDims d = check_inputs(op, x_in, w1_in, w2_in, w2_in ? "w1" : "w");
    const auto expect = out_shape(x_in, d.m());
    TORCH_CHECK_VALUE(grad_in.sizes() == at::IntArrayRef(expect), op, ": grad must have the output shape ",
                      at::IntArrayRef(expect), ", got ", grad_in.sizes());
    TORCH_CHECK(grad_in.scalar_type() == x_in.scalar_type() && grad_in.device() == x_in.device(), op,
                ": grad must match x in dtype and device, got ", grad_in.scalar_type(), " on ", grad_in.device(),
                " vs ", x_in.scalar_type(), " on ", x_in.device());
    const bool have_v = w2_in && v_in.has_value() && v_in->defined();
    if (have_v) {
      TORCH_CHECK_VALUE(v_in->numel() == d.batch * d.mid(), op, ": v must have shape (..., k*q) = (..., ", d.mid(),
                        ") matching x, got ", v_in->sizes());
      TORCH_CHECK(v_in->scalar_type() == x_in.scalar_type() && v_in->device() == x_in.device(), op,
                  ": v must match x in dtype and device");
    }
    if (!w2_in) mask[2] = false;
    check_complex_supported<Kernel>(op, x_in);
    if (at::isComplexType(x_in.scalar_type())) {
      const bool need_x = need_x_for(mask, have_v);
      auto [dx, dw1, dw2] = ComplexMonarch::backward(d, grad_in.reshape({d.batch, d.m()}),
                                                     need_x ? x_in.reshape({d.batch, d.n()}) : at::Tensor(), w1_in,
                                                     w2_in, have_v ? v_in->reshape({d.batch, d.mid()}) : at::Tensor(),
                                                     mask);
      auto fin = [&](const at::Tensor& t, bool wanted, at::IntArrayRef shape) {
        return wanted ? t.reshape(shape) : at::empty({0}, x_in.options());
      };
      return {fin(dx, mask[0], x_in.sizes()), fin(dw1, mask[1], w1_in.sizes()),
              fin(dw2, mask[2], w2_in ? w2_in->sizes() : at::IntArrayRef{})};
    }

    const at::ScalarType out_type = x_in.scalar_type();
    const bool upcast = !Kernel::native(out_type);
    auto cvt = [&](const at::Tensor& t) { return upcast ? t.to(at::kFloat) : t; };
    const at::Tensor x = need_x_for(mask, have_v) ? cvt(x_in) : x_in;
    const at::Tensor w1 = cvt(w1_in).contiguous();
    at::Tensor w2, v;
    if (w2_in) w2 = cvt(*w2_in).contiguous();
    if (have_v) v = cvt(*v_in).reshape({d.batch, d.mid()}).contiguous();

    // x is only read for dw1 and for recomputing v; callers that need neither may pass a
    // zero-stride placeholder (autograd does, to avoid keeping the activation alive).
    const bool need_x = need_x_for(mask, have_v);
    int64_t xs = 0, gs = 0;
    const at::Tensor x2 = need_x ? as_rows(x, d.batch, d.n(), &xs) : at::Tensor();
    const at::Tensor g2 = as_rows(cvt(grad_in), d.batch, d.m(), &gs);

    at::Tensor dx, dw1, dw2;
    if (mask[0]) dx = Kernel::empty({d.batch, d.n()}, w1.options());
    if (mask[1]) dw1 = at::empty({d.k, d.q, d.p}, w1.options());
    if (mask[2]) dw2 = at::empty({d.l, d.s, d.r}, w1.options());

    MonarchBackwardParams p;
    p.dims = d;
    p.dtype = to_dtype(w1.scalar_type());
    p.dy = g2.data_ptr();
    p.dy_stride = gs;
    p.x = need_x ? x2.data_ptr() : nullptr;
    p.x_stride = xs;
    p.w1 = w1.data_ptr();
    p.w2 = w2_in ? w2.data_ptr() : nullptr;
    p.v = have_v ? v.data_ptr() : nullptr;
    p.dx = mask[0] ? dx.data_ptr() : nullptr;
    p.dw1 = mask[1] ? dw1.data_ptr() : nullptr;
    p.dw2 = mask[2] ? dw2.data_ptr() : nullptr;
    if (d.batch == 0 || d.m() == 0 || d.n() == 0) {
      // Degenerate sizes: gradients are exact zeros (no kernel launch needed).
      if (mask[0]) dx.zero_();
      if (mask[1]) dw1.zero_();
      if (mask[2]) dw2.zero_();
    } else if (mask[0] || mask[1] || mask[2]) {
      Kernel::backward(p, w1);
    }

    auto finish = [&](at::Tensor t, bool wanted, at::IntArrayRef shape) {
      if (!wanted) return at::empty({0}, x_in.options());
      t = t.view(shape);
      return upcast ? t.to(out_type) : t;
    };
    return {finish(dx, mask[0], x_in.sizes()), finish(dw1, mask[1], w1_in.sizes()),
            finish(dw2, mask[2], w2_in ? w2_in->sizes() : at::IntArrayRef{})};
  }

  // ---- the registered entry points ----
  static at::Tensor blockdiag_matmul(const at::Tensor& x, const at::Tensor& w) {
    return std::get<0>(forward("blockdiag_matmul", x, w, nullptr, false));
  }
  static std::tuple<at::Tensor, at::Tensor> blockdiag_matmul_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                      const at::Tensor& w, std::array<bool, 2> mask) {
    auto r = backward("blockdiag_matmul_backward", grad, x, w, nullptr, c10::nullopt, {mask[0], mask[1], false});
    return {std::get<0>(r), std::get<1>(r)};
  }
  static at::Tensor monarch_matmul(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2) {
    return std::get<0>(forward("monarch_matmul", x, w1, &w2, false));
  }
  static std::tuple<at::Tensor, at::Tensor> monarch_matmul_fwd(const at::Tensor& x, const at::Tensor& w1,
                                                               const at::Tensor& w2) {
    return forward("monarch_matmul_fwd", x, w1, &w2, true);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> monarch_matmul_backward(
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
      const c10::optional<at::Tensor>& v, std::array<bool, 3> mask) {
    return backward("monarch_matmul_backward", grad, x, w1, &w2, v, mask);
  }
};

// Registers the five entry points for one dispatch key.
template <class Kernel>
void register_monarch_ops(torch::Library& m) {
  using Ops = MonarchOps<Kernel>;
  m.impl("blockdiag_matmul", &Ops::blockdiag_matmul);
  m.impl("blockdiag_matmul_backward", &Ops::blockdiag_matmul_backward);
  m.impl("monarch_matmul", &Ops::monarch_matmul);
  m.impl("monarch_matmul_fwd", &Ops::monarch_matmul_fwd);
  m.impl("monarch_matmul_backward", &Ops::monarch_matmul_backward);
}

}  // namespace torch_impl
}  // namespace structops
