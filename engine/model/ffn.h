// SwiGLU feed-forward: y = down(silu(gate(x)) * up(x)), with gate and up stored as one [2I, D]
// matrix (gate rows first). Used for the dense MLP, the shared experts and each routed expert.
#pragma once

#include "engine/backend.h"

namespace shoal {

struct SwiGluWeights {
  Tensor gate_up, down;      // [2I, D], [D, I]
  Tensor g_gate_up, g_down;  // gradients, same shapes
  int64_t inter() const { return down.size(1); }
};

struct SwiGluSaved {
  Tensor x, gate_up, h;  // input [N, D], gate_up [N, 2I], hidden [N, I]
};

// y = ffn(x), or y += ffn(x) when accumulate. x and y are [N, D] row views.
void swiglu_forward(Backend& be, const SwiGluWeights& w, const Tensor& x, Tensor& y,
                    SwiGluSaved& saved, bool accumulate);
// Gradients into w.g_*; dx = (or +=, when accumulate) d/dx.
void swiglu_backward(Backend& be, SwiGluWeights& w, const SwiGluSaved& saved, const Tensor& dy,
                     Tensor& dx, bool accumulate);

}  // namespace shoal
