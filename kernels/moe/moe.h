// Mixture-of-experts routing on the GPU: DeepSeek's noaux_tc router (sigmoid scores, bias-shifted
// group-limited top-k, weights from the unbiased scores) and its backward, and the stable sort of
// (token, slot) assignments by expert that precedes the expert GEMMs. f32; the CPU backend is the
// reference, including its tie-break (greater score first, then lower index). One thread per
// token for the router (not the warp-cooperative fused router yet).
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

constexpr int64_t kRouterMaxGroups = 64;

struct RouterKernelParams {
  const float* logits = nullptr;   // [n, experts] contiguous
  const float* bias = nullptr;     // [experts]
  float* scores = nullptr;         // [n, experts]
  int32_t* topk_idx = nullptr;     // [n, top_k] (input when use_given_idx)
  float* topk_w = nullptr;         // [n, top_k]
  const float* dtopk_w = nullptr;  // backward: [n, top_k]
  float* dlogits = nullptr;        // backward: [n, experts]
  int64_t n = 0, experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool norm_topk_prob = true, use_given_idx = false;
  float routed_scaling_factor = 1.0f;
  KernelStatus* status = nullptr;  // replayed expert ids out of range
  int32_t op = 0;
};
int route_noaux_tc_cuda(const RouterKernelParams& p, void* stream);
int route_backward_cuda(const RouterKernelParams& p, void* stream);

// Sort of m = n * top_k slots by expert, stable. chunk_hist is scratch of
// moe_sort_chunks(m) * experts ints; counts (optional) receives the tokens per expert (device,
// i64), offsets (optional) their prefix sums (device, i32 [experts + 1], m <= INT32_MAX): the
// group boundaries of the expert GEMM (grouped_gemm.h), so the counts need not visit the host.
constexpr int64_t kMoeSortChunk = 256;
inline int64_t moe_sort_chunks(int64_t m) {
  return m <= 0 ? 1 : (m + kMoeSortChunk - 1) / kMoeSortChunk;
}
struct MoeSortParams {
  const int32_t* topk_idx = nullptr;  // [m]
  int64_t m = 0, experts = 0;
  int32_t* order = nullptr;  // [m]
  int32_t* chunk_hist = nullptr;
  int64_t* counts = nullptr;   // [experts]
  int32_t* offsets = nullptr;  // [experts + 1]
  KernelStatus* status = nullptr;
  int32_t op = 0;
};
int moe_sort_cuda(const MoeSortParams& p, void* stream);

}  // namespace shoal::kernels
