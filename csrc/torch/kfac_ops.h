// The K-FAC ops as ATen orchestrations: device-generic, so the same code runs on CPU (MKL/LAPACK)
// and CUDA (cuBLAS/cuSOLVER).  Maths, layouts and plans: structops/kfac.h.  Registered for CPU in
// kfac_cpu_impl.cpp and for CUDA in kfac_cuda_impl.cpp; fake kernels and the Python API in
// python/structops/ops/kfac.py.
//
//   kfac_factor_update_(factor (D, D), x (T, d), scale, bias, mask (T,)?)  in place, D = d + bias
//   kfac_damped_inverse(factors (L, n, n), damping (L,), method) -> (inverses, status (L,) int8)
//   kfac_eigh(factors (L, n, n), neg_tol) -> (eigenvalues (L, n), eigenvectors (L, n, n), status)
//   kfac_precondition(grads (L, o, i), QS (L, o, o), QA (L, i, i), lam (L, o, i)?, eS (L, o)?,
//                     eA (L, i)?, damping) -> (L, o, i)
// Factors are float32 or float64; x may be any floating dtype (cast chunk-wise).  Status codes:
// structops::KfacStatus.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <vector>

#include "monarch_common.h"  // shape_str
#include "structops/kfac.h"

namespace structops {
namespace torch_impl {
namespace kfac {

using OptTensor = c10::optional<at::Tensor>;

inline void check_factor_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64 (factors accumulate in full precision), got ", t.scalar_type());
}

// Lower triangle mirrored onto the upper one (also inside the diagonal blocks, whose GEMM is not
// guaranteed to round symmetrically).
inline void symmetrize_from_lower(at::Tensor& f) {
  at::Tensor strict_lower = at::tril(f, -1);
  f.tril_();
  f.add_(strict_lower.transpose(-2, -1));
}

// factor += scale * sum_t [x_t; 1][x_t; 1]^T (bias) or scale * sum_t x_t x_t^T, rows with
// mask == 0 skipped (mask multiplies the row: a 0/1 mask).
inline void check_factor_update(const at::Tensor& factor, const at::Tensor& x, bool bias, const OptTensor& mask) {
  const char* op = "kfac_factor_update";
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (tokens, features), got shape ", shape_str(x));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  check_factor_dtype(op, "factor", factor);
  const int64_t T = x.size(0), d = x.size(1), D = d + (bias ? 1 : 0);
  TORCH_CHECK_VALUE(factor.dim() == 2 && factor.size(0) == D && factor.size(1) == D, op,
                    ": factor must be (", D, ", ", D, ") for x with ", d, " features", bias ? " plus the bias column" : "",
                    ", got ", shape_str(factor));
  TORCH_CHECK(factor.device() == x.device(), op, ": factor must be on x's device ", x.device(), ", got ",
              factor.device());
  TORCH_CHECK(factor.is_contiguous(), op, ": factor must be contiguous (it is updated in place)");
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->dim() == 1 && mask->size(0) == T, op, ": mask must be (tokens,) = (", T, ",), got ",
                      shape_str(*mask));
    TORCH_CHECK(mask->device() == x.device(), op, ": mask must be on x's device ", x.device());
  }
}

// The bias row (lower triangle) and corner: column sums of the (already masked) rows, summed in
// the factor dtype, and the number of kept rows (`kept`: the 0/1 mask in the factor dtype, or
// none: every row).
inline void add_bias_terms(at::Tensor& factor, const at::Tensor& x, double scale, const OptTensor& kept) {
  const int64_t d = x.size(1);
  factor.select(0, d).narrow(0, 0, d).add_(at::sum(x, {0}, false, factor.scalar_type()), scale);
  at::Tensor corner = factor.select(0, d).narrow(0, d, 1);
  if (kept.has_value())
    corner.add_(kept->sum().reshape({1}), scale);
  else
    corner.add_(scale * static_cast<double>(x.size(0)));
}

