// Absorbed paged latent attention (latent_decode.h), two kernels with the same blocking: a block
// of 256 threads owns one query row, a range of its keys and 16 heads, and walks the keys in tiles
// of 16 whose latent rows arrive by cp.async (zero-filled for unused keys), with an online softmax
// per head (base 2, scale folded in). DeepSeek's dims (rank 512, dim 576) take the tensor-core
// kernel (3xTF32 MMAs, f32-accurate; below). Other dims take the CUDA-core kernel: scores S [16
// heads x 16 keys] with each thread owning a 4 x 4 block of S over a 1/16 slice of the latent dim
// (reduced by warp shuffles), then O [16 x rank] += P V with each thread owning 4 heads x 8 columns
// in registers, all in f32.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/attention/latent_decode.h"
#include "kernels/common/reduce.cuh"

namespace shoal::kernels {
namespace {

constexpr int kHeads = 16;  // heads per block
constexpr int kKeys = 16;   // keys per tile
constexpr int kThreads = 256;
constexpr int kMaxRank = 512;
constexpr int kMaxDim = 1024;
constexpr int kMinKeysPerSplit = 32;

__device__ inline void cp_async16(float* smem, const float* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_bytes));
}
__device__ inline void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// The pool row of key j of row i (j indexes positions 0..len-1, or the row's key list), or -1
// for no key. Bad table entries and positions are reported.
__device__ inline int64_t key_slot(const LatentAttentionParams& p, int64_t i, int64_t seq,
                                   int64_t len, int64_t j, int64_t j_end) {
  if (j >= j_end) return -1;
  int64_t t = j;
  if (p.key_idx) {
    t = p.key_idx[i * p.topk + j];
    if (t < 0) return -1;
    if (t >= len) {
      report_fault(p.status, p.op, KernelFault::sparse_out_of_range, i, t, 0, len);
      return -1;
    }
  }
  const int64_t page = p.block_table[seq * p.max_pages + t / p.page_tokens];
  const int64_t slot = page * p.page_tokens + t % p.page_tokens;
  if (page < 0 || slot >= p.slots) {
    report_fault(p.status, p.op, KernelFault::index_out_of_range, i, page, 0,
                 p.slots / p.page_tokens);
    return -1;
  }
  return slot;
}

