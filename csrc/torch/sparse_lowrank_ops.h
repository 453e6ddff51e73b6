// The SLTrain linear as ATen GEMMs (low-rank and dense parts) plus the torch-free sparse kernels
// (csrc/cpu/sparse_lowrank_cpu_kernels.inc) — structops/sparse_lowrank.h has the maths.
//
// Factored plan (the only one so far): y = x W0^T + bias + s (x A^T) B^T + x S^T;
// backward u = g B, grad_x = g W0 + s u A + g S, grad_A = s u^T x, grad_B = s g^T (x A^T),
// grad_values = (g^T x)[support] by the sampled kernel.  Neither W = W0 + s B A + S nor the dense
// weight gradient G = g^T x is ever formed (unless W0 itself is trained: then grad_W0 = G).
// Autograd saves x and references to the parameters only.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "cpu_executor.h"
#include "linear_base.h"
#include "monarch_common.h"  // shape_str, to_dtype
#include "structops/sparse_lowrank.h"

namespace structops {
namespace torch_impl {
namespace sparse_lowrank {

struct Shape {
  int64_t tokens, in, out, rank, nnz;
};

inline Shape check(const char* op, const at::Tensor& x, const at::Tensor& B, const at::Tensor& A,
                   const at::Tensor& values, const at::Tensor& indices, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& W0) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (tokens, in_features), got ", shape_str(x));
  TORCH_CHECK_VALUE(B.dim() == 2 && A.dim() == 2 && B.size(1) == A.size(0), op,
                    ": B must be (out, r) and A (r, in) with the same r, got B ", shape_str(B), ", A ", shape_str(A));
  TORCH_CHECK_VALUE(A.size(1) == x.size(1), op, ": A.shape[1] (in_features) must equal x.shape[1] = ", x.size(1),
                    ", got A ", shape_str(A));
  Shape s{x.size(0), x.size(1), B.size(0), B.size(1), values.numel()};
  TORCH_CHECK_VALUE(values.dim() == 1 && indices.dim() == 1 && indices.numel() == values.numel(), op,
                    ": values and indices must be 1-D of the same length (nnz), got values ", shape_str(values),
                    ", indices ", shape_str(indices));
  TORCH_CHECK(indices.scalar_type() == at::kInt, op, ": indices must be int32 flat row-major positions, got ",
              indices.scalar_type());
  TORCH_CHECK(s.out * s.in <= INT32_MAX, op, ": out * in = ", s.out * s.in, " exceeds int32 flat indices");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating-point x, got ", x.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"B", &B}, {"A", &A}, {"values", &values}}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op, ": ", name,
                " must have x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ", t->scalar_type(),
                ", ", t->device());
  }
  TORCH_CHECK(indices.device() == x.device(), op, ": indices must be on x's device");
  if (bias.has_value())
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == s.out && bias->scalar_type() == x.scalar_type(), op,
                      ": bias must be (", s.out, ",) with x's dtype, got ", shape_str(*bias));
  if (W0.has_value())
    TORCH_CHECK_VALUE(W0->dim() == 2 && W0->size(0) == s.out && W0->size(1) == s.in &&
                          W0->scalar_type() == x.scalar_type(),
                      op, ": base_weight must be (", s.out, ", ", s.in, ") with x's dtype, got ", shape_str(*W0));
  return s;
}

// CSR of the support (validated).
struct Csr {
  at::Tensor rowptr, col;
  SparseSupport view(const Shape& s) const {
    SparseSupport v;
    v.rows = s.out;
    v.cols = s.in;
    v.nnz = s.nnz;
    v.rowptr = rowptr.data_ptr<int32_t>();
    v.col = col.data_ptr<int32_t>();
    return v;
  }
};

inline Csr csr(const char* op, const at::Tensor& indices, const Shape& s) {
  const at::Tensor idx = indices.contiguous();
  Csr c{at::empty({s.out + 1}, idx.options()), at::empty({s.nnz}, idx.options())};
  const int64_t bad = sparse_support_from_flat(idx.data_ptr<int32_t>(), s.nnz, s.out, s.in,
                                               c.rowptr.data_ptr<int32_t>(), c.col.data_ptr<int32_t>());
  TORCH_CHECK_VALUE(bad < 0, op, ": indices must be strictly increasing flat row-major positions in [0, out*in) = [0, ",
                    s.out * s.in, "); indices[", bad, "] = ", bad >= 0 ? idx.data_ptr<int32_t>()[bad] : 0,
                    bad > 0 ? " is out of range or not greater than the previous one" : " is out of range");
  return c;
}

