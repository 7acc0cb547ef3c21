// Rotary position embedding in place on x [N, H, d] (last stride 1) from a [P, d/2, 2] (cos, sin)
// table: interleaved pairs (2i, 2i+1) as in DeepSeek checkpoints, or half-split pairs (i, i+d/2)
// as in the DSA indexer; inverse rotates by -angle (the backward). The CPU backend's rope is the
// reference. Positions outside the table are reported through KernelStatus, the rows skipped.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

struct RopeParams {
  float* x = nullptr;
  int64_t n = 0, heads = 0, dim = 0;   // dim even
  int64_t stride_n = 0, stride_h = 0;  // elements
  const int32_t* positions = nullptr;  // [n]
  const float* table = nullptr;        // [max_pos, dim/2, 2]
  int64_t max_pos = 0;
  bool interleaved = true, inverse = false;
  KernelStatus* status = nullptr;
  int32_t op = 0;  // the engine's name index for status reports
};
int rope_cuda(const RopeParams& p, void* stream);

}  // namespace shoal::kernels
