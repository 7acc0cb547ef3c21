// FLOP counts of the Backend's GEMM ops, shared by the CPU and CUDA training benchmarks'
// per-op timing backends (host-only: no CUDA headers). The attention counts stay with each
// benchmark: the CPU kernel computes the full score matrix, the CUDA kernels skip masked tiles.
#pragma once

#include <compare>
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace shoal::bench {

// The shape of a matmul, a key for per-shape GEMM statistics.
struct GemmKey {
  int64_t m, n, k;
  bool ta, tb;
  auto operator<=>(const GemmKey&) const = default;
};

// 2 m n k summed over the groups of a Backend::grouped_matmul call.
inline double grouped_matmul_flops(const Tensor& a, bool ta, const Tensor& b, bool tb,
                                   const std::vector<int64_t>& group_rows) {
  double f = 0;
  for (int64_t r : group_rows) {
    const int64_t a0 = a.ndim() == 3 ? a.size(1) : r, a1 = a.size(-1);
    const int64_t b0 = b.ndim() == 3 ? b.size(1) : r, b1 = b.size(-1);
    f += 2.0 * double(ta ? a1 : a0) * double(ta ? a0 : a1) * double(tb ? b0 : b1);
  }
  return f;
}

// 2 B m n k of a Backend::batched_matmul call (c is [B, m, n]).
inline double batched_matmul_flops(const Tensor& a, bool ta, const Tensor& c) {
  return 2.0 * double(a.size(0)) * double(c.size(1)) * double(c.size(2)) *
         double(ta ? a.size(1) : a.size(2));
}

}  // namespace shoal::bench
