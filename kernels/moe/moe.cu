// MoE kernels (moe.h). The router takes one token per warp (up to kRouteWarpMaxExperts experts;
// one per thread above): group scores (sum of the two best bias-shifted scores, a lane per group),
// the best groups, then the best experts by repeated selection in the total order (score desc,
// index asc) that the CPU's partial_sort with its comparator produces, each selection a warp
// reduction over the lanes' candidates; the weights are summed by one lane in selection order,
// so the result is the one-thread version's bit for bit. The
// sort is a counting sort: per-chunk histograms, per-expert bases (and the experts' offsets for the
// grouped GEMM), then a stable in-chunk rank.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "kernels/common/reduce.cuh"
#include "kernels/moe/moe.h"

namespace shoal::kernels {
namespace {

__device__ __forceinline__ float sigmoid_ref(float x) {
  return 1.0f / (1.0f + expf(-x));
}

// a ranks before b: greater value, then lower index.
__device__ __forceinline__ bool ranks_before(float av, int64_t ai, float bv, int64_t bi) {
  return av > bv || (av == bv && ai < bi);
}

constexpr int kRouteWarps = 4;                     // tokens per block of the warp router
constexpr int64_t kRouteWarpMaxExperts = 32 * 32;  // a 32-bit taken mask per lane

// (v, i) of the two that ranks first; i < 0 is no candidate.
__device__ __forceinline__ void rank_max(float& v, int& i) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (oi >= 0 && (i < 0 || ranks_before(ov, oi, v, i))) v = ov, i = oi;
  }
}

// The weights of the chosen experts (one lane): normalised in selection order in f64, as the
// one-thread kernel and the CPU do.
__device__ void route_weights(const RouterKernelParams& p, int64_t t, const int32_t* idx,
                              float* w) {
  const int64_t e = p.experts, kk = p.top_k;
  double sum = 0;
  bool ok = true;
  for (int64_t k = 0; k < kk; ++k) {
    const int32_t id = idx[k];
    if (id < 0 || id >= e) {
      report_fault(p.status, p.op, KernelFault::index_out_of_range, t * kk + k, id, 0, e);
      ok = false;
      continue;
    }
    w[k] = sigmoid_ref(p.logits[t * e + id]);
    sum += w[k];
  }
  if (!ok) {
    for (int64_t k = 0; k < kk; ++k) w[k] = 0.0f;
    return;
  }
  const float norm = p.norm_topk_prob ? float(1.0 / (sum + 1e-20)) : 1.0f;
  for (int64_t k = 0; k < kk; ++k) w[k] = w[k] * norm * p.routed_scaling_factor;
}

__global__ void __launch_bounds__(kRouteWarps* kWarpSize) route_warp_kernel(RouterKernelParams p) {
  extern __shared__ float route_smem[];  // per warp: the token's bias-shifted scores
  const int warp = int(threadIdx.x) / kWarpSize, lane = int(threadIdx.x) % kWarpSize;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= p.n) return;  // the whole warp
  const int64_t e = p.experts, kk = p.top_k, gsize = e / p.n_group;
  float* c = route_smem + warp * e;
  const float* lg = p.logits + t * e;
  float* s = p.scores + t * e;
  for (int64_t i = lane; i < e; i += kWarpSize) {
    const float v = sigmoid_ref(lg[i]);
    s[i] = v;
    c[i] = v + p.bias[i];
  }
  __syncwarp();
  int32_t* idx = p.topk_idx + t * kk;
  float* w = p.topk_w + t * kk;
  if (!p.use_given_idx) {
    float gscore[2] = {-INFINITY, -INFINITY};  // groups lane and lane + 32
    for (int h = 0; h < 2; ++h) {
      const int64_t g = lane + h * kWarpSize;
      if (g >= p.n_group) continue;
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int64_t i = g * gsize; i < (g + 1) * gsize; ++i) {
        const float v = c[i];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      gscore[h] = b1 + b2;
    }
    uint64_t keep = 0;
    for (int64_t r = 0; r < p.topk_group; ++r) {
      float bv = 0.0f;
      int bi = -1;
      for (int h = 0; h < 2; ++h) {
        const int g = lane + h * kWarpSize;
        if (g < p.n_group && !((keep >> g) & 1u) && (bi < 0 || ranks_before(gscore[h], g, bv, bi)))
          bv = gscore[h], bi = g;
      }
      rank_max(bv, bi);
      keep |= uint64_t(1) << bi;
    }
    // Experts of dropped groups compete with 0.0 (transformers' masked_fill).
    for (int64_t i = lane; i < e; i += kWarpSize)
      if (!((keep >> (i / gsize)) & 1u)) c[i] = 0.0f;
    __syncwarp();
    uint32_t taken = 0;  // bit j: expert lane + 32 j
    for (int64_t k = 0; k < kk; ++k) {
      float bv = 0.0f;
      int bi = -1;
      for (int64_t i = lane, j = 0; i < e; i += kWarpSize, ++j)
        if (!((taken >> j) & 1u) && (bi < 0 || ranks_before(c[i], int(i), bv, bi)))
          bv = c[i], bi = int(i);
      rank_max(bv, bi);
      if (bi % kWarpSize == lane) taken |= 1u << (bi / kWarpSize);
      if (lane == 0) idx[k] = bi;
    }
  }
  __syncwarp();
  if (lane == 0) route_weights(p, t, idx, w);
}

