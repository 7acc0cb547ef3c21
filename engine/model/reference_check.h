// Compares the model with a reference run (e.g. Hugging Face transformers in float64): logits and
// loss for the reference's input_ids (labels = input_ids, next-token), and every parameter
// gradient. The golden tests and `shoal check-model` both use it.
#pragma once

#include <string>
#include <vector>

#include "engine/model/model.h"

namespace shoal {

struct CheckTolerances {
  double logits = 1e-4;  // relative L2 error
  double grad = 1e-3;    // relative L2 error per gradient tensor
  double loss = 1e-5;    // |loss - ref| <= loss * ref
};

struct CheckRow {
  std::string name;  // "logits", "loss" or a gradient tensor name
  double error = 0;  // relative error
  double tolerance = 0;
  bool ok() const { return error <= tolerance; }
};

struct CheckReport {
  std::vector<CheckRow> rows;
  double loss = 0, reference_loss = 0;
  std::vector<std::string> missing;  // gradients the model has but the reference lacks
  bool ok() const;
};

// reference: safetensors with input_ids (int [B, T]), logits (float [B, T, V]), loss (float [1]).
// grads: optional safetensors of d(loss)/d(param) under checkpoint names; routed experts may be
// packed as transformers stores them internally (mlp.experts.gate_up_proj [E, 2I, D],
// mlp.experts.down_proj [E, D, I]).
CheckReport check_against_reference(Model& model, const std::string& reference,
                                    const std::string& grads, const CheckTolerances& tol);

double relative_l2(const Tensor& a, const Tensor& ref);  // ||a - ref|| / ||ref|| on CPU tensors

}  // namespace shoal
