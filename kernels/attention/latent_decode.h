// Absorbed paged latent attention for MLA decoding (Backend::latent_attention; REFERENCE.md §1):
// each query row's heads attend, with one KV head shared by all heads, over the latents [c_kv;
// k_pe] of its sequence in the paged cache pool, addressed through a per-sequence block table.
// One block per (row, KV split, group of 16 heads) loads each latent row once for its 16 heads
// (cp.async pipelining, 16 keys per tile), scores and accumulates with f32 accuracy and an online
// softmax (tensor cores in 3xTF32 for rank 512 / dim 576, CUDA cores otherwise); when rows are too
// few to fill the device the keys are split over blocks and a combine kernel merges the partial
// results (flash-decoding). The CPU backend is the reference.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

struct LatentAttentionParams {
  const float* q = nullptr;  // [n, heads, dim], last stride 1; strides multiples of 4
  int64_t q_sn = 0, q_sh = 0;
  const float* pool = nullptr;  // [slots, dim] contiguous
  int64_t slots = 0;
  const int32_t* block_table = nullptr;  // [n_seqs, max_pages] page ids, -1 = none
  int64_t n_seqs = 0, max_pages = 0, page_tokens = 0;
  const int32_t* row_seq = nullptr;  // [n]
  const int32_t* row_len = nullptr;  // [n]
  const int32_t* key_idx = nullptr;  // [n, topk] positions, -1 = unused; null = 0 .. len-1
  int64_t topk = 0;
  int64_t max_len = 0;   // >= every row_len
  float* out = nullptr;  // [n, heads, rank], last stride 1
  int64_t o_sn = 0, o_sh = 0;
  int64_t n = 0, heads = 0, dim = 0, rank = 0;
  float scale = 1.0f;
  // DeepSeek's dims: one TF32 MMA per product (operands rounded to TF32, ~2^-11 relative each)
  // instead of 3xTF32's f32 accuracy, for a backend whose attention precision is reduced anyway.
  bool tf32 = false;
  // Set by latent_attention_plan: the KV split and, when splits > 1, the scratch it needs.
  int64_t splits = 1, keys_per_split = 0;
  float* work = nullptr;
  KernelStatus* status = nullptr;  // bad sequence ids, pages and key positions
  int32_t op = 0;
};

// Whether the kernel takes these dims (rank <= 512, dim <= 1024, both multiples of 4).
bool latent_attention_supported(int64_t dim, int64_t rank);
// Chooses p.splits / p.keys_per_split for the device; returns the f32 scratch elements p.work
// must then point to (0 when unsplit).
int64_t latent_attention_plan(LatentAttentionParams& p);
int latent_attention_cuda(const LatentAttentionParams& p, void* stream);

}  // namespace shoal::kernels
