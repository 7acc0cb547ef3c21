// The Backend ops that have a reference written once for every backend (backend.h): the MoE
// sort, the expert GEMMs (three layouts) and the load counts with device-side group boundaries,
// expressed through moe_sort and grouped_matmul with the boundaries read on the host. The CPU
// backend uses these as they are; a device backend overrides them to skip the host round trip.
#include "engine/backend.h"

#include <climits>

#include "base/error.h"
#include "engine/backend_checks.h"

namespace shoal {

void Backend::combine_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                           bool accumulate, Tensor& dst) {
  SHOAL_CHECK(src.ndim() == 2 && dst.ndim() == 2 && div >= 1 && src.size(0) == dst.size(0) * div &&
                  idx.numel() == src.size(0) && src.size(1) == dst.size(1),
              "combine_rows: src {} idx {} dst {} div {}", src.describe(), idx.describe(),
              dst.describe(), div);
  if (!accumulate) zero(dst);
  scatter_add_rows(src, idx, div, w, dst);
}

std::unique_ptr<OpGraph> Backend::record(const std::function<void()>&, std::string& why) {
  why = fmt::format("the {} backend does not record op sequences", device_name(device()));
  return nullptr;
}

void Backend::moe_sort_offsets(const Tensor& topk_idx, int64_t n_experts, Tensor& order,
                               Tensor& offsets) {
  backend_checks::moe_offsets(offsets, n_experts, device());
  std::vector<int64_t> counts;
  moe_sort(topk_idx, n_experts, order, counts);
  Tensor h = Tensor::empty({n_experts + 1}, DType::i32);
  int64_t run = 0;
  h.i32()[0] = 0;
  for (int64_t e = 0; e < n_experts; ++e) {
    run += counts[size_t(e)];
    SHOAL_CHECK(run <= INT32_MAX, "moe_sort_offsets: {} assignments exceed int32", run);
    h.i32()[e + 1] = int32_t(run);
  }
  copy(h, offsets);
}

void Backend::grouped_matmul_dev(const Tensor& a, const Tensor& b, Tensor& c,
                                 const Tensor& offsets) {
  backend_checks::grouped_matmul_dev(a, b, c, offsets, device());
  const std::vector<int64_t> rows =
      backend_checks::group_offsets(to_host(offsets), a.size(0), "grouped_matmul_dev");
  grouped_matmul(a, false, b, true, c, rows);
}

void Backend::grouped_matmul_dev_nn(const Tensor& a, const Tensor& b, Tensor& c,
                                    const Tensor& offsets) {
  backend_checks::grouped_matmul_dev(a, b, c, offsets, device(), backend_checks::DevLayout::nn);
  const std::vector<int64_t> rows =
      backend_checks::group_offsets(to_host(offsets), a.size(0), "grouped_matmul_dev_nn");
  grouped_matmul(a, false, b, false, c, rows);
}

void Backend::grouped_matmul_dev_tn(const Tensor& a, const Tensor& b, Tensor& c,
                                    const Tensor& offsets, float alpha, float beta) {
  backend_checks::grouped_matmul_dev(a, b, c, offsets, device(), backend_checks::DevLayout::tn);
  const std::vector<int64_t> rows =
      backend_checks::group_offsets(to_host(offsets), a.size(0), "grouped_matmul_dev_tn");
  grouped_matmul(a, true, b, false, c, rows, alpha, beta);
}

void Backend::add_group_sizes(const Tensor& offsets, Tensor& counts) {
  backend_checks::add_group_sizes(offsets, counts, device());
  const Tensor o = to_host(offsets);
  const int32_t* p = o.i32();
  const int64_t groups = counts.numel();
  SHOAL_CHECK(p[0] == 0, "add_group_sizes: offsets[0] is {}, expected 0", p[0]);
  for (int64_t g = 0; g < groups; ++g)
    SHOAL_CHECK(p[g + 1] >= p[g], "add_group_sizes: offsets decrease at group {} ({} then {})", g,
                p[g], p[g + 1]);
  Tensor h = to_host(counts);
  for (int64_t g = 0; g < groups; ++g) h.i64()[g] += int64_t(p[g + 1]) - int64_t(p[g]);
  copy(h, counts);
}

}  // namespace shoal
