// The shared backend argument checks (backend_checks.h).
#include "engine/backend_checks.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "base/error.h"

namespace shoal::backend_checks {

void f32(const Tensor& t, Device device, const char* what) {
  SHOAL_CHECK(t.defined(), "{}: undefined tensor", what);
  SHOAL_CHECK(t.dtype() == DType::f32, "{}: expected f32, got {}", what, t.describe());
  SHOAL_CHECK(t.device() == device, "{}: tensor {} is on {}, expected {}", what, t.describe(),
              device_name(t.device()), device_name(device));
}

void contig_f32(const Tensor& t, Device device, const char* what) {
  f32(t, device, what);
  SHOAL_CHECK(t.is_contiguous(), "{}: expected a contiguous tensor, got {}", what, t.describe());
}

void rows(const Tensor& t, Device device, const char* what) {
  f32(t, device, what);
  SHOAL_CHECK(t.ndim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1),
              "{}: expected a 2-D tensor with unit last stride, got {} strides {}", what,
              t.describe(), shape_str(t.strides()));
}

int64_t row_stride(const Tensor& t) {
  return std::max<int64_t>(t.stride(0), t.size(1));
}

void cu_seqlens(const std::vector<int64_t>& cu, int64_t n, const char* what) {
  SHOAL_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == n,
              "{}: cu_seqlens must run from 0 to N = {}", what, n);
  for (size_t i = 1; i < cu.size(); ++i)
    SHOAL_CHECK(cu[i] >= cu[i - 1], "{}: cu_seqlens must be non-decreasing", what);
}

std::vector<GemmGroup> grouped_matmul(const Tensor& a, const Tensor& b, const Tensor& c,
                                      const std::vector<int64_t>& group_rows, Device device) {
  const int64_t groups = int64_t(group_rows.size());
  int64_t total = 0;
  for (int64_t r : group_rows) {
    SHOAL_CHECK(r >= 0, "grouped_matmul: negative group size {}", r);
    total += r;
  }
  const Tensor* ops[3] = {&a, &b, &c};
  const char* names[3] = {"grouped_matmul a", "grouped_matmul b", "grouped_matmul c"};
  for (int i = 0; i < 3; ++i) {
    const Tensor& t = *ops[i];
    f32(t, device, names[i]);
    SHOAL_CHECK((t.ndim() == 2 || t.ndim() == 3) && (t.stride(-1) == 1 || t.size(-1) <= 1),
                "{}: expected a 2-D or 3-D tensor with unit last stride, got {} strides {}",
                names[i], t.describe(), shape_str(t.strides()));
    if (t.ndim() == 2)
      SHOAL_CHECK(t.size(0) == total, "{}: {} rows, the groups hold {}", names[i], t.describe(),
                  total);
    else
      SHOAL_CHECK(t.size(0) == groups, "{}: {} matrices for {} groups", names[i], t.describe(),
                  groups);
  }
  std::vector<GemmGroup> out(static_cast<size_t>(groups));
  int64_t off = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t r = group_rows[size_t(g)];
    Tensor* dst[3] = {&out[size_t(g)].a, &out[size_t(g)].b, &out[size_t(g)].c};
    for (int i = 0; i < 3; ++i)
      *dst[i] = ops[i]->ndim() == 3 ? ops[i]->select(0, g) : ops[i]->slice(0, off, off + r);
    off += r;
  }
  return out;
}