inline at::Tensor& factor_update_(at::Tensor& factor, const at::Tensor& x, double scale, bool bias,
                                  const OptTensor& mask) {
  check_factor_update(factor, x, bias, mask);
  const int64_t T = x.size(0), d = x.size(1);
  if (T == 0 || d == 0) return factor;
  const auto plan = kfac_factor_plan(d, T, factor.element_size());
  const bool needs_copy = x.scalar_type() != factor.scalar_type() || mask.has_value();
  const int64_t chunk = needs_copy ? plan.chunk_tokens : T;
  at::Tensor lower = factor.narrow(0, 0, d).narrow(1, 0, d);
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t tc = std::min(chunk, T - t0);
    at::Tensor xc = x.narrow(0, t0, tc);
    OptTensor mc;
    if (mask.has_value()) mc = mask->narrow(0, t0, tc).to(factor.scalar_type());
    if (needs_copy) {
      xc = xc.to(factor.scalar_type());
      if (mc.has_value()) xc.mul_(mc->unsqueeze(1));
    }
    kfac_for_each_lower_block(d, plan.block, [&](int64_t, int64_t i0, int64_t bi, int64_t j0, int64_t bj) {
      lower.narrow(0, i0, bi).narrow(1, j0, bj).addmm_(xc.narrow(1, i0, bi).t(), xc.narrow(1, j0, bj), 1.0, scale);
    });
    if (bias) add_bias_terms(factor, xc, scale, mc);
  }
  symmetrize_from_lower(factor);
  return factor;
}

// ---- damped inverse ------------------------------------------------------------------------

// Per-factor flag (bool (L,)): the factor has a NaN or Inf entry.  A row sum propagates both
// (inf - inf = NaN) in one vectorised pass; a finite factor whose sum overflows is flagged too,
// which only costs it a float64 retry.
inline at::Tensor not_finite_rows(const at::Tensor& t) {
  return at::logical_not(at::isfinite(t.reshape({t.size(0), -1}).sum(1)));
}

// Status of the factors redone in float64 (idx): FellBack, or Failed where the retry failed too.
inline void mark_retried(at::Tensor& status, const at::Tensor& idx, const at::Tensor& retry_failed) {
  status.index_fill_(0, idx, static_cast<int64_t>(KfacStatus::FellBack));
  status.index_fill_(0, idx.masked_select(retry_failed), static_cast<int64_t>(KfacStatus::Failed));
}

// Cholesky inverse of a batch (lower triangles read), damping (L,) added to the diagonal if given
// (on the copy potrf needs anyway); marks the factors whose potrf failed.
inline at::Tensor cholesky_inverse_batch(const at::Tensor& m, const OptTensor& damping, at::Tensor& failed) {
  at::Tensor md = m;
  if (damping.has_value()) {
    md = m.clone(at::MemoryFormat::Contiguous);
    md.diagonal(0, 1, 2).add_(*damping);  // damping (L, n): one value per diagonal entry
  }
  auto [chol, info] = at::linalg_cholesky_ex(md, /*upper=*/false, /*check_errors=*/false);
  failed.logical_or_(info.ne(0));
  return at::cholesky_inverse(chol).contiguous();  // LAPACK leaves it column-major
}

// inv(M + diag(damping)) for a batch of SPD M (L, n, n) by recursive Schur-complement block
// inversion; only lower-triangle blocks of M are read (B^T = M[n1:, :n1]), so M needs no
// symmetrisation, and the damping rides along to the leaves and the Schur complement instead of
// a damped copy of the whole batch.
inline at::Tensor schur_inverse(const at::Tensor& m, const OptTensor& damping, int64_t leaf, at::Tensor& failed) {
  const int64_t n = m.size(-1);
  if (n <= leaf) return cholesky_inverse_batch(m, damping, failed);
  const int64_t n1 = n / 2, n2 = n - n1;
  const at::Tensor A = m.narrow(1, 0, n1).narrow(2, 0, n1);
  const at::Tensor Bt = m.narrow(1, n1, n2).narrow(2, 0, n1);  // (L, n2, n1) = B^T
  const at::Tensor C = m.narrow(1, n1, n2).narrow(2, n1, n2);
  OptTensor dA, dC;
  if (damping.has_value()) {
    dA = damping->narrow(1, 0, n1);
    dC = damping->narrow(1, n1, n2);
  }
  at::Tensor Ai = schur_inverse(A, dA, leaf, failed);
  at::Tensor AiB = at::bmm(Ai, Bt.transpose(1, 2));           // inv(A) B    (L, n1, n2)
  at::Tensor S = at::baddbmm(C, Bt, AiB, 1.0, -1.0);          // C - B^T inv(A) B
  if (dC.has_value()) S.diagonal(0, 1, 2).add_(*dC);
  at::Tensor Si = schur_inverse(S, c10::nullopt, leaf, failed);
  at::Tensor out = at::empty(m.sizes(), m.options());
  at::Tensor top_right = out.narrow(1, 0, n1).narrow(2, n1, n2);
  at::bmm_out(top_right, AiB, Si);                                          // inv(A) B inv(S)
  at::Tensor top_left = out.narrow(1, 0, n1).narrow(2, 0, n1);
  at::baddbmm_out(top_left, Ai, top_right, AiB.transpose(1, 2), 1.0, 1.0);  // inv(A) + X S X^T
  top_right.neg_();
  out.narrow(1, n1, n2).narrow(2, 0, n1).copy_(top_right.transpose(1, 2));
  out.narrow(1, n1, n2).narrow(2, n1, n2).copy_(Si);
  return out;
}

