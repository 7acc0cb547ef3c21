// Argument checks shared by every backend: the contracts engine/backend.h states (dtype, device,
// layout, shapes, cu_seqlens), written once so the CPU and CUDA backends reject exactly the same
// calls with the same messages. A backend adds only the limits of its own kernels. Not the ops.
#pragma once

#include <vector>

#include "engine/backend.h"
#include "engine/tensor.h"
#include "kernels/sampling/sampling.h"

namespace shoal::backend_checks {

void f32(const Tensor& t, Device device, const char* what);         // defined, f32, on device
void contig_f32(const Tensor& t, Device device, const char* what);  // and contiguous
void rows(const Tensor& t, Device device, const char* what);        // and 2-D, unit last stride
// The distance between rows of a 2-D tensor with unit last stride.
int64_t row_stride(const Tensor& t);
// 0 = cu[0] <= cu[1] <= ... <= cu.back() = n.
void cu_seqlens(const std::vector<int64_t>& cu, int64_t n, const char* what);
// Sum over sequences of L^2: the size of the packed per-sequence [L, L] blocks.
int64_t packed_square_size(const std::vector<int64_t>& cu);

// Backend::grouped_matmul's per-group operands: for a 3-D operand its matrix [g], for a 2-D one
// its rows of group g. Checks f32 on `device`, 2-D or 3-D with unit last stride, non-negative
// counts, sum(group_rows) rows for 2-D operands and group_rows.size() matrices for 3-D ones (each
// product's shapes are matmul's to check).
struct GemmGroup {
  Tensor a, b, c;
};
std::vector<GemmGroup> grouped_matmul(const Tensor& a, const Tensor& b, const Tensor& c,
                                      const std::vector<int64_t>& group_rows, Device device);

// Backend::grouped_matmul_dev's operands: a [rows, k] and c [rows, n] f32 rows (unit last
// stride), b f32 [G, n, k] with unit last stride, offsets contiguous i32 [G+1]; all on `device`.
// A call with rows but no groups is refused (its offsets cannot end at rows). The offsets'
// values are group_offsets' to check (on the host) or the kernel's.
// The layouts: nt (grouped_matmul_dev), nn (grouped_matmul_dev_nn: b [G, k, n]) and tn
// (grouped_matmul_dev_tn: a [rows, n], b [rows, k] rows, c [G, n, k] with unit last stride).
enum class DevLayout { nt, nn, tn };
struct DevGroupedGemm {
  int64_t groups, rows, n, k;
};
DevGroupedGemm grouped_matmul_dev(const Tensor& a, const Tensor& b, const Tensor& c,
                                  const Tensor& offsets, Device device,
                                  DevLayout layout = DevLayout::nt);
// The rows per group of host offsets (i32 [G+1]): 0 = o_0 <= o_1 <= ... <= o_G = rows.
std::vector<int64_t> group_offsets(const Tensor& offsets, int64_t rows, const char* what);
// Backend::moe_sort_offsets's offsets: contiguous i32 [n_experts + 1] on `device`.
void moe_offsets(const Tensor& offsets, int64_t n_experts, Device device);
// Backend::add_group_sizes's operands: counts contiguous i64 [G], offsets contiguous i32 [G + 1],
// both on `device` (the offsets' values are the caller's to check).
void add_group_sizes(const Tensor& offsets, const Tensor& counts, Device device);

// Backend::batched_matmul's operands: f32 on `device`, 3-D with unit last stride, the same
// batch size, and shapes that multiply (op(a[i]) [m, k], op(b[i]) [k, n], c[i] [m, n]).
struct BatchedGemm {
  int64_t batch, m, n, k;
};
BatchedGemm batched_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                           Device device);
// The distance between rows of a 3-D tensor's matrices with unit last stride.
int64_t matrix_row_stride(const Tensor& t);

void rmsnorm(const Tensor& x, const Tensor& w, const Tensor& y, const Tensor& rstd, Device device);
void layernorm(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y,
               const Tensor& mean, const Tensor& rstd, Device device);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int64_t>& cu,
               const Tensor& out, const Tensor& lse, Device device);
// A DSA selection's layout: contiguous i32 [n, K] (its values are checked by the backend).
void sparse_layout(const Tensor& idx, int64_t n);
void indexer(const Tensor& q, const Tensor& k, const Tensor& w, const std::vector<int64_t>& cu,
             Device device);
// Backend::latent_attention's layouts: q [N, H, R+dr] (unit last stride), pool [slots, R+dr]
// contiguous, out [N, H, R], i32 contiguous block_table [S, P], row_seq and row_len [N], key_idx
// [N, K]; page_tokens > 0. Index values are checked by the backend.
void latent_attention(const Tensor& q, const Tensor& pool, int64_t page_tokens,
                      const Tensor& block_table, const Tensor& row_seq, const Tensor& row_len,
                      const Tensor* key_idx, const Tensor& out, Device device);

// Backend::scatter_rows's layouts: src [M, D] and dst [R, D] rows (unit last stride), idx i32
// contiguous [M]. Index values are checked by the backend.
void scatter_rows(const Tensor& src, const Tensor& idx, const Tensor& dst, Device device);

// Backend::sample_rows: logits [R, V] rows (unit last stride, V >= 1); every draw's row in [0,
// R), its parameters valid (temperature > 0 and finite unless greedy, top_k >= 0, top_p in (0,
// 1], min_p in [0, 1), u in [0, 1)).
void sample_rows(const Tensor& logits, const std::vector<TokenDraw>& draws, Device device);
// A checked draw as the sampling kernels take it (top_k beyond the vocabulary is off).
kernels::SampleDraw sample_draw(const TokenDraw& d, int64_t vocab);

}  // namespace shoal::backend_checks