DevGroupedGemm grouped_matmul_dev(const Tensor& a, const Tensor& b, const Tensor& c,
                                  const Tensor& offsets, Device device, DevLayout layout) {
  const char* op = layout == DevLayout::nt   ? "grouped_matmul_dev"
                   : layout == DevLayout::nn ? "grouped_matmul_dev_nn"
                                             : "grouped_matmul_dev_tn";
  const std::string what(op);
  rows(a, device, (what + " a").c_str());
  const bool tn = layout == DevLayout::tn;
  rows(tn ? b : c, device, (what + (tn ? " b" : " c")).c_str());
  const Tensor& mats = tn ? c : b;  // the 3-D operand
  const char* mats_name = tn ? "c" : "b";
  f32(mats, device, (what + " " + mats_name).c_str());
  SHOAL_CHECK(mats.ndim() == 3 && (mats.stride(2) == 1 || mats.size(2) <= 1),
              "{} {}: expected a 3-D tensor [G, {}] with unit last stride, got {} strides {}", op,
              mats_name, layout == DevLayout::nn ? "k, n" : "n, k", mats.describe(),
              shape_str(mats.strides()));
  SHOAL_CHECK(offsets.defined() && offsets.dtype() == DType::i32 && offsets.ndim() == 1 &&
                  offsets.is_contiguous() && offsets.device() == device,
              "{} offsets: expected a contiguous 1-D i32 tensor on {}, got {}", op,
              device_name(device), offsets.defined() ? offsets.describe() : "undefined");
  const int64_t groups = mats.size(0), m = a.size(0);
  // The GEMM's n and k as the layout names them (backend.h).
  const int64_t n = layout == DevLayout::nn ? b.size(2) : mats.size(1);
  const int64_t k = layout == DevLayout::nn ? b.size(1) : mats.size(2);
  SHOAL_CHECK(offsets.numel() == groups + 1, "{}: {} offsets for {} groups ({})", op,
              offsets.numel(), groups, mats.describe());
  bool fits = false;
  switch (layout) {
    case DevLayout::nt:
      fits = a.size(1) == k && c.size(0) == m && c.size(1) == n;
      break;
    case DevLayout::nn:
      fits = a.size(1) == k && c.size(0) == m && c.size(1) == n;
      break;
    case DevLayout::tn:
      fits = a.size(1) == n && b.size(0) == m && b.size(1) == k;
      break;
  }
  SHOAL_CHECK(fits, "{} shapes: a {} b {} c {}", op, a.describe(), b.describe(), c.describe());
  SHOAL_CHECK(groups > 0 || m == 0, "{}: {} rows and no groups", op, m);
  SHOAL_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX,
              "{}: dims exceed int32 ({} x {} x {})", op, m, n, k);
  return {groups, m, n, k};
}

std::vector<int64_t> group_offsets(const Tensor& offsets, int64_t rows, const char* what) {
  SHOAL_CHECK(offsets.device() == Device::cpu && offsets.dtype() == DType::i32 &&
                  offsets.ndim() == 1 && offsets.numel() >= 1,
              "{}: offsets must be a 1-D i32 host tensor, got {}", what, offsets.describe());
  const Tensor o = offsets.contiguous();
  const int32_t* p = o.i32();
  const int64_t groups = o.numel() - 1;
  SHOAL_CHECK(p[0] == 0, "{}: offsets[0] is {}, expected 0", what, p[0]);
  SHOAL_CHECK(p[groups] == rows, "{}: offsets[{}] is {}, expected the {} rows", what, groups,
              p[groups], rows);
  std::vector<int64_t> counts(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) {
    SHOAL_CHECK(p[g + 1] >= p[g], "{}: offsets decrease at group {} ({} then {})", what, g, p[g],
                p[g + 1]);
    counts[size_t(g)] = p[g + 1] - p[g];
  }
  return counts;
}

void moe_offsets(const Tensor& offsets, int64_t n_experts, Device device) {
  SHOAL_CHECK(offsets.defined() && offsets.dtype() == DType::i32 && offsets.is_contiguous() &&
                  offsets.numel() == n_experts + 1 && offsets.device() == device,
              "moe_sort_offsets: offsets must be a contiguous i32 tensor of {} + 1 elements on {}, "
              "got {}",
              n_experts, device_name(device), offsets.defined() ? offsets.describe() : "undefined");
}

void add_group_sizes(const Tensor& offsets, const Tensor& counts, Device device) {
  SHOAL_CHECK(counts.defined() && counts.dtype() == DType::i64 && counts.ndim() == 1 &&
                  counts.is_contiguous() && counts.device() == device,
              "add_group_sizes: counts must be a contiguous 1-D i64 tensor on {}, got {}",
              device_name(device), counts.defined() ? counts.describe() : "undefined");
  SHOAL_CHECK(offsets.defined() && offsets.dtype() == DType::i32 && offsets.ndim() == 1 &&
                  offsets.is_contiguous() && offsets.device() == device &&
                  offsets.numel() == counts.numel() + 1,
              "add_group_sizes: offsets must be a contiguous i32 tensor of {} + 1 elements on {}, "
              "got {}",
              counts.numel(), device_name(device),
              offsets.defined() ? offsets.describe() : "undefined");
}