inline std::tuple<at::Tensor, at::Tensor> damped_inverse(const at::Tensor& factors, const at::Tensor& damping,
                                                         int64_t method) {
  const char* op = "kfac_damped_inverse";
  TORCH_CHECK_VALUE(factors.dim() == 3 && factors.size(1) == factors.size(2), op,
                    ": factors must be (L, n, n), got shape ", shape_str(factors));
  check_factor_dtype(op, "factors", factors);
  const int64_t L = factors.size(0), n = factors.size(1);
  TORCH_CHECK_VALUE(damping.dim() == 1 && damping.size(0) == L, op, ": damping must be (L,) = (", L,
                    ",), got shape ", shape_str(damping));
  TORCH_CHECK(damping.device() == factors.device(), op, ": damping must be on the factors' device");
  TORCH_CHECK_VALUE(method >= 0 && method <= 2, op, ": method must be 0 (auto), 1 (cholesky) or 2 (schur), got ",
                    method);
  at::Tensor status = at::zeros({L}, factors.options().dtype(at::kChar));
  if (L == 0 || n == 0) return {at::empty_like(factors, at::MemoryFormat::Contiguous), status};
  const auto plan = kfac_inverse_plan(n, L, static_cast<KfacInverseMethod>(method), factors.is_cuda());
  // Damping as a (L, n) diagonal, so the recursion can hand each block its part.
  const at::Tensor diag = damping.to(factors.scalar_type()).unsqueeze(1).expand({L, n});
  // No separate input check: a non-finite factor gives a non-finite result, which is flagged,
  // retried in float64 and reported as failed (saves a pass over the batch).
  at::Tensor failed = at::zeros({L}, factors.options().dtype(at::kBool));
  at::Tensor inv = plan.method == KfacInverseMethod::Schur ? schur_inverse(factors, diag, plan.leaf, failed)
                                                           : cholesky_inverse_batch(factors, diag, failed);
  failed.logical_or_(not_finite_rows(inv));
  if (!failed.any().item<bool>()) return {inv, status};  // one host sync per call
  // Redo the failed factors in float64 (already float64: nothing better to try).
  const at::Tensor idx = failed.nonzero().squeeze(1);
  at::Tensor retry_failed = at::zeros({idx.size(0)}, status.options().dtype(at::kBool));
  if (factors.scalar_type() != at::kDouble) {
    at::Tensor m64 = at::index_select(factors, 0, idx).to(at::kDouble);
    at::Tensor d64 = at::index_select(diag, 0, idx).to(at::kDouble);
    at::Tensor f64 = at::zeros({idx.size(0)}, status.options().dtype(at::kBool));
    at::Tensor inv64 = cholesky_inverse_batch(m64, d64, f64);
    f64.logical_or_(not_finite_rows(inv64));
    retry_failed.logical_or_(f64);
    inv.index_copy_(0, idx, inv64.to(inv.scalar_type()));
    retry_failed.logical_or_(not_finite_rows(at::index_select(inv, 0, idx)));  // fp32 overflow
  } else {
    retry_failed.fill_(true);
  }
  mark_retried(status, idx, retry_failed);
  return {inv, status};
}

// ---- eigendecomposition --------------------------------------------------------------------

