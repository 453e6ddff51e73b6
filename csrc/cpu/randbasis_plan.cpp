// Strategy plan of the random-basis family (structops/randbasis.h): torch-free, shared by the CPU
// and CUDA orchestrations in csrc/torch/randbasis_ops.cpp and unit-tested on the host.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "structops/randbasis.h"

namespace structops {
namespace {

void check_shape(const RandBasisShape& s) {
  if (s.tokens < 0 || s.in <= 0 || s.out <= 0 || s.rank <= 0)
    throw std::invalid_argument("randbasis plan: need tokens >= 0 and in, out, rank > 0, got tokens=" +
                                std::to_string(s.tokens) + " in=" + std::to_string(s.in) +
                                " out=" + std::to_string(s.out) + " rank=" + std::to_string(s.rank));
}

RandBasisPlan choose(const RandBasisShape& s, const RandBasisCost& c, RandBasisStrategy requested,
                     int64_t elem_bytes) {
  RandBasisPlan p;
  p.cost = c;
  switch (requested) {
    case RandBasisStrategy::Auto:
      p.forward = c.forward_merged < c.forward_factored ? RandBasisStrategy::Merged : RandBasisStrategy::Factored;
      p.backward = c.backward_merged < c.backward_factored ? RandBasisStrategy::Merged : RandBasisStrategy::Factored;
      if (c.backward_mixed > 0 && c.backward_mixed < std::min(c.backward_merged, c.backward_factored))
        p.backward = RandBasisStrategy::Mixed;
      break;
    case RandBasisStrategy::Factored:
    case RandBasisStrategy::Merged:
      p.forward = p.backward = requested;
      break;
    default:
      throw std::invalid_argument("randbasis plan: strategy must be 0 (auto), 1 (factored) or 2 (merged), got " +
                                  std::to_string(static_cast<int>(requested)));
  }
  p.forward_macs = p.forward == RandBasisStrategy::Merged ? c.forward_merged : c.forward_factored;
  p.backward_macs = p.backward == RandBasisStrategy::Merged  ? c.backward_merged
                    : p.backward == RandBasisStrategy::Mixed ? c.backward_mixed
                                                             : c.backward_factored;
  p.panel_rows = randbasis_panel_rows(s.out, s.in, elem_bytes);
  return p;
}

}  // namespace

RandBasisCost randlora_cost(const RandBasisShape& s, const RandBasisGrads& g) {
  check_shape(s);
  const double T = double(s.tokens), I = double(s.in), O = double(s.out), R = double(s.rank);
  RandBasisCost c;
  // forward: factored = x W0^T + h = x Rm^T + h L^T;  merged = build W_eff + x W_eff^T
  c.forward_factored = T * I * O + T * I * R + T * R * O;
  c.forward_merged = O * R * I + T * O * I + (g.from_h ? T * I * R : 0.0);  // + h for the backward
  // backward, factored
  double bf = 0;
  if (g.x) bf += T * O * I;                    // g W0
  if (s.basis_on_input) {
    // L = Bbar frozen, Rm = Ahat trained: u = g L; grad_x += s u Rm; dRm = s u^T x
    if (g.x || g.adapter) bf += T * O * R;
    if (g.x) bf += T * R * I;
    if (g.adapter) bf += T * R * I;
  } else {
    // L = Ahat^T trained, Rm = Bbar^T frozen: h = x Rm^T (saved: from_h); dL = s g^T h;
    // grad_x += s (g L) Rm
    if (g.adapter) bf += (g.from_h ? 0.0 : T * I * R) + T * O * R;
    if (g.x) bf += T * O * R + T * R * I;
  }
  if (g.weight) bf += T * O * I;               // g^T x
  c.backward_factored = bf;
  // backward, merged (per panel: rebuild, grad_x, G_p = g_p^T x, project G_p)
  double bm = 0;
  if (g.x) bm += O * R * I + T * O * I;
  if (g.adapter || g.weight) bm += T * O * I;
  if (g.adapter) bm += O * I * R;
  if (g.from_h && g.adapter && !g.weight) bm -= O * I * R + T * O * I;  // G_p not needed: dL = s g^T h
  if (g.from_h && g.adapter) bm += T * O * R;
  c.backward_merged = bm;
  // backward, mixed: grad_x from rebuilt panels, adapter grads factored (only meaningful when
  // both are wanted)
  if (g.x && g.adapter) {
    double bx = O * R * I + T * O * I;
    bx += s.basis_on_input ? T * O * R + T * R * I : (g.from_h ? 0.0 : T * I * R) + T * O * R;
    if (g.weight) bx += T * O * I;
    c.backward_mixed = bx;
  }
  return c;
}

RandBasisCost vera_cost(const RandBasisShape& s, const RandBasisGrads& g) {
  check_shape(s);
  const double T = double(s.tokens), I = double(s.in), O = double(s.out), r = double(s.rank);
  RandBasisCost c;
  // forward: factored = x W0^T + h = x A^T + (h*ld) (lb*B)^T;  merged = build + x W_eff^T + h
  c.forward_factored = T * I * O + T * I * r + T * r * O;
  c.forward_merged = O * r * I + T * O * I + T * I * r;
  double common = 0;
  if (g.adapter) common += T * O * r;          // M = g^T h
  if (g.weight) common += T * O * I;           // g^T x
  c.backward_factored = common + (g.x ? T * O * I + T * O * r + T * r * I : 0.0);
  c.backward_merged = common + (g.x ? O * r * I + T * O * I : 0.0);
  return c;
}

int64_t randbasis_panel_rows(int64_t out, int64_t in, int64_t elem_bytes) {
  if (out <= 0 || in <= 0 || elem_bytes <= 0) throw std::invalid_argument("randbasis_panel_rows: bad sizes");
  const int64_t budget = int64_t(2) << 20;  // bytes of one W_eff panel
  int64_t rows = budget / (in * elem_bytes);
  rows = rows / 16 * 16;
  if (rows < 16) rows = 16;
  return rows < out ? rows : out;
}

RandBasisPlan randlora_plan(const RandBasisShape& s, const RandBasisGrads& g, RandBasisStrategy requested,
                            int64_t elem_bytes) {
  return choose(s, randlora_cost(s, g), requested, elem_bytes);
}

RandBasisPlan vera_plan(const RandBasisShape& s, const RandBasisGrads& g, RandBasisStrategy requested,
                        int64_t elem_bytes) {
  return choose(s, vera_cost(s, g), requested, elem_bytes);
}

}  // namespace structops
