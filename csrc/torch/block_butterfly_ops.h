// Block butterfly (fly's block_butterfly_multiply, structops/butterfly.h): validation, the CPU
// implementation (one batched ATen GEMM per stage over the (stack, twiddle row) pairs, MKL on
// CPU; complex too) and the registration template shared with CUDA (block_butterfly_cuda.cpp on
// the GEMM engine).
//
// Per stage (log-stride ls, s = 2^ls) with D = n / 2s and z (B, S, N):
//   A = z.view(B, S, D, 2, s, bs).permute(S, D, s, B, 2, bs) -> (S*n/2, B, 2bs)    the pairs
//   M = T[:, beta, t].permute(S, n/2, i, k, j, l) -> (S*n/2, 2bs, 2bs)
//   z' = A @ M^T, permuted back.   Backward: dA = G @ conj(M), dM = G^T @ conj(A).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "butterfly_common.h"

namespace structops {
namespace torch_impl {

struct BlockDims {
  ButterflyDims d;
  int64_t bs = 1;
  int64_t N() const { return bs * d.n(); }
};

inline BlockDims check_block_butterfly(const char* op, const at::Tensor& tw, const at::Tensor& x, bool inc,
                                       c10::optional<int64_t> output_size) {
  TORCH_CHECK_VALUE(tw.dim() == 8, op, ": twiddle must be an 8-D tensor (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs), got shape ",
                    shape_str(tw));
  BlockDims b;
  b.d.nstacks = tw.size(0);
  b.d.nblocks = tw.size(1);
  b.d.log_n = tw.size(2);
  b.bs = tw.size(6);
  TORCH_CHECK_VALUE(b.d.log_n >= 0 && b.d.log_n <= 30, op, ": twiddle.shape[2] (log_n) must be in [0, 30], got ", b.d.log_n);
  const int64_t n = b.d.n();
  TORCH_CHECK_VALUE(tw.size(3) == n / 2 && tw.size(4) == 2 && tw.size(5) == 2 && b.bs >= 1 && tw.size(7) == b.bs, op,
                    ": twiddle must have shape (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs) with n = 2^log_n = ", n,
                    ", got ", shape_str(tw));
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be a 3-D tensor (batch, nstacks, in_size), got shape ", shape_str(x));
  TORCH_CHECK_VALUE(x.size(1) == b.d.nstacks, op, ": x.shape[1] must equal nstacks = twiddle.shape[0] = ", b.d.nstacks,
                    ", got x of shape ", shape_str(x));
  b.d.batch = x.size(0);
  b.d.in_size = x.size(2);
  b.d.out_size = output_size.has_value() ? *output_size : b.N();
  TORCH_CHECK_VALUE(b.d.out_size >= 0 && b.d.out_size <= b.N(), op, ": output_size must be in [0, bs*n] = [0, ", b.N(),
                    "], got ", b.d.out_size);
  b.d.increasing_stride = inc;
  TORCH_CHECK(tw.device() == x.device(), op, ": twiddle and x must be on the same device, got twiddle: ", tw.device(),
              ", x: ", x.device());
  TORCH_CHECK(tw.scalar_type() == x.scalar_type(), op, ": twiddle and x must have the same dtype, got twiddle: ",
              tw.scalar_type(), ", x: ", x.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) || at::isComplexType(x.scalar_type()), op,
              ": expected a floating-point or complex dtype, got ", x.scalar_type());
  b.d.complex = at::isComplexType(x.scalar_type());
  return b;
}

inline int block_log_stride(const ButterflyDims& d, int64_t i) {
  const int64_t block = i / d.log_n;
  const int t = static_cast<int>(i % d.log_n);
  return (d.increasing_stride != (block % 2 == 1)) ? t : static_cast<int>(d.log_n) - 1 - t;
}

// CPU: batched ATen GEMMs (any floating or complex dtype ATen's bmm supports).
struct BlockButterflyAten {
  static at::Tensor pad(const at::Tensor& x, int64_t N) {
    const int64_t in = x.size(2);
    if (in == N) return x.contiguous();
    if (in > N) return x.narrow(2, 0, N).contiguous();
    return at::constant_pad_nd(x, {0, N - in}).contiguous();
  }
  static at::Tensor to_pairs(const at::Tensor& z, const BlockDims& b, int ls) {
    const int64_t s = int64_t(1) << ls, B = z.size(0), S = z.size(1), D = b.d.n() / (2 * s);
    return z.reshape({B, S, D, 2, s, b.bs}).permute({1, 2, 4, 0, 3, 5}).reshape({S * (b.d.n() / 2), B, 2 * b.bs});
  }
  static at::Tensor from_pairs(const at::Tensor& p, const BlockDims& b, int ls, int64_t B) {
    const int64_t s = int64_t(1) << ls, S = b.d.nstacks, D = b.d.n() / (2 * s);
    return p.reshape({S, D, s, B, 2, b.bs}).permute({3, 0, 1, 4, 2, 5}).reshape({B, S, b.N()});
  }
  static at::Tensor stage_matrix(const at::Tensor& tw, const BlockDims& b, int64_t i) {
    const int64_t S = b.d.nstacks, h = b.d.n() / 2;
    const at::Tensor t = tw.reshape({S, b.d.nblocks * b.d.log_n, h, 2, 2, b.bs, b.bs}).select(1, i);
    return t.permute({0, 1, 2, 4, 3, 5}).reshape({S * h, 2 * b.bs, 2 * b.bs});  // (i,k) x (j,l)
  }
  static at::Tensor forward(const at::Tensor& tw_in, const at::Tensor& x, bool inc, c10::optional<int64_t> out) {
    const BlockDims b = check_block_butterfly("block_butterfly_multiply", tw_in, x, inc, out);
    const at::Tensor tw = tw_in.contiguous();
    at::Tensor z = pad(x, b.N());
    for (int64_t i = 0; i < b.d.nblocks * b.d.log_n; ++i) {
      const int ls = block_log_stride(b.d, i);
      z = from_pairs(at::bmm(to_pairs(z, b, ls), stage_matrix(tw, b, i).transpose(1, 2)), b, ls, b.d.batch);
    }
    return z.narrow(2, 0, b.d.out_size).contiguous();
  }
  static std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& tw_in, const at::Tensor& x,
                                                     bool inc, std::array<bool, 2> mask) {
    const char* op = "block_butterfly_multiply_backward";
    TORCH_CHECK_VALUE(grad.dim() == 3, op, ": grad must be a 3-D tensor (batch, nstacks, output_size), got shape ",
                      shape_str(grad));
    const BlockDims b = check_block_butterfly(op, tw_in, x, inc, grad.size(2));
    TORCH_CHECK_VALUE(grad.size(0) == b.d.batch && grad.size(1) == b.d.nstacks, op, ": grad of shape ", shape_str(grad),
                      " does not match x of shape ", shape_str(x));
    const at::Tensor tw = tw_in.contiguous();
    const int64_t ns = b.d.nblocks * b.d.log_n;
    std::vector<at::Tensor> inputs;  // pairs-layout input of every stage
    if (mask[0]) {
      at::Tensor z = pad(x, b.N());
      for (int64_t i = 0; i < ns; ++i) {
        const int ls = block_log_stride(b.d, i);
        inputs.push_back(to_pairs(z, b, ls));
        if (i + 1 < ns) z = from_pairs(at::bmm(inputs.back(), stage_matrix(tw, b, i).transpose(1, 2)), b, ls, b.d.batch);
      }
    }
    at::Tensor g = at::constant_pad_nd(grad, {0, b.N() - b.d.out_size});
    std::vector<at::Tensor> dms(ns);
    for (int64_t i = ns - 1; i >= 0; --i) {
      const int ls = block_log_stride(b.d, i);
      const at::Tensor gp = to_pairs(g, b, ls);
      const at::Tensor m = stage_matrix(tw, b, i);
      if (mask[0]) dms[i] = at::bmm(gp.transpose(1, 2), inputs[i].conj());  // (S*h, 2bs (i,k), 2bs (j,l))
      if (i > 0 || mask[1]) g = from_pairs(at::bmm(gp, m.conj()), b, ls, b.d.batch);
    }
    at::Tensor dtw = at::empty({0}, x.options()), dx = at::empty({0}, x.options());
    if (mask[0]) {
      const int64_t S = b.d.nstacks, h = b.d.n() / 2;
      if (ns == 0) {
        dtw = at::zeros_like(tw);
      } else {
        // (ns, S*h, 2bs, 2bs) -> (S, ns, h, i, k, j, l) -> twiddle order (S, ns, h, i, j, k, l)
        dtw = at::stack(dms).reshape({ns, S, h, 2, b.bs, 2, b.bs}).permute({1, 0, 2, 3, 5, 4, 6}).reshape(tw.sizes()).contiguous();
      }
    }
    if (mask[1]) {
      const int64_t in = b.d.in_size, N = b.N();
      dx = in <= N ? g.narrow(2, 0, in).contiguous() : at::constant_pad_nd(g, {0, in - N}).contiguous();
      if (b.d.batch == 0 || b.d.out_size == 0) dx.zero_();
    }
    return {dtw, dx};
  }
};

template <class Forward, class Backward>
void register_block_butterfly_ops(torch::Library& m, Forward f, Backward bw) {
  m.impl("block_butterfly_multiply", f);
  m.impl("block_butterfly_multiply_backward", bw);
}

}  // namespace torch_impl
}  // namespace structops