BatchedGemm batched_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                           Device device) {
  const Tensor* ops[3] = {&a, &b, &c};
  const char* names[3] = {"batched_matmul a", "batched_matmul b", "batched_matmul c"};
  for (int i = 0; i < 3; ++i) {
    const Tensor& t = *ops[i];
    f32(t, device, names[i]);
    SHOAL_CHECK(t.ndim() == 3 && (t.stride(2) == 1 || t.size(2) <= 1),
                "{}: expected a 3-D tensor with unit last stride, got {} strides {}", names[i],
                t.describe(), shape_str(t.strides()));
  }
  const int64_t m = ta ? a.size(2) : a.size(1), k = ta ? a.size(1) : a.size(2);
  const int64_t kb = tb ? b.size(2) : b.size(1), n = tb ? b.size(1) : b.size(2);
  SHOAL_CHECK(a.size(0) == b.size(0) && a.size(0) == c.size(0) && k == kb && c.size(1) == m &&
                  c.size(2) == n,
              "batched_matmul shapes: {}{} x {}{} -> {}", a.describe(), ta ? "^T" : "",
              b.describe(), tb ? "^T" : "", c.describe());
  return {a.size(0), m, n, k};
}

int64_t matrix_row_stride(const Tensor& t) {
  return std::max<int64_t>(t.stride(1), t.size(2));
}

int64_t packed_square_size(const std::vector<int64_t>& cu) {
  int64_t total = 0;
  for (size_t s = 0; s + 1 < cu.size(); ++s) total += (cu[s + 1] - cu[s]) * (cu[s + 1] - cu[s]);
  return total;
}

void rmsnorm(const Tensor& x, const Tensor& w, const Tensor& y, const Tensor& rstd, Device device) {
  rows(x, device, "rmsnorm x");
  rows(y, device, "rmsnorm y");
  contig_f32(w, device, "rmsnorm w");
  contig_f32(rstd, device, "rmsnorm rstd");
  SHOAL_CHECK(w.numel() == x.size(1) && y.shape() == x.shape() && rstd.numel() == x.size(0),
              "rmsnorm shapes: x {} w {} y {} rstd {}", x.describe(), w.describe(), y.describe(),
              rstd.describe());
}

void layernorm(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& y,
               const Tensor& mean, const Tensor& rstd, Device device) {
  rows(x, device, "layernorm x");
  rows(y, device, "layernorm y");
  for (const Tensor* t : {&w, &b, &mean, &rstd}) contig_f32(*t, device, "layernorm");
  int64_t n = x.size(0), d = x.size(1);
  SHOAL_CHECK(w.numel() == d && b.numel() == d && y.shape() == x.shape() && mean.numel() == n &&
                  rstd.numel() == n,
              "layernorm shapes: x {} w {} b {} y {}", x.describe(), w.describe(), b.describe(),
              y.describe());
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int64_t>& cu,
               const Tensor& out, const Tensor& lse, Device device) {
  for (const Tensor* t : {&q, &k, &v, &out}) {
    f32(*t, device, "attention");
    SHOAL_CHECK(t->ndim() == 3 && t->stride(2) == 1,
                "attention: operands must be [N, H, d] with unit last stride, got {}",
                t->describe());
  }
  int64_t n = q.size(0), h = q.size(1);
  SHOAL_CHECK(k.size(0) == n && v.size(0) == n && k.size(1) == h && v.size(1) == h &&
                  k.size(2) == q.size(2) && out.size(0) == n && out.size(1) == h &&
                  out.size(2) == v.size(2),
              "attention shapes: q {} k {} v {} out {}", q.describe(), k.describe(), v.describe(),
              out.describe());
  contig_f32(lse, device, "attention lse");
  SHOAL_CHECK(lse.numel() == h * n, "attention: lse {} must hold H*N = {}", lse.describe(), h * n);
  cu_seqlens(cu, n, "attention");
}

void sparse_layout(const Tensor& idx, int64_t n) {
  SHOAL_CHECK(
      idx.dtype() == DType::i32 && idx.ndim() == 2 && idx.size(0) == n && idx.is_contiguous(),
      "sparse attention: indices must be contiguous i32[{}, K], got {}", n, idx.describe());
}

