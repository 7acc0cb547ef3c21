// Common shapes for the training objectives in rl/: every objective reads per-token log-probs
// aligned with a packed Batch (row t scores the label at t, i.e. token t + 1 of its sequence;
// rows labelled -100 are not model-produced and carry no loss) and returns the loss, its gradient
// with respect to each row's log-prob (feed it to Model::backward) and metrics.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/model/model.h"

namespace shoal::rl {

struct ObjectiveResult {
  double loss = 0;
  Tensor dlogp;                           // host f32 [N]: d(loss)/d(log p) per row
  std::map<std::string, double> metrics;  // names documented by each objective
};

// Response rows (label != -100) of sequence s, as [begin, end) row ranges are not contiguous in
// general; these helpers walk them.
int64_t response_tokens(const Batch& b, size_t seq);
// Checks that a per-row tensor matches the batch (f32 [N], finite on response rows).
void check_per_row(const Batch& b, const Tensor& t, const char* what);

}  // namespace shoal::rl