__global__ void __launch_bounds__(kThreads, 2) latent_attention_kernel(LatentAttentionParams p) {
  extern __shared__ float4 smem4[];
  float* sm = reinterpret_cast<float*>(smem4);
  const int64_t ld = p.dim + 4;                       // padded row (conflict-free float4 columns)
  float* qs = sm;                                     // [kHeads][ld]
  float* ks = qs + kHeads * ld;                       // [2][kKeys][ld]
  float* ss = ks + 2 * kKeys * ld;                    // scores [kHeads][kKeys]
  float* pts = ss + kHeads * kKeys;                   // probabilities [kKeys][kHeads]
  float* ms = pts + kKeys * kHeads;                   // running max per head (base 2)
  float* ls = ms + kHeads;                            // running sum
  float* as = ls + kHeads;                            // this tile's rescale factor
  int* kvalid = reinterpret_cast<int*>(as + kHeads);  // [2][kKeys]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t i = blockIdx.x, split = blockIdx.y, h0 = int64_t(blockIdx.z) * kHeads;
  int64_t seq = p.row_seq[i], len = p.row_len[i];
  if (seq < 0 || seq >= p.n_seqs || len < 0 || len > p.max_pages * p.page_tokens ||
      len > p.max_len) {
    if (tid == 0 && split == 0 && blockIdx.z == 0)
      report_fault(p.status, p.op, KernelFault::index_out_of_range, i, seq, 0, p.n_seqs);
    seq = 0;
    len = 0;
  }
  const int64_t n_keys = p.key_idx ? p.topk : len;
  const int64_t j0 = split * p.keys_per_split;
  const int64_t j1 = min(n_keys, j0 + p.keys_per_split);
  const int64_t n_tiles = j1 > j0 ? (j1 - j0 + kKeys - 1) / kKeys : 0;
  const int chunks = int(p.dim / 4);

  for (int e = tid; e < kHeads * chunks; e += kThreads) {
    const int hh = e / chunks, c = e - hh * chunks;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (h0 + hh < p.heads)
      v = *reinterpret_cast<const float4*>(p.q + i * p.q_sn + (h0 + hh) * p.q_sh + c * 4);
    *reinterpret_cast<float4*>(qs + hh * ld + c * 4) = v;
  }
  if (tid < kHeads) {
    ms[tid] = -INFINITY;
    ls[tid] = 0.f;
  }

  auto issue = [&](int64_t tile, int buf) {
    float* kb = ks + buf * kKeys * ld;
    const int64_t jb = j0 + tile * kKeys;
    for (int e = tid; e < kKeys * chunks; e += kThreads) {
      const int key = e / chunks, c = e - key * chunks;
      const int64_t slot = key_slot(p, i, seq, len, jb + key, j1);
      const float* src = slot >= 0 ? p.pool + slot * p.dim + c * 4 : p.pool;
      cp_async16(kb + key * ld + c * 4, src, slot >= 0 ? 16 : 0);
    }
    if (tid < kKeys) kvalid[buf * kKeys + tid] = key_slot(p, i, seq, len, jb + tid, j1) >= 0;
  };

  // Phase 1 roles: 16 lanes split the dim; each half-warp owns 4 heads x 4 keys of S.
  const int ds = lane & 15, owner = warp * 2 + (lane >> 4);
  const int kg = owner & 3, hg = owner >> 2;
  // Phase 2 roles: 4 heads x (2 x 4 columns) of O per thread.
  const int hg2 = tid >> 6, dg = tid & 63;
  const bool col0 = dg * 4 < p.rank, col1 = 256 + dg * 4 < p.rank;
  const float scale2 = p.scale * 1.4426950408889634f;  // scores in base 2
  float acc[4][8];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[a][c] = 0.f;

  __syncthreads();  // q and the softmax state are visible to all (also when there is no tile)
  if (n_tiles > 0) issue(0, 0);
  cp_async_commit();
  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    const int buf = int(tile & 1);
    if (tile + 1 < n_tiles) {
      issue(tile + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* kb = ks + buf * kKeys * ld;

    float s[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) s[a][b] = 0.f;
    for (int f = ds; f < chunks; f += 16) {
      float4 qa[4], kv[4];
#pragma unroll
      for (int a = 0; a < 4; ++a)
        qa[a] = *reinterpret_cast<const float4*>(qs + (hg * 4 + a) * ld + f * 4);
#pragma unroll
      for (int b = 0; b < 4; ++b)
        kv[b] = *reinterpret_cast<const float4*>(kb + (kg * 4 + b) * ld + f * 4);
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
          s[a][b] += qa[a].x * kv[b].x + qa[a].y * kv[b].y + qa[a].z * kv[b].z + qa[a].w * kv[b].w;
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b)
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) s[a][b] += __shfl_xor_sync(0xffffffffu, s[a][b], o);
    if (ds == 0)
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int key = kg * 4 + b;
          ss[(hg * 4 + a) * kKeys + key] = kvalid[buf * kKeys + key] ? s[a][b] * scale2 : -INFINITY;
        }
    __syncthreads();

    {  // online softmax: a half-warp per head, a lane per key
      const int hh = warp * 2 + (lane >> 4), key = lane & 15;
      const float v = ss[hh * kKeys + key];
      float mx = v;
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = ms[hh];
      const float m_new = fmaxf(m_old, mx);
      const float pr = v == -INFINITY ? 0.f : exp2f(v - m_new);
      float sum = pr;
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      const float alpha = m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
      pts[key * kHeads + hh] = pr;
      if (key == 0) {
        ms[hh] = m_new;
        ls[hh] = ls[hh] * alpha + sum;
        as[hh] = alpha;
      }
    }
    __syncthreads();

    float al[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) al[a] = as[hg2 * 4 + a];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[a][c] *= al[a];
#pragma unroll 4
    for (int key = 0; key < kKeys; ++key) {
      const float4 pr = *reinterpret_cast<const float4*>(pts + key * kHeads + hg2 * 4);
      float4 v0 = make_float4(0.f, 0.f, 0.f, 0.f), v1 = v0;
      if (col0) v0 = *reinterpret_cast<const float4*>(kb + key * ld + dg * 4);
      if (col1) v1 = *reinterpret_cast<const float4*>(kb + key * ld + 256 + dg * 4);
      const float pa[4] = {pr.x, pr.y, pr.z, pr.w};
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        acc[a][0] += pa[a] * v0.x;
        acc[a][1] += pa[a] * v0.y;
        acc[a][2] += pa[a] * v0.z;
        acc[a][3] += pa[a] * v0.w;
        acc[a][4] += pa[a] * v1.x;
        acc[a][5] += pa[a] * v1.y;
        acc[a][6] += pa[a] * v1.z;
        acc[a][7] += pa[a] * v1.w;
      }
    }
    __syncthreads();  // the buffer is refilled by the next iteration's issue
  }

  const int64_t hpad = int64_t(gridDim.z) * kHeads;
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int64_t h = h0 + hg2 * 4 + a;
    if (h >= p.heads) continue;
    const float l = ls[hg2 * 4 + a];
    float* dst;
    float mul = 1.f;
    if (p.splits == 1) {
      dst = p.out + i * p.o_sn + h * p.o_sh;
      mul = l > 0.f ? 1.f / l : 0.f;
    } else {
      const int64_t r = (i * p.splits + split) * hpad + h;
      dst = p.work + r * p.rank;
      if (dg == 0) {
        float* ml = p.work + p.n * p.splits * hpad * p.rank + r * 2;
        ml[0] = ms[hg2 * 4 + a];
        ml[1] = l;
      }
    }
    if (col0)
      *reinterpret_cast<float4*>(dst + dg * 4) =
          make_float4(acc[a][0] * mul, acc[a][1] * mul, acc[a][2] * mul, acc[a][3] * mul);
    if (col1)
      *reinterpret_cast<float4*>(dst + 256 + dg * 4) =
          make_float4(acc[a][4] * mul, acc[a][5] * mul, acc[a][6] * mul, acc[a][7] * mul);
  }
}