// One token per thread: for more experts than the warp kernel's lanes can mark.
__global__ void route_kernel(RouterKernelParams p) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= p.n) return;
  const int64_t e = p.experts, kk = p.top_k, gsize = e / p.n_group;
  const float* lg = p.logits + t * e;
  float* s = p.scores + t * e;
  for (int64_t i = 0; i < e; ++i) s[i] = sigmoid_ref(lg[i]);
  int32_t* idx = p.topk_idx + t * kk;
  float* w = p.topk_w + t * kk;
  if (!p.use_given_idx) {
    float gscore[kRouterMaxGroups];
    for (int64_t g = 0; g < p.n_group; ++g) {
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int64_t i = g * gsize; i < (g + 1) * gsize; ++i) {
        const float c = s[i] + p.bias[i];
        if (c > b1) {
          b2 = b1;
          b1 = c;
        } else if (c > b2) {
          b2 = c;
        }
      }
      gscore[g] = b1 + b2;
    }
    uint64_t keep = 0;
    for (int64_t r = 0; r < p.topk_group; ++r) {
      int64_t best = -1;
      for (int64_t g = 0; g < p.n_group; ++g)
        if (!((keep >> g) & 1u) && (best < 0 || ranks_before(gscore[g], g, gscore[best], best)))
          best = g;
      keep |= uint64_t(1) << best;
    }
    // Experts of dropped groups compete with 0.0 (transformers' masked_fill).
    float prev_v = 0.0f;
    int64_t prev_i = -1;
    for (int64_t k = 0; k < kk; ++k) {
      float best_v = 0.0f;
      int64_t best_i = -1;
      for (int64_t i = 0; i < e; ++i) {
        const float v = ((keep >> (i / gsize)) & 1u) ? s[i] + p.bias[i] : 0.0f;
        if (prev_i >= 0 && !ranks_before(prev_v, prev_i, v, i)) continue;  // already taken
        if (best_i < 0 || ranks_before(v, i, best_v, best_i)) {
          best_v = v;
          best_i = i;
        }
      }
      idx[k] = int32_t(best_i);
      prev_v = best_v;
      prev_i = best_i;
    }
  }
  double sum = 0;
  bool ok = true;
  for (int64_t k = 0; k < kk; ++k) {
    const int32_t id = idx[k];
    if (id < 0 || id >= e) {
      report_fault(p.status, p.op, KernelFault::index_out_of_range, t * kk + k, id, 0, e);
      ok = false;
      continue;
    }
    w[k] = s[id];
    sum += w[k];
  }
  if (!ok) {
    for (int64_t k = 0; k < kk; ++k) w[k] = 0.0f;
    return;
  }
  const float norm = p.norm_topk_prob ? float(1.0 / (sum + 1e-20)) : 1.0f;
  for (int64_t k = 0; k < kk; ++k) w[k] = w[k] * norm * p.routed_scaling_factor;
}

__global__ void route_backward_kernel(RouterKernelParams p) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= p.n) return;
  const int64_t e = p.experts, kk = p.top_k;
  const float* s = p.scores + t * e;
  const int32_t* idx = p.topk_idx + t * kk;
  const float* g = p.dtopk_w + t * kk;
  float* d = p.dlogits + t * e;
  for (int64_t i = 0; i < e; ++i) d[i] = 0.0f;
  for (int64_t k = 0; k < kk; ++k)
    if (idx[k] < 0 || idx[k] >= e) {
      report_fault(p.status, p.op, KernelFault::index_out_of_range, t * kk + k, idx[k], 0, e);
      return;
    }
  const float rsf = p.routed_scaling_factor;
  if (p.norm_topk_prob) {
    double sum = 1e-20, gs = 0;
    for (int64_t k = 0; k < kk; ++k) {
      sum += s[idx[k]];
      gs += double(g[k]) * s[idx[k]];
    }
    for (int64_t k = 0; k < kk; ++k) {
      const double ds = rsf * (g[k] / sum - gs / (sum * sum));
      const float sk = s[idx[k]];
      d[idx[k]] = float(ds) * sk * (1.0f - sk);
    }
  } else {
    for (int64_t k = 0; k < kk; ++k) {
      const float sk = s[idx[k]];
      d[idx[k]] = rsf * g[k] * sk * (1.0f - sk);
    }
  }
}

