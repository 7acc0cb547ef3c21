// Token sampling on the device (sampling.h): one block of 512 threads per draw, the row read from
// global memory (L2) once per pass.
//
// Greedy: one pass for the argmax (largest key, then lowest id), one for the log-sum-exp (f64,
// fixed reduction order).
//
// A draw: every id's weight is its count (1) and its mass q = round(exp(l - l_max) * 2^B) with
// l = x / temperature in f64, B = mass_bits(vocab). All cuts are "the shortest prefix of the
// sorted order (descending logit, then ascending id) whose count or mass reaches a target"; a
// prefix is found by a radix select over key = the order-preserving u32 of the logit, high bits
// first: pass 1 (bits 31..22, 1024 buckets) histograms count and mass of the whole row, pass 2
// (bits 21..11) and pass 3 (bits 10..0) those of the ids inside the bucket chosen so far; after
// each pass a block scan from the highest bucket down picks the bucket where the running sum
// crosses the target. After pass 3 the key (one logit value) is known with the count and mass
// strictly above it; equal logits (ties) are taken in id order, as many as the target needs.
// Pass 1's histogram is shared by the three searches (top-k: count k; top-p: mass
// ceil(top_p * total); the draw: mass floor(u * kept) + 1), so a draw costs 2 + 2 per search
// passes over the row (at most 8), plus one ordered pass to find the id when the drawn logit is
// tied. Histogram updates are aggregated per warp (match.any + redux.sync) before the shared
// atomics, since most logits of a row share a few high-bit buckets.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/reduce.cuh"
#include "kernels/sampling/sampling.h"

