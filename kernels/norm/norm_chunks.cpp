// Host-side sizing of the norm backward's dw scratch (shared by the CUDA launchers and the engine,
// which allocates the scratch); plain C++ so it builds without CUDA too.
#include "kernels/norm/rmsnorm.h"

namespace shoal::kernels {

int64_t norm_dw_chunks(int64_t rows) {
  constexpr int64_t kRowsPerChunk = 64;  // kNormRowsPerChunk in norm_common.cuh
  return rows <= 0 ? 1 : (rows + kRowsPerChunk - 1) / kRowsPerChunk;
}

}  // namespace shoal::kernels