// Merges the splits of one (row, head): weights 2^(m_s - M) (in shared memory), normalised by the
// merged sum; a thread per output column, the splits' partial rows read independently.
constexpr int kCombineThreads = 256;
__global__ void __launch_bounds__(kCombineThreads)
    latent_attention_combine_kernel(LatentAttentionParams p, int64_t hpad) {
  extern __shared__ float wts[];  // [splits]
  __shared__ float red[kCombineThreads / 32];
  const int64_t i = blockIdx.y, h = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* ml = p.work + p.n * p.splits * hpad * p.rank;
  const int64_t r0 = (i * p.splits) * hpad + h;  // split s: r0 + s * hpad
  float mx = -INFINITY;
  for (int64_t s = tid; s < p.splits; s += kCombineThreads) mx = fmaxf(mx, ml[(r0 + s * hpad) * 2]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / 32; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();
  float total = 0.f;
  for (int64_t s = tid; s < p.splits; s += kCombineThreads) {
    const float* e = ml + (r0 + s * hpad) * 2;
    const float w = e[0] == -INFINITY ? 0.f : exp2f(e[0] - mx);
    wts[s] = w;
    total += w * e[1];
  }
  // The unrolled sum below may read wts in vectors past the last split: zeros there.
  for (int64_t s = p.splits + tid; s < (p.splits + 7) / 8 * 8; s += kCombineThreads) wts[s] = 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
  if (lane == 0) red[warp] = total;
  __syncthreads();
  total = 0.f;
#pragma unroll
  for (int w = 0; w < kCombineThreads / 32; ++w) total += red[w];
  const float inv = total > 0.f ? 1.f / total : 0.f;
  float* dst = p.out + i * p.o_sn + h * p.o_sh;
  for (int64_t c = tid; c < p.rank; c += kCombineThreads) {
    float o = 0.f;
#pragma unroll 8
    for (int64_t s = 0; s < p.splits; ++s) o += wts[s] * p.work[(r0 + s * hpad) * p.rank + c];
    dst[c] = o * inv;
  }
}

// --- The tensor-core kernel for DeepSeek's latent dims (rank 512, dim 576) ---
// The same blocking (one row, 16 heads, a key range; 16 keys per tile), with both products on the
// tensor cores (mma.sync m16n8k8 TF32) in 3xTF32: each f32 operand x is split into big =
// tf32(x) and small = tf32(x - big), and a*b is accumulated as a_s*b_b + a_b*b_s + a_b*b_b in f32
// (the dropped a_s*b_s is ~2^-22 relative), which keeps f32 accuracy. The 16 heads are the M = 16
// of the MMA. Scores S [16 x 16 keys]: warp w owns k-steps 9w .. 9w+8 of the 72 (its query
// fragments, big and small, live in registers for the whole kernel) for both 8-key halves; the 8
// partial S are summed by the softmax threads. O [16 x 512] += P V: warp w owns columns 64w ..
// 64w+63 (8 accumulator fragments). Four cp.async stages keep three tiles in flight; each warp
// loads two keys' rows (one block-table lookup per key).
constexpr int kTcRank = 512, kTcDim = 576, kTcLd = kTcDim + 4, kTcStages = 4, kTcKsPerWarp = 9;
constexpr int kTcLdS = 24, kTcLdP = 20;

__device__ inline uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ inline void split_tf32(float x, uint32_t& big, uint32_t& small) {
  big = to_tf32(x);
  small = to_tf32(x - __uint_as_float(big));
}
// c += a * b for one m16n8k8 TF32 tile (fragments in the PTX ISA's layout: with g = lane / 4,
// t = lane % 4, a = {(g, t), (g+8, t), (g, t+4), (g+8, t+4)}, b = {(t, g), (t+4, g)}, c = {(g, 2t),
// (g, 2t+1), (g+8, 2t), (g+8, 2t+1)} as (row, col)).
__device__ inline void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ inline void mma_3xtf32(float (&c)[4], const uint32_t (&ab)[4], const uint32_t (&as)[4],
                                  const uint32_t (&bb)[2], const uint32_t (&bs)[2]) {
  mma_tf32(c, as, bb);
  mma_tf32(c, ab, bs);
  mma_tf32(c, ab, bb);
}

// kThree: 3xTF32 (f32 accuracy); else one TF32 MMA per product on operands rounded to TF32.
template <bool kThree>
__global__ void __launch_bounds__(kThreads, 1) latent_attention_tc_kernel(LatentAttentionParams p) {
  extern __shared__ float4 smem4[];
  float* sm = reinterpret_cast<float*>(smem4);
  float* ks = sm;                              // [kTcStages][kKeys][kTcLd]
  float* qs = ks + kTcStages * kKeys * kTcLd;  // [kHeads][kTcLd] (start only)
  float* sp = qs + kHeads * kTcLd;             // partial scores [8 warps][kHeads][kTcLdS]
  float* ps = sp + 8 * kHeads * kTcLdS;        // probabilities [kHeads][kTcLdP]
  float* ms = ps + kHeads * kTcLdP;
  float* ls = ms + kHeads;
  float* as = ls + kHeads;
  int* kvalid = reinterpret_cast<int*>(as + kHeads);  // [kTcStages][kKeys]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int64_t i = blockIdx.x, split = blockIdx.y, h0 = int64_t(blockIdx.z) * kHeads;
  int64_t seq = p.row_seq[i], len = p.row_len[i];
  if (seq < 0 || seq >= p.n_seqs || len < 0 || len > p.max_pages * p.page_tokens ||
      len > p.max_len) {
    if (tid == 0 && split == 0 && blockIdx.z == 0)
      report_fault(p.status, p.op, KernelFault::index_out_of_range, i, seq, 0, p.n_seqs);
    seq = 0;
    len = 0;
  }
  const int64_t n_keys = p.key_idx ? p.topk : len;
  const int64_t j0 = split * p.keys_per_split;
  const int64_t j1 = min(n_keys, j0 + p.keys_per_split);
  const int64_t n_tiles = j1 > j0 ? (j1 - j0 + kKeys - 1) / kKeys : 0;
  constexpr int chunks = kTcDim / 4;

  for (int e = tid; e < kHeads * chunks; e += kThreads) {
    const int hh = e / chunks, c = e - hh * chunks;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (h0 + hh < p.heads)
      v = *reinterpret_cast<const float4*>(p.q + i * p.q_sn + (h0 + hh) * p.q_sh + c * 4);
    *reinterpret_cast<float4*>(qs + hh * kTcLd + c * 4) = v;
  }
  if (tid < kHeads) {
    ms[tid] = -INFINITY;
    ls[tid] = 0.f;
  }
  __syncthreads();
  // x -> its TF32 big part (and, for 3xTF32, the small part).
  auto tf32_parts = [](float x, uint32_t& big, uint32_t& small) {
    if constexpr (kThree) {
      split_tf32(x, big, small);
    } else {
      big = to_tf32(x);
      small = 0;
    }
  };
  uint32_t qb[kTcKsPerWarp][4], ql[kTcKsPerWarp][4];
#pragma unroll
  for (int j = 0; j < kTcKsPerWarp; ++j) {
    const int d = (warp * kTcKsPerWarp + j) * 8 + t;
    tf32_parts(qs[g * kTcLd + d], qb[j][0], ql[j][0]);
    tf32_parts(qs[(g + 8) * kTcLd + d], qb[j][1], ql[j][1]);
    tf32_parts(qs[g * kTcLd + d + 4], qb[j][2], ql[j][2]);
    tf32_parts(qs[(g + 8) * kTcLd + d + 4], qb[j][3], ql[j][3]);
  }

  // Each warp loads two keys' rows; their pool rows are looked up a tile ahead (slots_of), so the
  // block-table reads are off the path from one tile's barrier to its MMAs.
  auto slots_of = [&](int64_t tile, int64_t(&sl)[2]) {
    const int64_t jb = j0 + tile * kKeys + warp * 2;
    sl[0] = key_slot(p, i, seq, len, jb, j1);
    sl[1] = key_slot(p, i, seq, len, jb + 1, j1);
  };
  auto issue = [&](int stage, const int64_t(&sl)[2]) {
    float* kb = ks + stage * kKeys * kTcLd;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = warp * 2 + r;
      const float* src = p.pool + (sl[r] >= 0 ? sl[r] * kTcDim : 0);
      for (int c = lane; c < chunks; c += 32)
        cp_async16(kb + key * kTcLd + c * 4, src + c * 4, sl[r] >= 0 ? 16 : 0);
      if (lane == 0) kvalid[stage * kKeys + key] = sl[r] >= 0;
    }
  };

  const float scale2 = p.scale * 1.4426950408889634f;
  float o[8][4];
#pragma unroll
  for (int nb = 0; nb < 8; ++nb)
#pragma unroll
    for (int c = 0; c < 4; ++c) o[nb][c] = 0.f;

  int64_t sl[2];
#pragma unroll
  for (int st = 0; st < kTcStages - 1; ++st) {
    if (st < n_tiles) {
      slots_of(st, sl);
      issue(st, sl);
    }
    cp_async_commit();
  }
  slots_of(kTcStages - 1, sl);
  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    const int stage = int(tile % kTcStages);
    cp_async_wait<kTcStages - 2>();
    __syncthreads();  // tile landed; every thread is past the previous tile (its stage is free)
    if (tile + kTcStages - 1 < n_tiles) issue(int((tile + kTcStages - 1) % kTcStages), sl);
    cp_async_commit();
    slots_of(tile + kTcStages, sl);
    const float* kb = ks + stage * kKeys * kTcLd;

    // Scores: this warp's 9 k-steps for both 8-key halves.
    // Six independent accumulator chains (2 key halves x 3 products), summed at the end.
    float c[2][3][4];
#pragma unroll
    for (int nb = 0; nb < 2; ++nb)
#pragma unroll
      for (int k = 0; k < 3; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[nb][k][e] = 0.f;
#pragma unroll
    for (int j = 0; j < kTcKsPerWarp; ++j)
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
        const float* krow = kb + (nb * 8 + g) * kTcLd + (warp * kTcKsPerWarp + j) * 8 + t;
        uint32_t bb[2], bl[2];
        tf32_parts(krow[0], bb[0], bl[0]);
        tf32_parts(krow[4], bb[1], bl[1]);
        if constexpr (kThree) {
          mma_tf32(c[nb][0], ql[j], bb);
          mma_tf32(c[nb][1], qb[j], bl);
        }
        mma_tf32(c[nb][2], qb[j], bb);
      }
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
      float* dst = sp + warp * kHeads * kTcLdS + nb * 8 + 2 * t;
      float v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = (c[nb][0][e] + c[nb][1][e]) + c[nb][2][e];
      *reinterpret_cast<float2*>(dst + g * kTcLdS) = make_float2(v[0], v[1]);
      *reinterpret_cast<float2*>(dst + (g + 8) * kTcLdS) = make_float2(v[2], v[3]);
    }
    __syncthreads();

    {  // online softmax: a half-warp per head, a lane per key
      const int hh = warp * 2 + (lane >> 4), key = lane & 15;
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < 8; ++w) v += sp[(w * kHeads + hh) * kTcLdS + key];
      v = kvalid[stage * kKeys + key] ? v * scale2 : -INFINITY;
      float mx = v;
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_old = ms[hh];
      const float m_new = fmaxf(m_old, mx);
      const float pr = v == -INFINITY ? 0.f : exp2f(v - m_new);
      float sum = pr;
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const float alpha = m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
      ps[hh * kTcLdP + key] = pr;
      if (key == 0) {
        ms[hh] = m_new;
        ls[hh] = ls[hh] * alpha + sum;
        as[hh] = alpha;
      }
    }
    __syncthreads();

    // O += P V over this warp's 64 columns.
    const float al0 = as[g], al1 = as[g + 8];