inline at::Tensor rows_contig(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// ---------------------------------------------------------------------------------------------
// The ATen sparse engine (CUDA's path — cuSPARSE SpMM / SDDMM through ATen's CSR ops — and a CPU
// alternative selected with STRUCTOPS_SPARSE_KERNEL=aten, so the same code is tested here):
// validation on the device, one host sync for the verdict.
// ---------------------------------------------------------------------------------------------
struct AtenSupport {
  at::Tensor S;   // CSR (out, in) with the values
  at::Tensor St;  // CSR (in, out): the transpose, for g S
  at::Tensor order;  // position in S of each entry of St
};

inline at::Tensor flat_rows(const at::Tensor& idx64, int64_t in) { return at::floor_divide(idx64, in); }

inline void check_support_on_device(const char* op, const at::Tensor& idx64, int64_t total) {
  if (idx64.numel() == 0) return;
  // one verdict, one host sync: range (first >= 0 and last < total suffice once strictly
  // increasing) and order
  at::Tensor ok = (idx64.select(0, 0) >= 0).logical_and(idx64.select(0, -1) < total);
  if (idx64.numel() > 1) ok = ok.logical_and((idx64.slice(0, 1) > idx64.slice(0, 0, -1)).all());
  if (!ok.item<bool>()) {
    // locate the first offender for the message (rare path)
    const at::Tensor h = idx64.cpu();
    const int64_t* p = h.data_ptr<int64_t>();
    int64_t bad = 0;
    for (int64_t k = 0; k < h.numel(); ++k)
      if (p[k] < 0 || p[k] >= total || (k > 0 && p[k] <= p[k - 1])) {
        bad = k;
        break;
      }
    TORCH_CHECK_VALUE(false, op, ": indices must be strictly increasing flat row-major positions in [0, out*in) = [0, ",
                      total, "); indices[", bad, "] = ", p[bad], " is out of range or not greater than the previous one");
  }
}

inline AtenSupport aten_support(const char* op, const at::Tensor& indices, const at::Tensor& values, const Shape& s,
                                bool need_transpose) {
  const at::Tensor idx64 = indices.to(at::kLong);
  check_support_on_device(op, idx64, s.out * s.in);
  const at::Tensor rows = flat_rows(idx64, s.in), cols = idx64 - rows * s.in;
  AtenSupport a;
  const at::Tensor crow = at::_convert_indices_from_coo_to_csr(rows, s.out, /*out_int32=*/false);
  a.S = at::sparse_csr_tensor(crow, cols, values, {s.out, s.in}, values.options().layout(at::kSparseCsr));
  if (need_transpose) {
    a.order = at::argsort(cols * s.out + rows);
    const at::Tensor crow_t = at::_convert_indices_from_coo_to_csr(cols.index_select(0, a.order), s.in, false);
    a.St = at::sparse_csr_tensor(crow_t, rows.index_select(0, a.order), values.index_select(0, a.order),
                                 {s.in, s.out}, values.options().layout(at::kSparseCsr));
  }
  return a;
}

inline bool use_aten_sparse(const at::Tensor& x) {
  if (!x.is_cpu()) return true;
  const char* e = std::getenv("STRUCTOPS_SPARSE_KERNEL");
  return e != nullptr && std::strcmp(e, "aten") == 0;
}

inline bool native(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

// The operands the forward and backward sparse kernels share: dtype, x (row-major, ldx), the
// values and the CSR view of the support.
template <class Params>
inline void set_sparse_operands(Params& p, at::ScalarType ct, const Shape& s, const at::Tensor& x,
                                const at::Tensor& values, const Csr& c) {
  p.dtype = to_dtype(ct);
  p.tokens = s.tokens;
  p.x = x.data_ptr();
  p.ldx = x.stride(0);
  p.values = values.data_ptr();
  p.support = c.view(s);
}

inline at::Tensor forward(const at::Tensor& x_in, const at::Tensor& B_in, const at::Tensor& A_in,
                          const at::Tensor& values_in, const at::Tensor& indices, double scale,
                          const c10::optional<at::Tensor>& bias_in, const c10::optional<at::Tensor>& W0_in) {
  const char* op = "sparse_lowrank_linear";
  const Shape s = check(op, x_in, B_in, A_in, values_in, indices, bias_in, W0_in);
  const at::ScalarType dt = x_in.scalar_type();
  const at::ScalarType ct = native(dt) ? dt : at::kFloat;
  auto cv = [&](const at::Tensor& t) { return t.scalar_type() == ct ? t : t.to(ct); };
  auto cvo = [&](const c10::optional<at::Tensor>& t) -> c10::optional<at::Tensor> {
    if (!t.has_value()) return c10::nullopt;
    return cv(*t);
  };
  const at::Tensor x = rows_contig(cv(x_in)), B = cv(B_in), A = cv(A_in), values = cv(values_in).contiguous();
  const c10::optional<at::Tensor> bias = cvo(bias_in), W0 = cvo(W0_in);
  const bool aten_engine = use_aten_sparse(x_in);
  const Csr c = aten_engine ? Csr{} : csr(op, indices, s);
  at::Tensor y = base_forward(x, W0, bias, s.out);
  if (s.rank > 0) y.addmm_(at::mm(x, A.t()), B.t(), 1.0, scale);
  if (aten_engine) {
    if (s.nnz > 0) {
      const AtenSupport a = aten_support(op, indices, values, s, false);
      if (s.tokens > 0) y.add_(at::mm(a.S, x.t()).t());
    }
    return ct == dt ? y : y.to(dt);
  }
  SparseMatmulForwardParams p;
  set_sparse_operands(p, ct, s, x, values, c);
  p.y = y.data_ptr();
  p.ldy = y.stride(0);
  p.accumulate = true;
  if (s.nnz > 0) sparse_matmul_forward_cpu(p, executor());
  return ct == dt ? y : y.to(dt);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& g_in, const at::Tensor& x_in, const at::Tensor& B_in, const at::Tensor& A_in,
    const at::Tensor& values_in, const at::Tensor& indices, double scale, const c10::optional<at::Tensor>& W0_in,
    std::array<bool, 5> mask) {
  const char* op = "sparse_lowrank_linear_backward";
  const Shape s = check(op, x_in, B_in, A_in, values_in, indices, c10::nullopt, W0_in);
  TORCH_CHECK_VALUE(g_in.dim() == 2 && g_in.size(0) == s.tokens && g_in.size(1) == s.out, op, ": grad must be (",
                    s.tokens, ", ", s.out, "), got ", shape_str(g_in));
  TORCH_CHECK_VALUE(!mask[4] || W0_in.has_value(), op, ": grad_base_weight requested without a base_weight");
  const bool aten_engine = use_aten_sparse(x_in);
  const Csr c = aten_engine ? Csr{} : csr(op, indices, s);
  const at::ScalarType dt = x_in.scalar_type();
  const at::ScalarType ct = native(dt) ? dt : at::kFloat;
  auto cv = [&](const at::Tensor& t) { return t.scalar_type() == ct ? t : t.to(ct); };
  const at::Tensor g = rows_contig(cv(g_in)), x = rows_contig(cv(x_in)), B = cv(B_in), A = cv(A_in),
                   values = cv(values_in).contiguous();
  at::Tensor grad_x, grad_B, grad_A, grad_values, grad_W0;
  const bool need_u = (mask[0] || mask[2]) && s.rank > 0;
  const at::Tensor u = need_u ? at::mm(g, B) : at::Tensor();  // (T, r)
  if (mask[0]) {
    grad_x = base_grad_x(g, W0_in.has_value() ? OptTensor(cv(*W0_in)) : OptTensor(), s.in);
    if (s.rank > 0) grad_x.addmm_(u, A, 1.0, scale);
  }
  if (mask[2]) grad_A = s.rank > 0 ? at::mm(u.t(), x).mul_(scale) : at::zeros_like(A);
  if (mask[1]) grad_B = s.rank > 0 ? at::mm(g.t(), at::mm(x, A.t())).mul_(scale) : at::zeros_like(B);
  if (mask[3]) grad_values = at::empty({s.nnz}, values.options());
  if (aten_engine && (mask[0] || mask[3]) && s.nnz > 0) {
    const AtenSupport a = aten_support(op, indices, values, s, mask[0]);
    if (s.tokens > 0) {
      if (mask[0]) grad_x.add_(at::mm(a.St, g.t()).t());
      if (mask[3]) {
        // SDDMM: (g^T x) sampled at the support, in CSR (= sorted flat) order
        const at::Tensor pattern = at::sparse_csr_tensor(a.S.crow_indices(), a.S.col_indices(), at::ones_like(values),
                                                         {s.out, s.in}, values.options().layout(at::kSparseCsr));
        grad_values.copy_(at::sparse_sampled_addmm(pattern, g.t().contiguous(), x, 0.0, 1.0).values());
      }
    } else if (mask[3]) {
      grad_values.zero_();
    }
  } else if ((mask[0] || mask[3]) && s.nnz > 0) {
    SparseMatmulBackwardParams p;
    set_sparse_operands(p, ct, s, x, values, c);
    p.g = g.data_ptr();
    p.ldg = g.stride(0);
    if (mask[0]) {
      p.grad_x = grad_x.data_ptr();
      p.ldgx = grad_x.stride(0);
      p.accumulate_grad_x = true;
    }
    if (mask[3]) p.grad_values = grad_values.data_ptr();
    sparse_matmul_backward_cpu(p, executor());
  } else if (mask[3]) {
    grad_values.zero_();
  }
  if (mask[4]) grad_W0 = at::mm(g.t(), x);
  auto out = [&](bool want, const at::Tensor& t, const at::Tensor& like) {
    if (!want) return at::empty({0}, like.options());
    return t.scalar_type() == like.scalar_type() ? t : t.to(like.scalar_type());
  };
  return {out(mask[0], grad_x, x_in), out(mask[1], grad_B, B_in), out(mask[2], grad_A, A_in),
          out(mask[3], grad_values, values_in), out(mask[4], grad_W0, x_in)};
}

}  // namespace sparse_lowrank
}  // namespace torch_impl
}  // namespace structops
