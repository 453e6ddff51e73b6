// Random-basis diagonal-scaled sums (RandLoRA, VeRA): the torch-free part — shapes, the FLOP
// cost model and the strategy/panel plan.  No torch here; the ATen orchestration that executes a
// plan is csrc/torch/randbasis_ops.cpp, the Python API python/structops/ops/randbasis.py.
//
// RandLoRA (peft 0.21.2 semantics, ../shared/reference/finetune.md §2).  A linear layer
// y = x W0^T + bias + s * x dW^T with x (T, in), W0 (out, in), d_min = min(in, out),
// d_max = max(in, out), n = ceil(d_min / r) bases, R = r * n >= d_min:
//   scaled basis  Ahat (R, d_min),  Ahat[k*n + b, j] = lambda[k, b] * A[k, j] * gamma[b, j]
//                 (rank-major rows; A (r, d_min) shared, lambda (r, n), gamma (n, d_min) trained)
//   basis B       Bbar (d_max, R) = B[:d_max, :n, :].flatten(1)  (basis-major columns c = b*r + k;
//                 peft pairs column c of Bbar with row c of Ahat although the index orders differ)
//   orientation   in == d_min:  dW (out, in) = Bbar Ahat          ("basis on the input side")
//                 otherwise:    dW (out, in) = (Bbar Ahat)^T = Ahat^T Bbar^T
// Both are written dW = L Rm with L (out, R), Rm (R, in): (L, Rm) = (Bbar, Ahat) or
// (Ahat^T, Bbar^T).  Exactly one of L, Rm is trained (through Ahat), the other is frozen.
//
// VeRA: dW = diag(lambda_b) B diag(lambda_d) A with A (r, in), B (out, r), lambda_d (r),
// lambda_b (out); no scaling.
//
// Two strategies (same maths, different association), chosen per call from the token count:
//   factored  y += s (x Rm^T) L^T;  backward through the (T, R) intermediate
//   merged    W_eff = W0 + s L Rm built one panel of output rows at a time (never whole), y =
//             x W_eff^T; backward rebuilds each panel for grad_x and projects the panel's dense
//             weight gradient G_p = g_p^T x onto the trained factor while it is hot in cache.
// Forward and backward are planned separately (the backward can differ: e.g. factored is
// cheaper for grad_x at small T while merged is cheaper for the weight-side products).
#pragma once

#include <cstdint>

namespace structops {

// Mixed (backward only, chosen by Auto): grad_x from rebuilt W_eff panels, the trained vectors'
// gradients through the factored (T, R) intermediates.
enum class RandBasisStrategy : int { Auto = 0, Factored = 1, Merged = 2, Mixed = 3 };

// One RandLoRA (or VeRA) call's shape.  For VeRA, `rank` = r and `basis_on_input` is unused.
struct RandBasisShape {
  int64_t tokens = 0;       // T (all leading dims of x flattened)
  int64_t in = 0;           // in_features
  int64_t out = 0;          // out_features
  int64_t rank = 0;         // R = r * n (RandLoRA) or r (VeRA)
  bool basis_on_input = true;  // RandLoRA: in == d_min (L = Bbar frozen, Rm = Ahat trained)
};

// What the backward must produce.
struct RandBasisGrads {
  bool x = true;        // grad of the input
  bool weight = false;  // grad of the base weight W0 (frozen in PEFT; optional)
  bool adapter = true;  // grads of the trained vectors (lambda/gamma or lambda_b/lambda_d)
  // RandLoRA with the basis on the output side (in > d_min): the forward saves h = x Bbar
  // (T, R) instead of x (T, in) — smaller, and the adapter gradient s g^T h then needs no
  // recomputation.  Only with a frozen base weight (grad_weight needs x).
  bool from_h = false;
};

// Multiply-adds of each phase of each strategy (the minimal count of that association: every
// GEMM it runs, nothing else; the O(R * d_min) elementwise work is not counted).
struct RandBasisCost {
  double forward_factored = 0, forward_merged = 0;
  double backward_factored = 0, backward_merged = 0, backward_mixed = 0;
};

struct RandBasisPlan {
  RandBasisStrategy forward = RandBasisStrategy::Factored;
  RandBasisStrategy backward = RandBasisStrategy::Factored;
  int64_t panel_rows = 0;   // rows of W_eff built at a time by the merged strategy
  RandBasisCost cost;
  double forward_macs = 0, backward_macs = 0;  // of the chosen strategies
};

// RandLoRA cost model (see the header comment for the products).
RandBasisCost randlora_cost(const RandBasisShape& s, const RandBasisGrads& g);
// VeRA cost model: the factored backward and both merged phases also form M = g^T h (out, r)
// (h = x A^T is saved by the forward; both vector gradients are row/column sums of
// M * B * lambda), so no (T, out) tensor is ever saved.
RandBasisCost vera_cost(const RandBasisShape& s, const RandBasisGrads& g);

// Panel height for the merged strategy: about 2 MiB of W_eff (`elem_bytes` per element) and a
// multiple of 16 rows, at least 16, at most `out`.
int64_t randbasis_panel_rows(int64_t out, int64_t in, int64_t elem_bytes);

// requested = Auto picks the cheaper strategy per phase by the cost model; Factored / Merged
// force both phases.  Throws std::invalid_argument for a bad shape or strategy value.
RandBasisPlan randlora_plan(const RandBasisShape& s, const RandBasisGrads& g, RandBasisStrategy requested,
                            int64_t elem_bytes);
RandBasisPlan vera_plan(const RandBasisShape& s, const RandBasisGrads& g, RandBasisStrategy requested,
                        int64_t elem_bytes);

// Number of bases peft uses for a layer: n = ceil(d_min / r).
inline int64_t randlora_num_bases(int64_t in, int64_t out, int64_t r) {
  const int64_t d_min = in < out ? in : out;
  return (d_min + r - 1) / r;
}

}  // namespace structops
