// Reference RMSNorm: the specification the CUDA kernel is tested against.
#include <cmath>

#include "kernels/norm/rmsnorm.h"

namespace shoal::kernels {

void rmsnorm_forward_ref(const RmsNormParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * p.x_stride;
    float* y = p.y + r * p.y_stride;
    double ss = 0;
    for (int64_t i = 0; i < p.dim; ++i) ss += double(x[i]) * x[i];
    float inv = float(1.0 / std::sqrt(ss / double(p.dim) + double(p.eps)));
    if (p.rstd) p.rstd[r] = inv;
    for (int64_t i = 0; i < p.dim; ++i) y[i] = p.w[i] * (x[i] * inv);
  }
}

}  // namespace shoal::kernels