#pragma unroll
    for (int nb = 0; nb < 8; ++nb) {
      o[nb][0] *= al0;
      o[nb][1] *= al0;
      o[nb][2] *= al1;
      o[nb][3] *= al1;
    }
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t ab[4], al[4];
      tf32_parts(ps[g * kTcLdP + kk * 8 + t], ab[0], al[0]);
      tf32_parts(ps[(g + 8) * kTcLdP + kk * 8 + t], ab[1], al[1]);
      tf32_parts(ps[g * kTcLdP + kk * 8 + t + 4], ab[2], al[2]);
      tf32_parts(ps[(g + 8) * kTcLdP + kk * 8 + t + 4], ab[3], al[3]);
      const float* v0 = kb + (kk * 8 + t) * kTcLd + warp * 64 + g;
      const float* v1 = v0 + 4 * kTcLd;
#pragma unroll
      for (int nb = 0; nb < 8; ++nb) {
        uint32_t bb[2], bl[2];
        tf32_parts(v0[nb * 8], bb[0], bl[0]);
        tf32_parts(v1[nb * 8], bb[1], bl[1]);
        if constexpr (kThree)
          mma_3xtf32(o[nb], ab, al, bb, bl);
        else
          mma_tf32(o[nb], ab, bb);
      }
    }
  }
  cp_async_wait<0>();

  const int64_t hpad = int64_t(gridDim.z) * kHeads;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int hl = g + 8 * half;
    const int64_t h = h0 + hl;
    if (h >= p.heads) continue;
    const float l = ls[hl];
    float* dst;
    float mul = 1.f;
    if (p.splits == 1) {
      dst = p.out + i * p.o_sn + h * p.o_sh;
      mul = l > 0.f ? 1.f / l : 0.f;
    } else {
      const int64_t r = (i * p.splits + split) * hpad + h;
      dst = p.work + r * p.rank;
      if (warp == 0 && t == 0) {
        float* ml = p.work + p.n * p.splits * hpad * p.rank + r * 2;
        ml[0] = ms[hl];
        ml[1] = l;
      }
    }
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
      *reinterpret_cast<float2*>(dst + warp * 64 + nb * 8 + 2 * t) =
          make_float2(o[nb][2 * half] * mul, o[nb][2 * half + 1] * mul);
  }
}

