// The host side of kernels/indexer/topk_select.h (which the CUDA top-k runs per row): its
// re-tracing of libstdc++'s nth_element and partial_sort must pick exactly the sets the real
// algorithms pick, ties included, since the CPU backend (and torch.topk) break ties that way.
// Runs without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "kernels/indexer/topk_select.h"

namespace shoal::kernels {
namespace {

// The reference, exactly as the CPU backend's topk_rows runs it.
std::multiset<int64_t> reference_set(const std::vector<double>& v, int64_t kk) {
  std::vector<std::pair<double, int64_t>> row(v.size());
  for (size_t j = 0; j < v.size(); ++j) row[j] = {v[j], int64_t(j)};
  auto greater = [](const std::pair<double, int64_t>& x, const std::pair<double, int64_t>& y) {
    return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first;
  };
  if (kk * 64 <= int64_t(row.size()))
    std::partial_sort(row.begin(), row.begin() + kk, row.end(), greater);
  else
    std::nth_element(row.begin(), row.begin() + kk - 1, row.end(), greater);
  std::multiset<int64_t> s;
  for (int64_t j = 0; j < kk; ++j) s.insert(row[size_t(j)].second);
  return s;
}

std::multiset<int64_t> emulated_set(const std::vector<double>& v, int64_t kk) {
  std::vector<topk::Item> row(v.size());
  for (size_t j = 0; j < v.size(); ++j) row[j] = {v[j], int32_t(j)};
  topk::select_like_reference(row.data(), kk, int64_t(row.size()));
  std::multiset<int64_t> s;
  for (int64_t j = 0; j < kk; ++j) s.insert(row[size_t(j)].p);
  return s;
}

TEST(TopkSelect, MatchesLibstdcxxSelectionWithTies) {
  std::mt19937 rng(7);
  int64_t rows = 0;
  for (int64_t len : {1, 2, 3, 4, 5, 8, 17, 63, 64, 65, 128, 300, 1000, 4099})
    for (int64_t k : {1, 2, 3, 7, 16, 64, 500})
      for (int levels : {2, 5, 1000}) {  // few distinct values = many ties
        const int64_t kk = std::min(k, len);
        for (int rep = 0; rep < 4; ++rep) {
          std::vector<double> v(static_cast<size_t>(len));
          std::uniform_int_distribution<int> u(0, levels - 1);
          const int64_t causal = std::uniform_int_distribution<int64_t>(0, len - 1)(rng);
          for (int64_t j = 0; j < len; ++j)
            v[size_t(j)] = j <= causal ? double(std::max(0, u(rng) - levels / 3)) : -DBL_MAX;
          if (rep == 3 && len > 2) v[1] = NAN;  // NaN sorts first under the comparator
          ASSERT_EQ(reference_set(v, kk), emulated_set(v, kk))
              << "len " << len << " k " << kk << " levels " << levels << " rep " << rep;
          ++rows;
        }
      }
  std::printf("[ topk_select ] %lld rows: emulated selection == std::nth_element/partial_sort\n",
              static_cast<long long>(rows));
}

TEST(TopkSelect, BetterOrdersBestFirstThenByPosition) {
  std::vector<topk::Item> row = {{1.0, 4}, {2.0, 9}, {1.0, 2}, {3.0, 0}, {2.0, 1}};
  topk::make_heap(row.data(), 5, topk::Better());
  topk::sort_heap(row.data(), 5, topk::Better());
  const std::vector<int32_t> want = {0, 1, 9, 2, 4};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(row[i].p, want[i]) << i;
}

}  // namespace
}  // namespace shoal::kernels