__global__ void moe_hist_kernel(MoeSortParams p) {
  extern __shared__ int hist[];
  for (int64_t e = threadIdx.x; e < p.experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t slot = blockIdx.x * kMoeSortChunk + threadIdx.x;
  if (threadIdx.x < kMoeSortChunk && slot < p.m) {
    const int32_t e = p.topk_idx[slot];
    if (e < 0 || e >= p.experts)
      report_fault(p.status, p.op, KernelFault::index_out_of_range, slot, e, 0, p.experts);
    else
      atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < p.experts; e += blockDim.x)
    p.chunk_hist[blockIdx.x * p.experts + e] = hist[e];
}

// One block: totals per expert, exclusive scan over experts, then each chunk's base per expert
// (written over its histogram).
__global__ void moe_bases_kernel(MoeSortParams p, int64_t chunks) {
  extern __shared__ int64_t totals[];
  for (int64_t e = threadIdx.x; e < p.experts; e += blockDim.x) {
    int64_t t = 0;
    for (int64_t c = 0; c < chunks; ++c) t += p.chunk_hist[c * p.experts + e];
    totals[e] = t;
    if (p.counts) p.counts[e] = t;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t run = 0;
    for (int64_t e = 0; e < p.experts; ++e) {
      const int64_t t = totals[e];
      totals[e] = run;
      if (p.offsets) p.offsets[e] = int32_t(run);
      run += t;
    }
    if (p.offsets) p.offsets[p.experts] = int32_t(run);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < p.experts; e += blockDim.x) {
    int64_t base = totals[e];
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t h = p.chunk_hist[c * p.experts + e];
      p.chunk_hist[c * p.experts + e] = int32_t(base);
      base += h;
    }
  }
}

__global__ void moe_scatter_kernel(MoeSortParams p) {
  __shared__ int32_t chunk[kMoeSortChunk];
  const int64_t first = blockIdx.x * kMoeSortChunk;
  const int i = threadIdx.x;
  const int64_t slot = first + i;
  chunk[i] = slot < p.m ? p.topk_idx[slot] : -1;
  __syncthreads();
  if (slot >= p.m) return;
  const int32_t e = chunk[i];
  if (e < 0 || e >= p.experts) return;
  int rank = 0;
  for (int j = 0; j < i; ++j) rank += chunk[j] == e;
  p.order[p.chunk_hist[blockIdx.x * p.experts + e] + rank] = int32_t(slot);
}

}  // namespace

int route_noaux_tc_cuda(const RouterKernelParams& p, void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (p.n < 0 || p.experts < 2 || p.n_group < 1 || p.n_group > kRouterMaxGroups ||
      p.experts % p.n_group != 0 || p.topk_group < 1 || p.topk_group > p.n_group || p.top_k < 1 ||
      !p.logits || !p.bias || !p.scores || !p.topk_idx || !p.topk_w)
    return int(cudaErrorInvalidValue);
  auto st = static_cast<cudaStream_t>(stream);
  if (p.experts <= kRouteWarpMaxExperts && p.top_k <= p.experts) {
    const size_t smem = size_t(kRouteWarps) * size_t(p.experts) * sizeof(float);
    if (smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(
          route_warp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      if (e != cudaSuccess) return int(e);
    }
    const int64_t blocks = (p.n + kRouteWarps - 1) / kRouteWarps;
    route_warp_kernel<<<unsigned(blocks), kRouteWarps * kWarpSize, smem, st>>>(p);
  } else {
    route_kernel<<<grid_for(p.n, 128), 128, 0, st>>>(p);
  }
  return int(cudaGetLastError());
}

int route_backward_cuda(const RouterKernelParams& p, void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (p.n < 0 || !p.scores || !p.topk_idx || !p.dtopk_w || !p.dlogits || p.top_k < 1)
    return int(cudaErrorInvalidValue);
  route_backward_kernel<<<grid_for(p.n, 128), 128, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int moe_sort_cuda(const MoeSortParams& p, void* stream) {
  if (p.experts < 1 || p.m < 0 || (!p.counts && !p.offsets) || !p.chunk_hist ||
      (p.offsets && p.m > INT32_MAX) || (p.m > 0 && (!p.topk_idx || !p.order)) ||
      p.experts * sizeof(int64_t) > 48 * 1024)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = moe_sort_chunks(p.m);
  moe_hist_kernel<<<unsigned(chunks), kMoeSortChunk, p.experts * sizeof(int), s>>>(p);
  moe_bases_kernel<<<1, 1024, p.experts * sizeof(int64_t), s>>>(p, chunks);
  if (p.m > 0) moe_scatter_kernel<<<unsigned(chunks), kMoeSortChunk, 0, s>>>(p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