namespace shoal::kernels {
namespace {

using u32 = uint32_t;
using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kBuckets1 = 1024;  // pass 1: key bits 31..22
constexpr int kBuckets = 2048;   // passes 2 and 3: bits 21..11, 10..0
constexpr u32 kFull = 0xffffffffu;

// Larger logit -> larger key; -0 and +0 are one value (they compare equal in the reference).
__device__ __forceinline__ u32 order_key(float x) {
  if (x == 0.0f) x = 0.0f;
  const u32 b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct Row {
  const float* x;
  int64_t vocab;
  double temperature, mx, scale;
  __device__ double logit(float v) const { return double(v) / temperature; }
  __device__ u64 mass(float v) const { return __double2ull_rn(exp(logit(v) - mx) * scale); }
};

struct Hist {
  u32* count;
  u64* mass;
  u32* first;  // pass 3 only: the lowest id of each bucket (one logit value)
};

// Adds (1, q, i) to bucket b for the lanes with `in` set; all lanes of the warp call it.
__device__ __forceinline__ void hist_add(const Hist& h, bool in, u32 b, u64 q, u32 i) {
  const u32 act = __ballot_sync(kFull, in);
  if (!in) return;
  const u32 peers = __match_any_sync(act, b);
  // q < 2^46: two 23-bit halves, each summed over <= 32 lanes in 32 bits.
  const u32 lo = __reduce_add_sync(peers, u32(q & 0x7fffffu));
  const u32 hi = __reduce_add_sync(peers, u32(q >> 23));
  const u32 lo_id = h.first ? __reduce_min_sync(peers, i) : 0;
  if ((threadIdx.x % kWarpSize) == u32(__ffs(peers) - 1)) {
    atomicAdd(&h.count[b], u32(__popc(peers)));
    atomicAdd(&h.mass[b], (u64(hi) << 23) + u64(lo));
    if (h.first) atomicMin(&h.first[b], lo_id);
  }
}

// Exclusive scan over the block of (c, m); every thread gets its prefix and the totals.
__device__ void block_exclusive_scan(u32& c, u64& m) {
  __shared__ u32 wc[kWarps];
  __shared__ u64 wm[kWarps];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  u32 ic = c;
  u64 im = m;
#pragma unroll
  for (int o = 1; o < kWarpSize; o *= 2) {
    const u32 tc = __shfl_up_sync(kFull, ic, o);
    const u64 tm = __shfl_up_sync(kFull, im, o);
    if (lane >= o) ic += tc, im += tm;
  }
  __syncthreads();
  if (lane == kWarpSize - 1) wc[warp] = ic, wm[warp] = im;
  __syncthreads();
  u32 bc = 0;
  u64 bm = 0;
  for (int w = 0; w < warp; ++w) bc += wc[w], bm += wm[w];
  c = bc + ic - c;
  m = bm + im - m;
}

struct Cut {
  u32 key = 0;
  u32 above_count = 0;  // ids with a larger logit
  u64 above_mass = 0;
  u32 tie_count = 0;  // ids with this logit
  u64 tie_mass = 0;   // their mass (each the same)
  u32 first = 0;      // the lowest id with this logit (pass 3)
};

// Scans buckets [0, nb) from the highest down for the one where the running weight (count when
// by_count, else mass), starting at the cut's `above`, reaches `*rem`; moves the cut's above
// sums past the buckets above it and lowers *rem by their weight. Returns the bucket.
__device__ u32 find_bucket(const Hist& h, int nb, bool by_count, u64* rem, Cut* cut) {
  __shared__ u32 s_bucket;
  __shared__ u32 s_c;
  __shared__ u64 s_m;
  const int per = nb / kThreads;  // 2 or 4 buckets per thread, highest first
  const int j0 = threadIdx.x * per;
  u32 c = 0;
  u64 m = 0;
  for (int j = 0; j < per; ++j) c += h.count[nb - 1 - (j0 + j)], m += h.mass[nb - 1 - (j0 + j)];
  u32 bc = c;
  u64 bm = m;
  if (threadIdx.x == 0) s_bucket = 0, s_c = 0, s_m = 0;  // (a target beyond the total: none)
  block_exclusive_scan(bc, bm);
  const u64 target = *rem;
  for (int j = 0; j < per; ++j) {
    const u32 b = u32(nb - 1 - (j0 + j));
    const u64 before = by_count ? u64(bc) : bm;
    const u64 w = by_count ? u64(h.count[b]) : h.mass[b];
    if (before < target && before + w >= target) s_bucket = b, s_c = bc, s_m = bm;
    bc += h.count[b];
    bm += h.mass[b];
  }
  __syncthreads();
  const u32 b = s_bucket;
  cut->above_count += s_c;
  cut->above_mass += s_m;
  *rem -= by_count ? u64(s_c) : s_m;
  __syncthreads();  // s_* are rewritten by the next call
  return b;
}

__device__ void clear_hist(const Hist& h, int nb) {
  for (int b = threadIdx.x; b < nb; b += kThreads) {
    h.count[b] = 0;
    h.mass[b] = 0;
    if (h.first) h.first[b] = 0xffffffffu;
  }
  __syncthreads();
}

// The shortest prefix whose count (by_count) or mass reaches target (1 <= target <= the row's
// total): its last logit, the sums above it, and how many of that logit's ids it takes (in id
// order) -- `take`. hist1: pass 1's histogram of the whole row.
__device__ Cut search(const Row& r, const Hist& hist1, const Hist& h2, const Hist& h3,
                      bool by_count, u64 target, u32* take) {
  Cut cut;
  u64 rem = target;
  const u32 b1 = find_bucket(hist1, kBuckets1, by_count, &rem, &cut);
  clear_hist(h2, kBuckets);
  for (int64_t base = 0; base < r.vocab; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const float v = i < r.vocab ? r.x[i] : 0.0f;
    const u32 k = order_key(v);
    const bool in = i < r.vocab && (k >> 22) == b1;
    hist_add(h2, in, (k >> 11) & 2047u, in ? r.mass(v) : 0, u32(i));
  }
  __syncthreads();
  const u32 b2 = find_bucket(h2, kBuckets, by_count, &rem, &cut);
  const u32 prefix = (b1 << 11) | b2;
  clear_hist(h3, kBuckets);
  for (int64_t base = 0; base < r.vocab; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const float v = i < r.vocab ? r.x[i] : 0.0f;
    const u32 k = order_key(v);
    const bool in = i < r.vocab && (k >> 11) == prefix;
    hist_add(h3, in, k & 2047u, in ? r.mass(v) : 0, u32(i));
  }
  __syncthreads();
  const u32 b3 = find_bucket(h3, kBuckets, by_count, &rem, &cut);
  cut.key = (prefix << 11) | b3;
  cut.tie_count = h3.count[b3];
  cut.tie_mass = h3.mass[b3];
  cut.first = h3.first[b3];
  __syncthreads();  // h3 is cleared by the next search
  // rem (>= 1) is what the tied ids must add: each adds 1 (count) or tie_mass / tie_count.
  const u64 each = by_count ? 1 : cut.tie_mass / cut.tie_count;
  u64 t = (rem + each - 1) / each;
  *take = u32(t < cut.tie_count ? t : cut.tie_count);
  return cut;
}

// The id of the take-th (1-based) id in id order whose key is `key`.
__device__ int32_t nth_with_key(const Row& r, u32 key, u32 take) {
  __shared__ u32 wcount[kWarps];
  __shared__ int32_t s_found;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  if (threadIdx.x == 0) s_found = -1;
  u32 left = take;
  for (int64_t base = 0; base < r.vocab; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool m = i < r.vocab && order_key(r.x[i]) == key;
    const u32 bal = __ballot_sync(kFull, m);
    if (lane == 0) wcount[warp] = __popc(bal);
    __syncthreads();
    u32 before = 0, total = 0;
    for (int w = 0; w < kWarps; ++w) {
      before += w < warp ? wcount[w] : 0;
      total += wcount[w];
    }
    const u32 pos = before + __popc(bal & ((1u << lane) - 1)) + 1;
    if (m && pos == left) s_found = int32_t(i);
    __syncthreads();
    if (total >= left) break;
    left -= total;
  }
  __syncthreads();
  return s_found;
}

__global__ void __launch_bounds__(kThreads) sample_rows_kernel(SampleRowsParams p, int bits) {
  __shared__ u32 c1[kBuckets1], c2[kBuckets], f3[kBuckets];
  __shared__ u64 m1[kBuckets1], m2[kBuckets];
  const SampleDraw d = p.draws[blockIdx.x];
  Row r;
  r.x = p.logits + d.row * p.ld;
  r.vocab = p.vocab;
  if (d.greedy) {
    // Argmax: the largest key, then the lowest id; then the log-sum-exp around it.
    u64 best = 0;  // (key << 32) | ~id: the max is the largest key with the lowest id
    for (int64_t i = threadIdx.x; i < r.vocab; i += kThreads) {
      const u64 c = (u64(order_key(r.x[i])) << 32) | u64(~u32(i));
      best = c > best ? c : best;
    }
    best = block_max(best, u64(0));
    const int32_t id = int32_t(~u32(best & 0xffffffffu));
    const double mx = r.x[id];
    double z = 0;
    for (int64_t i = threadIdx.x; i < r.vocab; i += kThreads) z += exp(double(r.x[i]) - mx);
    z = block_sum(z);
    if (threadIdx.x == 0) {
      p.ids[blockIdx.x] = id;
      p.logprobs[blockIdx.x] = float(-log(z));
    }
    return;
  }
  float vmax = -INFINITY;
  for (int64_t i = threadIdx.x; i < r.vocab; i += kThreads) vmax = fmaxf(vmax, r.x[i]);
  vmax = block_max(vmax, -INFINITY);
  r.temperature = d.temperature;
  r.mx = r.logit(vmax);
  r.scale = ldexp(1.0, bits);
  // Pass 3's histogram reuses pass 2's storage (pass 2's is used up by then): 44 KB in all.
  const Hist h1{c1, m1, nullptr}, h2{c2, m2, nullptr}, h3{c2, m2, f3};
  // Pass 1: the whole row's histogram, its total mass, and the min-p set (p >= min_p * p_max).
  clear_hist(h1, kBuckets1);
  u64 total = 0, minp_mass = 0;
  u32 minp_count = 0;
  for (int64_t base = 0; base < r.vocab; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool in = i < r.vocab;
    const float v = in ? r.x[i] : 0.0f;
    const double pr = in ? exp(r.logit(v) - r.mx) : 0.0;
    const u64 q = __double2ull_rn(pr * r.scale);  // = r.mass(v)
    total += q;
    if (in && d.min_p > 0 && pr >= double(d.min_p)) minp_count += 1, minp_mass += q;
    hist_add(h1, in, order_key(v) >> 22, q, u32(i));
  }
  total = block_sum(total);
  minp_mass = block_sum(minp_mass);
  minp_count = block_sum(minp_count);
  __syncthreads();
  // The kept prefix: (count, mass); each cut can only shorten it.
  u64 keep_n = u64(r.vocab), keep_q = total;
  u32 take = 0;
  if (d.top_k > 0 && d.top_k < r.vocab) {
    const Cut c = search(r, h1, h2, h3, true, u64(d.top_k), &take);
    keep_n = u64(d.top_k);
    keep_q = c.above_mass + u64(take) * (c.tie_mass / c.tie_count);
  }
  if (d.top_p < 1.0f) {
    // The reference keeps the shortest prefix with sum(p) / z >= top_p.
    u64 t = u64(ceil(double(d.top_p) * double(total)));
    t = t < 1 ? 1 : (t > total ? total : t);
    const Cut c = search(r, h1, h2, h3, false, t, &take);
    const u64 n = c.above_count + take;
    if (n < keep_n) keep_n = n, keep_q = c.above_mass + u64(take) * (c.tie_mass / c.tie_count);
  }
  if (d.min_p > 0 && u64(minp_count) < keep_n) keep_n = minp_count, keep_q = minp_mass;
  // The draw: the first id whose running mass exceeds u * kept mass (the reference's r < acc);
  // when u * kept rounds to the whole kept mass, the reference takes the last kept id.
  const u64 rq = u64(floor(d.u * double(keep_q)));  // (double rounding can reach keep_q)
  Cut c;
  if (rq < keep_q)
    c = search(r, h1, h2, h3, false, rq + 1, &take);
  else
    c = search(r, h1, h2, h3, true, keep_n, &take);
  const int32_t id = take == 1 ? int32_t(c.first) : nth_with_key(r, c.key, take);
  if (threadIdx.x == 0) {
    p.ids[blockIdx.x] = id;
    p.logprobs[blockIdx.x] = float(r.logit(r.x[id]) - r.mx - log(double(keep_q) / r.scale));
  }
}

}  // namespace

int sample_rows_cuda(const SampleRowsParams& p, void* stream) {
  if (p.n == 0) return 0;
  sample_rows_kernel<<<unsigned(p.n), kThreads, 0, cudaStream_t(stream)>>>(p, mass_bits(p.vocab));
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