size_t tc_smem_bytes() {
  return size_t(kTcStages * kKeys * kTcLd + kHeads * kTcLd + 8 * kHeads * kTcLdS + kHeads * kTcLdP +
                3 * kHeads + kTcStages * kKeys) *
         sizeof(float);
}

bool use_tc(const LatentAttentionParams& p) {
  return p.dim == kTcDim && p.rank == kTcRank;
}

size_t smem_bytes(int64_t dim) {
  return size_t((2 * kKeys + kHeads) * (dim + 4) + 2 * kHeads * kKeys + 3 * kHeads + 2 * kKeys) *
         sizeof(float);
}

}  // namespace

bool latent_attention_supported(int64_t dim, int64_t rank) {
  return rank > 0 && rank <= kMaxRank && rank % 4 == 0 && dim >= rank && dim <= kMaxDim &&
         dim % 4 == 0;
}

int64_t latent_attention_plan(LatentAttentionParams& p) {
  static int sms = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      v = 1;
    return v;
  }();
  const int64_t groups = (p.heads + kHeads - 1) / kHeads;
  const int64_t n_keys = p.key_idx ? p.topk : p.max_len;
  const int64_t blocks = p.n * groups, resident = (use_tc(p) ? 1 : 2) * int64_t(sms);
  int64_t splits = blocks >= resident ? 1 : resident / blocks;
  splits =
      std::max<int64_t>(1, std::min(splits, (n_keys + kMinKeysPerSplit - 1) / kMinKeysPerSplit));
  int64_t per = (n_keys + splits - 1) / splits;
  per = std::max<int64_t>(kKeys, (per + kKeys - 1) / kKeys * kKeys);
  splits = std::max<int64_t>(1, (n_keys + per - 1) / per);
  p.splits = splits;
  p.keys_per_split = per;
  return splits > 1 ? p.n * splits * groups * kHeads * (p.rank + 2) : 0;
}

