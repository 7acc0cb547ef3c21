// SwiGLU forward and backward in three GEMMs each way.
#include "engine/model/ffn.h"

namespace shoal {

void swiglu_forward(Backend& be, const SwiGluWeights& w, const Tensor& x, Tensor& y, SwiGluSaved& s,
                    bool accumulate) {
  int64_t n = x.size(0), inter = w.inter();
  s.x = x;
  s.gate_up = be.empty({n, 2 * inter});
  s.h = be.empty({n, inter});
  be.matmul(x, false, w.gate_up, true, s.gate_up);
  be.swiglu_forward(s.gate_up, s.h);
  be.matmul(s.h, false, w.down, true, y, 1.0f, accumulate ? 1.0f : 0.0f);
}

void swiglu_backward(Backend& be, SwiGluWeights& w, const SwiGluSaved& s, const Tensor& dy,
                     Tensor& dx, bool accumulate) {
  int64_t n = dy.size(0), inter = w.inter();
  be.matmul(dy, true, s.h, false, w.g_down, 1.0f, 1.0f);  // dW_down += dy^T h
  Tensor dh = be.empty({n, inter});
  be.matmul(dy, false, w.down, false, dh);  // dh = dy W_down
  Tensor dgu = be.empty({n, 2 * inter});
  be.swiglu_backward(dh, s.gate_up, dgu);
  be.matmul(dgu, true, s.x, false, w.g_gate_up, 1.0f, 1.0f);
  be.matmul(dgu, false, w.gate_up, false, dx, 1.0f, accumulate ? 1.0f : 0.0f);
}

}  // namespace shoal
