// The frozen-base part of an adapter linear, shared by the random-basis and sparse-plus-low-rank
// orchestrations: the base weight W0 is optional (without it — a quantized base layer computes
// its own product outside the op — the op is the adapter branch alone).
#pragma once

#include <ATen/ATen.h>

namespace structops {
namespace torch_impl {

using OptTensor = c10::optional<at::Tensor>;

// x W0^T + bias (T, out), a fresh tensor the caller accumulates into; zeros / broadcast bias
// without W0 (cloned: an expanded (1, out) bias is already "contiguous" and would alias it).
inline at::Tensor base_forward(const at::Tensor& x, const OptTensor& W0, const OptTensor& bias, int64_t out) {
  if (W0.has_value()) return bias.has_value() ? at::addmm(*bias, x, W0->t()) : at::mm(x, W0->t());
  if (bias.has_value()) return bias->unsqueeze(0).expand({x.size(0), out}).clone(at::MemoryFormat::Contiguous);
  return at::zeros({x.size(0), out}, x.options());
}

// g W0 (T, in); zeros without W0.
inline at::Tensor base_grad_x(const at::Tensor& g, const OptTensor& W0, int64_t in) {
  return W0.has_value() ? at::mm(g, *W0) : at::zeros({g.size(0), in}, g.options());
}

}  // namespace torch_impl
}  // namespace structops