void indexer(const Tensor& q, const Tensor& k, const Tensor& w, const std::vector<int64_t>& cu,
             Device device) {
  f32(q, device, "indexer q");
  rows(k, device, "indexer k");
  rows(w, device, "indexer weights");
  int64_t n = q.size(0);
  SHOAL_CHECK(q.ndim() == 3 && q.stride(2) == 1 && k.size(0) == n && k.size(1) == q.size(2) &&
                  w.size(0) == n && w.size(1) == q.size(1),
              "indexer shapes: q {} k {} w {}", q.describe(), k.describe(), w.describe());
  cu_seqlens(cu, n, "indexer");
}

void latent_attention(const Tensor& q, const Tensor& pool, int64_t page_tokens,
                      const Tensor& block_table, const Tensor& row_seq, const Tensor& row_len,
                      const Tensor* key_idx, const Tensor& out, Device device) {
  f32(q, device, "latent_attention q");
  contig_f32(pool, device, "latent_attention pool");
  f32(out, device, "latent_attention out");
  SHOAL_CHECK(q.ndim() == 3 && q.stride(2) == 1 && pool.ndim() == 2 && pool.size(1) == q.size(2) &&
                  out.ndim() == 3 && out.stride(2) == 1 && out.size(0) == q.size(0) &&
                  out.size(1) == q.size(1) && out.size(2) > 0 && out.size(2) <= q.size(2),
              "latent_attention shapes: q {} pool {} out {}", q.describe(), pool.describe(),
              out.describe());
  SHOAL_CHECK(page_tokens > 0, "latent_attention: {} tokens per page", page_tokens);
  auto idx = [&](const Tensor& t, int ndim, const char* what) {
    SHOAL_CHECK(t.defined() && t.dtype() == DType::i32 && t.ndim() == ndim && t.is_contiguous(),
                "latent_attention: {} must be contiguous i32 of {} dims, got {}", what, ndim,
                t.defined() ? t.describe() : std::string("undefined"));
  };
  idx(block_table, 2, "block_table");
  idx(row_seq, 1, "row_seq");
  idx(row_len, 1, "row_len");
  SHOAL_CHECK(row_seq.size(0) == q.size(0) && row_len.size(0) == q.size(0),
              "latent_attention: row_seq {} / row_len {} for {} rows", row_seq.describe(),
              row_len.describe(), q.size(0));
  if (key_idx) {
    idx(*key_idx, 2, "key_idx");
    SHOAL_CHECK(key_idx->size(0) == q.size(0), "latent_attention: key_idx {} for {} rows",
                key_idx->describe(), q.size(0));
  }
}

void scatter_rows(const Tensor& src, const Tensor& idx, const Tensor& dst, Device device) {
  rows(src, device, "scatter_rows src");
  rows(dst, device, "scatter_rows dst");
  SHOAL_CHECK(idx.dtype() == DType::i32 && idx.is_contiguous() && idx.numel() == src.size(0) &&
                  dst.size(1) == src.size(1),
              "scatter_rows: src {} idx {} dst {}", src.describe(), idx.describe(), dst.describe());
}

void sample_rows(const Tensor& logits, const std::vector<TokenDraw>& draws, Device device) {
  rows(logits, device, "sample_rows logits");
  SHOAL_CHECK(logits.size(1) >= 1 && logits.size(1) <= INT32_MAX,
              "sample_rows: vocabulary of {} ids (logits {})", logits.size(1), logits.describe());
  for (size_t i = 0; i < draws.size(); ++i) {
    const TokenDraw& d = draws[i];
    SHOAL_CHECK(d.row >= 0 && d.row < logits.size(0), "sample_rows: draw {} names row {} of {}", i,
                d.row, logits.size(0));
    if (d.greedy) continue;
    SHOAL_CHECK(std::isfinite(d.temperature) && d.temperature > 0 && d.top_k >= 0 && d.top_p > 0 &&
                    d.top_p <= 1 && d.min_p >= 0 && d.min_p < 1 && d.u >= 0 && d.u < 1,
                "sample_rows: draw {}: temperature {} top_k {} top_p {} min_p {} u {}", i,
                d.temperature, d.top_k, d.top_p, d.min_p, d.u);
  }
}

kernels::SampleDraw sample_draw(const TokenDraw& d, int64_t vocab) {
  kernels::SampleDraw k;
  k.row = d.row;
  k.greedy = d.greedy ? 1 : 0;
  k.top_k = int32_t(d.top_k < vocab ? d.top_k : 0);
  k.temperature = d.temperature;
  k.top_p = d.top_p;
  k.min_p = d.min_p;
  k.u = d.u;
  return k;
}

}  // namespace shoal::backend_checks