// (eigenvalues, eigenvectors) of a batch, or nothing if LAPACK/cuSOLVER reported an error.
inline bool try_eigh(const at::Tensor& m, at::Tensor& w, at::Tensor& v) {
  try {
    std::tie(w, v) = at::linalg_eigh(m, "L");
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

// Bad result: not finite, or an eigenvalue below -neg_tol * max|eigenvalue|.
inline at::Tensor bad_spectrum(const at::Tensor& w, const at::Tensor& v, double neg_tol) {
  at::Tensor bad = at::logical_or(not_finite_rows(w), not_finite_rows(v));
  const at::Tensor wmin = std::get<0>(w.min(1));
  const at::Tensor wabs = std::get<0>(w.abs().max(1));
  return bad.logical_or_(wmin.lt(wabs.mul(-neg_tol)));
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> eigh(const at::Tensor& factors, double neg_tol) {
  const char* op = "kfac_eigh";
  TORCH_CHECK_VALUE(factors.dim() == 3 && factors.size(1) == factors.size(2), op,
                    ": factors must be (L, n, n), got shape ", shape_str(factors));
  check_factor_dtype(op, "factors", factors);
  const int64_t L = factors.size(0), n = factors.size(1);
  if (neg_tol < 0) {
    const double eps = factors.scalar_type() == at::kDouble ? 2.220446049250313e-16 : 1.1920928955078125e-07;
    neg_tol = kfac_default_neg_tol(n, eps);
  }
  at::Tensor status = at::zeros({L}, factors.options().dtype(at::kChar));
  at::Tensor w = at::empty({L, n}, factors.options());
  at::Tensor v = at::empty({L, n, n}, factors.options());
  if (L == 0 || n == 0) return {w, v, status};
  at::Tensor m = factors.contiguous();
  // A non-finite factor yields a non-finite (or thrown) solve: flagged below, no input pass.
  at::Tensor failed = at::zeros({L}, factors.options().dtype(at::kBool));
  // CPU: factors in parallel over the intra-op threads (LAPACK is single-threaded inside a
  // parallel region, and at n ~ 256 one factor per core beats all cores on one factor).  CUDA:
  // one batched call.  A chunk whose solver throws is retried factor by factor.
  const int64_t grain = m.is_cuda() ? L : std::max<int64_t>(1, (L + at::get_num_threads() - 1) / at::get_num_threads());
  std::vector<uint8_t> chunk_threw(static_cast<size_t>(L), 0);
  auto solve_range = [&](int64_t b, int64_t e) {
    at::Tensor wc, vc;
    if (try_eigh(m.narrow(0, b, e - b), wc, vc)) {
      w.narrow(0, b, e - b).copy_(wc);
      v.narrow(0, b, e - b).copy_(vc);
    } else {
      for (int64_t k = b; k < e; ++k) chunk_threw[k] = 1;
    }
  };
  if (m.is_cuda()) {
    solve_range(0, L);
  } else {
    at::parallel_for(0, L, grain, solve_range);
  }
  for (int64_t k = 0; k < L; ++k) {
    if (!chunk_threw[k]) continue;
    at::Tensor wc, vc;
    if (try_eigh(m.narrow(0, k, 1), wc, vc)) {
      w.narrow(0, k, 1).copy_(wc);
      v.narrow(0, k, 1).copy_(vc);
    } else {
      failed.narrow(0, k, 1).fill_(true);
    }
  }
  failed.logical_or_(bad_spectrum(w, v, neg_tol));
  if (!failed.any().item<bool>()) return {w, v, status};
  const at::Tensor idx = failed.nonzero().squeeze(1);
  at::Tensor retry_failed = at::zeros({idx.size(0)}, status.options().dtype(at::kBool));
  if (m.scalar_type() != at::kDouble) {
    at::Tensor m64 = at::index_select(m, 0, idx).to(at::kDouble);
    at::Tensor w64, v64;
    if (try_eigh(m64, w64, v64)) {
      // The float32 factor's own rounding bounds how negative its exact spectrum may be: the
      // float64 result is held to that, not to a tighter user tolerance it cannot meet.
      const double eps_in = m.scalar_type() == at::kFloat ? 1.1920928955078125e-07 : 2.220446049250313e-16;
      retry_failed.logical_or_(bad_spectrum(w64, v64, std::max(neg_tol, kfac_default_neg_tol(n, eps_in))));
      w.index_copy_(0, idx, w64.to(w.scalar_type()));
      v.index_copy_(0, idx, v64.to(v.scalar_type()));
    } else {
      retry_failed.fill_(true);
    }
  } else {
    retry_failed.fill_(true);
  }
  mark_retried(status, idx, retry_failed);
  return {w, v, status};
}

// ---- preconditioning -----------------------------------------------------------------------

// Q_S ((Q_S^T G Q_A) / (Lambda + damping)) Q_A^T for a batch of same-shape layers, with
// Lambda = lam (EK-FAC) or eS eA^T (K-FAC).  Two (L, o, i) work buffers, the division fused in
// place; four batched GEMMs.
inline at::Tensor precondition(const at::Tensor& grads, const at::Tensor& QS, const at::Tensor& QA,
                               const OptTensor& lam, const OptTensor& eS, const OptTensor& eA, double damping) {
  const char* op = "kfac_precondition";
  TORCH_CHECK_VALUE(grads.dim() == 3, op, ": grads must be (L, out, in), got shape ", shape_str(grads));
  const int64_t L = grads.size(0), o = grads.size(1), i = grads.size(2);
  TORCH_CHECK(at::isFloatingType(grads.scalar_type()), op, ": grads must be floating point");
  TORCH_CHECK_VALUE(QS.dim() == 3 && QS.size(0) == L && QS.size(1) == o && QS.size(2) == o, op,
                    ": QS must be (L, out, out) = (", L, ", ", o, ", ", o, "), got ", shape_str(QS));
  TORCH_CHECK_VALUE(QA.dim() == 3 && QA.size(0) == L && QA.size(1) == i && QA.size(2) == i, op,
                    ": QA must be (L, in, in) = (", L, ", ", i, ", ", i, "), got ", shape_str(QA));
  TORCH_CHECK_VALUE(lam.has_value() != (eS.has_value() || eA.has_value()), op,
                    ": pass either lam (EK-FAC eigenvalues, (L, out, in)) or eS and eA (K-FAC), not both");
  if (lam.has_value()) {
    TORCH_CHECK_VALUE(lam->dim() == 3 && lam->size(0) == L && lam->size(1) == o && lam->size(2) == i, op,
                      ": lam must be (L, out, in) = (", L, ", ", o, ", ", i, "), got ", shape_str(*lam));
  } else {
    TORCH_CHECK_VALUE(eS.has_value() && eA.has_value(), op, ": K-FAC preconditioning needs both eS and eA");
    TORCH_CHECK_VALUE(eS->dim() == 2 && eS->size(0) == L && eS->size(1) == o, op, ": eS must be (L, out) = (", L,
                      ", ", o, "), got ", shape_str(*eS));
    TORCH_CHECK_VALUE(eA->dim() == 2 && eA->size(0) == L && eA->size(1) == i, op, ": eA must be (L, in) = (", L,
                      ", ", i, "), got ", shape_str(*eA));
  }
  for (const at::Tensor* t : {&QS, &QA}) {
    TORCH_CHECK(t->scalar_type() == grads.scalar_type() && t->device() == grads.device(), op,
                ": QS and QA must have grads' dtype and device (", grads.scalar_type(), ", ", grads.device(), ")");
  }
  for (const OptTensor* t : {&lam, &eS, &eA}) {
    if (t->has_value())
      TORCH_CHECK((*t)->scalar_type() == grads.scalar_type() && (*t)->device() == grads.device(), op,
                  ": eigenvalues must have grads' dtype and device (", grads.scalar_type(), ", ", grads.device(), ")");
  }
  at::Tensor t1 = at::bmm(QS.transpose(1, 2), grads);  // (L, o, i)
  at::Tensor t2 = at::bmm(t1, QA);                     // rotated gradient
  if (lam.has_value()) {
    at::add_out(t1, *lam, at::scalar_tensor(damping, lam->options()));
  } else {
    t1.fill_(damping);
    t1.addcmul_(eS->unsqueeze(2), eA->unsqueeze(1));
  }
  t2.div_(t1);
  at::bmm_out(t1, QS, t2);
  at::bmm_out(t2, t1, QA.transpose(1, 2));
  return t2;
}

// with_factor_update = false: the backend registers its own kfac_factor_update_ (CUDA: 16-bit
// activations on the GEMM engine, kfac_cuda_impl.cpp).
inline void register_kfac_ops(torch::Library& m, bool with_factor_update = true) {
  if (with_factor_update)
    m.impl("kfac_factor_update_", [](at::Tensor factor, const at::Tensor& x, double scale, bool bias,
                                     const OptTensor& mask) -> at::Tensor {
      factor_update_(factor, x, scale, bias, mask);
      return factor;
    });
  m.impl("kfac_damped_inverse", &damped_inverse);
  m.impl("kfac_eigh", &eigh);
  m.impl("kfac_precondition", &precondition);
}

}  // namespace kfac
}  // namespace torch_impl
}  // namespace structops