int latent_attention_cuda(const LatentAttentionParams& p, void* stream) {
  if (p.n == 0 || p.heads == 0) return int(cudaSuccess);
  if (!p.q || !p.pool || !p.block_table || !p.row_seq || !p.row_len || !p.out ||
      !latent_attention_supported(p.dim, p.rank) || p.q_sn % 4 || p.q_sh % 4 ||
      p.page_tokens <= 0 || p.keys_per_split <= 0 || (p.splits > 1 && !p.work) ||
      (reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.pool) |
       reinterpret_cast<uintptr_t>(p.out)) %
          16 ||
      p.o_sn % 4 || p.o_sh % 4)
    return int(cudaErrorInvalidValue);
  const bool tc = use_tc(p);
  const size_t smem = tc ? tc_smem_bytes() : smem_bytes(p.dim);
  auto tc_kernel = p.tf32 ? latent_attention_tc_kernel<false> : latent_attention_tc_kernel<true>;
  cudaError_t e =
      tc ? cudaFuncSetAttribute(tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem))
         : cudaFuncSetAttribute(latent_attention_kernel,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return int(e);
  const int64_t groups = (p.heads + kHeads - 1) / kHeads;
  auto st = static_cast<cudaStream_t>(stream);
  dim3 grid(unsigned(p.n), unsigned(p.splits), unsigned(groups));
  if (tc)
    tc_kernel<<<grid, kThreads, smem, st>>>(p);
  else
    latent_attention_kernel<<<grid, kThreads, smem, st>>>(p);
  e = cudaGetLastError();
  if (e != cudaSuccess || p.splits == 1) return int(e);
  latent_attention_combine_kernel<<<dim3(unsigned(p.heads), unsigned(p.n)), kCombineThreads,
                                    size_t((p.splits + 7) / 8 * 8) * sizeof(float), st>>>(
      p, groups * kHeads);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
