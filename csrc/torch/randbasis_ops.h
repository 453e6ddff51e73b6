// The random-basis ops as ATen GEMM orchestrations (RandLoRA, VeRA): device-generic, so the same
// code runs on CPU (MKL/oneDNN) and CUDA (cuBLAS).  Every FLOP of this family is a GEMM with a
// plain layout; the structure lives in which products are formed, in what order and what is
// kept: see structops/randbasis.h for the maths, the two strategies and the cost model.
//
// Memory contract (what the autograd formula in ops/randbasis.py saves): RandLoRA saves only x
// (in its own dtype) and references to the parameters/buffers; the scaled basis Ahat (R, d_min)
// is rebuilt in every call and never saved.  VeRA saves h = x A^T (tokens, r) and, only for a
// trainable base weight, x; never the (tokens, out) adapter output peft keeps.  The merged
// strategy materialises W_eff one panel of `panel_rows` output rows at a time (≈ 2 MiB).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "linear_base.h"
#include "randbasis_common.h"

namespace structops {
namespace torch_impl {
namespace randbasis {

// Ahat (R, d_min) in the compute dtype: Ahat[k*n + b, j] = lam[k, b] * A[k, j] * gamma[b, j]
// (evaluated in lam's dtype, peft's order (lam * A) * gamma, then cast).
inline at::Tensor scaled_basis(const at::Tensor& A, const at::Tensor& lam, const at::Tensor& gamma,
                               at::ScalarType compute) {
  const int64_t r = lam.size(0), n = lam.size(1), d = gamma.size(1);
  at::Tensor ahat = (lam.unsqueeze(2) * A.to(lam.scalar_type()).unsqueeze(1)) * gamma.unsqueeze(0);
  return ahat.reshape({r * n, d}).to(compute);
}

// Gradients of lam and gamma from dAhat (R, d_min), in lam's dtype.
inline std::pair<at::Tensor, at::Tensor> basis_grads(const at::Tensor& dahat, const at::Tensor& A,
                                                     const at::Tensor& lam, const at::Tensor& gamma) {
  const int64_t r = lam.size(0), n = lam.size(1), d = gamma.size(1);
  const at::Tensor g3 = dahat.to(lam.scalar_type()).reshape({r, n, d});
  const at::Tensor ga = g3 * A.to(lam.scalar_type()).unsqueeze(1);  // (r, n, d)
  at::Tensor dlam = (ga * gamma.unsqueeze(0)).sum(2);
  at::Tensor dgamma = (ga * lam.unsqueeze(2)).sum(0);
  return {dlam, dgamma};
}

// (L, Rm) with dW = L Rm, L (out, R), Rm (R, in): (Bbar, Ahat) when the basis is on the input
// side (in == d_min), else (Ahat^T, Bbar^T).  Views, no copies.
inline std::pair<at::Tensor, at::Tensor> factors(const RandBasisShape& s, const at::Tensor& ahat, const at::Tensor& B) {
  if (s.basis_on_input) return {B, ahat};
  return {ahat.t(), B.t()};
}

// The base weight is optional (linear_base.h): without it the op is the adapter branch alone,
// y = bias + x dW^T.

// wp = W0[p0:p0+pw] + alpha * L[p0:p0+pw] Rm (no W0: alpha * L_p Rm).
inline void build_panel(at::Tensor& wp, const OptTensor& W0, int64_t p0, int64_t pw, const at::Tensor& L,
                        const at::Tensor& Rm, double alpha) {
  if (W0.has_value()) {
    at::addmm_out(wp, W0->narrow(0, p0, pw), L.narrow(0, p0, pw), Rm, 1.0, alpha);
  } else {
    at::mm_out(wp, L.narrow(0, p0, pw), Rm);
    if (alpha != 1.0) wp.mul_(alpha);
  }
}

// y[:, p] = x W_p^T (+ bias[p]) with W_p = W0[p] + alpha * L[p] Rm for each panel p of output
// rows; `buf` holds one panel.
inline void merged_forward(at::Tensor& y, const at::Tensor& x, const OptTensor& W0, const OptTensor& bias,
                           const at::Tensor& L, const at::Tensor& Rm, double alpha, int64_t panel) {
  const int64_t out = y.size(1), in = x.size(1);
  at::Tensor buf = at::empty({std::min(panel, out), in}, x.options());
  for (int64_t p0 = 0; p0 < out; p0 += panel) {
    const int64_t pw = std::min(panel, out - p0);
    at::Tensor wp = buf.narrow(0, 0, pw);
    build_panel(wp, W0, p0, pw, L, Rm, alpha);
    at::Tensor yp = y.narrow(1, p0, pw);
    if (bias.has_value())
      at::addmm_out(yp, bias->narrow(0, p0, pw), x, wp.t());
    else
      at::mm_out(yp, x, wp.t());
  }
}

// Merged backward, one panel of output rows at a time: grad_x += g_p W_p (W_p rebuilt), G_p =
// g_p^T x (written into grad_weight when requested), and the projection of G_p onto the trained
// factor: `project(p0, pw, G_p)`.
template <class Project>
void merged_backward(const at::Tensor& g, const at::Tensor& x, const OptTensor& W0, const at::Tensor& L,
                     const at::Tensor& Rm, double alpha, int64_t panel, at::Tensor* grad_x, at::Tensor* grad_w,
                     bool need_g_panels, Project&& project) {
  const int64_t out = g.size(1), in = x.size(1);
  const int64_t pmax = std::min(panel, out);
  at::Tensor wbuf = grad_x ? at::empty({pmax, in}, x.options()) : at::Tensor();
  at::Tensor gbuf = (need_g_panels && !grad_w) ? at::empty({pmax, in}, x.options()) : at::Tensor();
  for (int64_t p0 = 0; p0 < out; p0 += panel) {
    const int64_t pw = std::min(panel, out - p0);
    const at::Tensor gp = g.narrow(1, p0, pw);  // (T, pw), strided
    if (grad_x) {
      at::Tensor wp = wbuf.narrow(0, 0, pw);
      build_panel(wp, W0, p0, pw, L, Rm, alpha);
      grad_x->addmm_(gp, wp);
    }
    if (need_g_panels || grad_w) {
      at::Tensor Gp = grad_w ? grad_w->narrow(0, p0, pw) : gbuf.narrow(0, 0, pw);
      at::mm_out(Gp, gp.t(), x);
      if (need_g_panels) project(p0, pw, Gp);
    }
  }
}

// grad_x = g W_eff from rebuilt panels (no weight-side products).
inline at::Tensor merged_grad_x(const at::Tensor& g, const at::Tensor& x, const OptTensor& W0, const at::Tensor& L,
                                const at::Tensor& Rm, double alpha, int64_t panel) {
  at::Tensor grad_x = at::zeros({g.size(0), x.size(1)}, g.options());
  merged_backward(g, x, W0, L, Rm, alpha, panel, &grad_x, nullptr, false, [](int64_t, int64_t, const at::Tensor&) {});
  return grad_x;
}

inline at::Tensor empty_like_none(const at::Tensor& like) { return at::empty({0}, like.options()); }

// ---------------------------------------------------------------------------------------------
// RandLoRA
// ---------------------------------------------------------------------------------------------
inline std::tuple<at::Tensor, at::Tensor> randlora_forward(const at::Tensor& x, const OptTensor& W0,
                                                           const c10::optional<at::Tensor>& bias, const at::Tensor& A,
                                                           const at::Tensor& B, const at::Tensor& lam,
                                                           const at::Tensor& gamma, double scaling, int64_t strategy,
                                                           bool save_h) {
  const char* op = "randlora_linear";
  const RandBasisShape s = check_randlora(op, x, W0, bias, A, B, lam, gamma);
  TORCH_CHECK_VALUE(!save_h || !s.basis_on_input, op,
                    ": save_h is only valid when in_features > out_features (h = x Bbar replaces x), got in = ", s.in,
                    ", out = ", s.out);
  const RandBasisStrategy req = to_strategy(op, strategy);
  RandBasisGrads want;
  want.from_h = save_h;
  const RandBasisPlan plan = plan_or_throw(op, [&] {
    return randlora_plan(s, want, req, static_cast<int64_t>(x.element_size()));
  });
  const at::Tensor ahat = scaled_basis(A, lam, gamma, x.scalar_type());
  const auto [L, Rm] = factors(s, ahat, B);
  if (plan.forward == RandBasisStrategy::Merged) {
    at::Tensor y = at::empty({s.tokens, s.out}, x.options());
    merged_forward(y, x, W0, bias, L, Rm, scaling, plan.panel_rows);
    return {y, save_h ? at::mm(x, Rm.t()) : empty_like_none(x)};
  }
  at::Tensor y = base_forward(x, W0, bias, s.out);
  const at::Tensor h = at::mm(x, Rm.t());  // (T, R)
  y.addmm_(h, L.t(), 1.0, scaling);
  return {y, save_h ? h : empty_like_none(x)};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> randlora_backward(
    const at::Tensor& g_in, const at::Tensor& x, const at::Tensor& h_saved, const OptTensor& W0, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& lam, const at::Tensor& gamma, double scaling, int64_t strategy,
    std::array<bool, 4> mask) {
  const char* op = "randlora_linear_backward";
  const RandBasisShape s = check_randlora(op, x, W0, c10::nullopt, A, B, lam, gamma);
  TORCH_CHECK_VALUE(!mask[1] || W0.has_value(), op, ": a weight gradient was requested without a weight");
  const bool from_h = h_saved.numel() > 0 || (h_saved.dim() == 2 && s.tokens == 0);
  if (from_h) {
    TORCH_CHECK_VALUE(!s.basis_on_input, op, ": h replaces x only when in_features > out_features");
    TORCH_CHECK_VALUE(h_saved.dim() == 2 && h_saved.size(0) == s.tokens && h_saved.size(1) == s.rank, op,
                      ": h must have shape (", s.tokens, ", ", s.rank, "), got ", shape_str(h_saved));
    TORCH_CHECK(h_saved.scalar_type() == x.scalar_type() && h_saved.device() == x.device(), op,
                ": h must have x's device and dtype");
  }
  TORCH_CHECK_VALUE(g_in.dim() == 2 && g_in.size(0) == s.tokens && g_in.size(1) == s.out, op,
                    ": grad must have shape (", s.tokens, ", ", s.out, "), got ", shape_str(g_in));
  TORCH_CHECK(g_in.scalar_type() == x.scalar_type() && g_in.device() == x.device(), op,
              ": grad must have x's device and dtype");
  const at::Tensor g = g_in;
  const bool need_adapter = mask[2] || mask[3];
  RandBasisGrads want{mask[0], mask[1], need_adapter};
  want.from_h = from_h;
  const RandBasisPlan plan = plan_or_throw(op, [&] {
    return randlora_plan(s, want, to_strategy(op, strategy), static_cast<int64_t>(x.element_size()));
  });
  const at::Tensor ahat = scaled_basis(A, lam, gamma, x.scalar_type());
  const auto [L, Rm] = factors(s, ahat, B);
  at::Tensor grad_x, grad_w, dahat;
  if (from_h) {
    // the basis is on the output side, W0 frozen: dL = s g^T h, i.e. dAhat = s h^T g (R, out)
    if (mask[0]) {
      if (plan.backward == RandBasisStrategy::Factored) {
        grad_x = base_grad_x(g, W0, s.in);
        grad_x.addmm_(at::mm(g, L), Rm, 1.0, scaling);
      } else {
        grad_x = merged_grad_x(g, x, W0, L, Rm, scaling, plan.panel_rows);
      }
    }
    if (need_adapter) dahat = at::mm(h_saved.t(), g).mul_(scaling);
    if (mask[1]) grad_w = at::mm(g.t(), x);  // x is saved too when the weight is trained
  } else if (plan.backward == RandBasisStrategy::Merged) {
    if (mask[0]) grad_x = at::zeros({s.tokens, s.in}, x.options());
    if (mask[1]) grad_w = at::empty({s.out, s.in}, x.options());
    // trained factor: Rm = Ahat (R, in) accumulates L_p^T G_p; L = Ahat^T gets rows G_p Rm^T.
    at::Tensor dtrained = need_adapter ? (s.basis_on_input ? at::zeros({s.rank, s.in}, x.options())
                                                            : at::empty({s.out, s.rank}, x.options()))
                                       : at::Tensor();
    merged_backward(g, x, W0, L, Rm, scaling, plan.panel_rows, mask[0] ? &grad_x : nullptr,
                    mask[1] ? &grad_w : nullptr, need_adapter, [&](int64_t p0, int64_t pw, const at::Tensor& Gp) {
                      if (s.basis_on_input) {
                        dtrained.addmm_(L.narrow(0, p0, pw).t(), Gp, 1.0, scaling);
                      } else {
                        at::Tensor rows = dtrained.narrow(0, p0, pw);
                        at::mm_out(rows, Gp, Rm.t()).mul_(scaling);
                      }
                    });
    if (need_adapter) dahat = s.basis_on_input ? dtrained : dtrained.t();
  } else {
    const bool mixed = plan.backward == RandBasisStrategy::Mixed;
    // mixed: grad_x from rebuilt W_eff panels; the adapter part below runs factored
    if (mixed) grad_x = merged_grad_x(g, x, W0, L, Rm, scaling, plan.panel_rows);
    if (s.basis_on_input) {
      // L = Bbar frozen: u = g L (T, R); grad_x = g W0 + s u Rm; dAhat = s u^T x
      const at::Tensor u = need_adapter || !mixed ? at::mm(g, L) : at::Tensor();
      if (mask[0] && !mixed) {
        grad_x = base_grad_x(g, W0, s.in);
        grad_x.addmm_(u, Rm, 1.0, scaling);
      }
      if (need_adapter) dahat = at::mm(u.t(), x).mul_(scaling);
    } else {
      // L = Ahat^T trained: dL = s g^T (x Rm^T); grad_x = g W0 + s (g L) Rm
      if (need_adapter) {
        const at::Tensor h = at::mm(x, Rm.t());
        dahat = at::mm(h.t(), g).mul_(scaling);  // = dL^T (R, out)
      }
      if (mask[0] && !mixed) {
        grad_x = base_grad_x(g, W0, s.in);
        grad_x.addmm_(at::mm(g, L), Rm, 1.0, scaling);
      }
    }
    if (mask[1]) grad_w = at::mm(g.t(), x);
  }
  at::Tensor dlam, dgamma;
  if (need_adapter) std::tie(dlam, dgamma) = basis_grads(dahat, A, lam, gamma);
  return {mask[0] ? grad_x : empty_like_none(x), mask[1] ? grad_w : empty_like_none(x),
          mask[2] ? dlam : empty_like_none(lam), mask[3] ? dgamma : empty_like_none(lam)};
}

// ---------------------------------------------------------------------------------------------
// VeRA
// ---------------------------------------------------------------------------------------------
// (lambda_b * B) (out, r) and (lambda_d * A) (r, in) in the compute dtype.
inline std::pair<at::Tensor, at::Tensor> vera_scaled(const at::Tensor& A, const at::Tensor& B, const at::Tensor& ld,
                                                     const at::Tensor& lb, at::ScalarType compute) {
  const at::ScalarType v = ld.scalar_type();
  return {(lb.unsqueeze(1) * B.to(v)).to(compute), (ld.unsqueeze(1) * A.to(v)).to(compute)};
}

inline std::tuple<at::Tensor, at::Tensor> vera_forward(const at::Tensor& x, const OptTensor& W0,
                                                       const c10::optional<at::Tensor>& bias, const at::Tensor& A,
                                                       const at::Tensor& B, const at::Tensor& ld, const at::Tensor& lb,
                                                       int64_t strategy, bool save_h) {
  const char* op = "vera_linear";
  const RandBasisShape s = check_vera(op, x, W0, bias, A, B, ld, lb);
  const RandBasisPlan plan = plan_or_throw(op, [&] {
    return vera_plan(s, RandBasisGrads{}, to_strategy(op, strategy), static_cast<int64_t>(x.element_size()));
  });
  const auto [Bs, Ad] = vera_scaled(A, B, ld, lb, x.scalar_type());
  if (plan.forward == RandBasisStrategy::Merged) {
    at::Tensor y = at::empty({s.tokens, s.out}, x.options());
    merged_forward(y, x, W0, bias, Bs, Ad, 1.0, plan.panel_rows);
    return {y, save_h ? at::mm(x, A.t()) : empty_like_none(x)};
  }
  at::Tensor y = base_forward(x, W0, bias, s.out);
  const at::Tensor h = at::mm(x, A.t());                      // (T, r)
  y.addmm_(h * ld.to(x.scalar_type()), Bs.t());
  return {y, save_h ? h : empty_like_none(x)};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vera_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& h, const OptTensor& W0, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& ld, const at::Tensor& lb, int64_t strategy, std::array<bool, 4> mask) {
  const char* op = "vera_linear_backward";
  TORCH_CHECK_VALUE(g.dim() == 2 && g.size(1) == B.size(0), op, ": grad must have shape (tokens, ", B.size(0),
                    "), got ", shape_str(g));
  const bool need_adapter = mask[2] || mask[3];
  // x is read only for grad_weight; the autograd formula passes an expanded zero otherwise.
  const RandBasisShape s = check_vera(op, x, W0, c10::nullopt, A, B, ld, lb);
  TORCH_CHECK_VALUE(!mask[1] || W0.has_value(), op, ": a weight gradient was requested without a weight");
  TORCH_CHECK_VALUE(g.size(0) == s.tokens, op, ": grad.shape[0] must equal x.shape[0] = ", s.tokens);
  if (need_adapter)
    TORCH_CHECK_VALUE(h.dim() == 2 && h.size(0) == s.tokens && h.size(1) == s.rank, op, ": h must have shape (",
                      s.tokens, ", ", s.rank, "), got ", shape_str(h));
  const RandBasisPlan plan = plan_or_throw(op, [&] {
    return vera_plan(s, RandBasisGrads{mask[0], mask[1], need_adapter}, to_strategy(op, strategy),
                     static_cast<int64_t>(g.element_size()));
  });
  const auto [Bs, Ad] = vera_scaled(A, B, ld, lb, g.scalar_type());
  at::Tensor grad_x, grad_w, dld, dlb;
  if (mask[0]) {
    if (plan.backward == RandBasisStrategy::Merged) {
      grad_x = merged_grad_x(g, x, W0, Bs, Ad, 1.0, plan.panel_rows);
    } else {
      grad_x = base_grad_x(g, W0, s.in);
      grad_x.addmm_(at::mm(g, Bs), Ad);
    }
  }
  if (mask[1]) grad_w = at::mm(g.t(), x);
  if (need_adapter) {
    // M = g^T h (out, r); MB = M * B: grad lambda_b = MB lambda_d, grad lambda_d = MB^T lambda_b
    const at::ScalarType v = ld.scalar_type();
    const at::Tensor MB = at::mm(g.t(), h).to(v) * B.to(v);
    dlb = at::mv(MB, ld);
    dld = at::mv(MB.t(), lb);
  }
  return {mask[0] ? grad_x : empty_like_none(g), mask[1] ? grad_w : empty_like_none(g),
          mask[2] ? dld : empty_like_none(ld), mask[3] ? dlb : empty_like_none(ld)};
}

inline std::tuple<int64_t, int64_t, int64_t, double, double> plan_op(c10::string_view method, int64_t tokens, int64_t in,
                                                                      int64_t out, int64_t rank, int64_t strategy,
                                                                      std::array<bool, 4> grads, int64_t elem_bytes) {
  const char* op = "randbasis_plan";
  RandBasisShape s;
  s.tokens = tokens;
  s.in = in;
  s.out = out;
  s.rank = rank;
  s.basis_on_input = in <= out;
  const bool vera = method == "vera";
  RandBasisGrads g{grads[0], grads[1], grads[2]};
  g.from_h = grads[3];
  TORCH_CHECK_VALUE(!g.from_h || (!vera && in > out), op, ": from_h applies to RandLoRA with in_features > out_features");
  TORCH_CHECK_VALUE(vera || method == "randlora", op, ": method must be 'randlora' or 'vera', got '", method, "'");
  const RandBasisPlan p = plan_or_throw(op, [&] {
    return vera ? vera_plan(s, g, to_strategy(op, strategy), elem_bytes)
                : randlora_plan(s, g, to_strategy(op, strategy), elem_bytes);
  });
  return {static_cast<int64_t>(p.forward), static_cast<int64_t>(p.backward), p.panel_rows, p.forward_macs,
          p.backward_macs};
}

}  // namespace randbasis

// Registers the four ops for one dispatch key (CPU or CUDA): the orchestration is the same.
inline void register_randbasis_ops(torch::Library& m) {
  m.impl("randlora_linear", &randbasis::randlora_forward);
  m.impl("randlora_linear_backward", &randbasis::randlora_backward);
  m.impl("vera_linear", &randbasis::vera_forward);
  m.impl("vera_linear_backward", &randbasis::vera_backward);
}

}  // namespace torch_impl
}  // namespace structops
