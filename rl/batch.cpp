// Packing and batch planning.
#include "rl/batch.h"

#include <algorithm>
#include <numeric>

namespace shoal::rl {

Sample sample_from_chat(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages) {
  ChatTokens t = render_chat_tokens(tokenizer, messages);
  SHOAL_CHECK(!t.ids.empty(), "sample_from_chat: the conversation renders to no tokens");
  return {std::move(t.ids), std::move(t.assistant_mask)};
}

Batch pack(const std::vector<Sample>& samples) {
  SHOAL_CHECK(!samples.empty(), "pack: no samples");
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    SHOAL_CHECK(!s.tokens.empty(), "pack: sample {} has no tokens", i);
    SHOAL_CHECK(s.loss_mask.size() == s.tokens.size(),
                "pack: sample {} has {} tokens but a loss mask of {}", i, s.tokens.size(),
                s.loss_mask.size());
    seqs.push_back(s.tokens);
  }
  Batch b = Batch::next_token(seqs);
  for (size_t i = 0; i < samples.size(); ++i) {
    int64_t o = b.cu_seqlens[i];
    const Sample& s = samples[i];
    for (size_t t = 0; t + 1 < s.tokens.size(); ++t)
      if (!s.loss_mask[t + 1]) b.labels.i32()[o + int64_t(t)] = -100;
  }
  return b;
}

std::vector<std::vector<size_t>> plan_batches(const std::vector<Sample>& samples,
                                              int64_t max_tokens) {
  SHOAL_CHECK(max_tokens > 0, "plan_batches: max_tokens must be positive, got {}", max_tokens);
  std::vector<size_t> order(samples.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return samples[a].tokens.size() > samples[b].tokens.size();
  });
  std::vector<std::vector<size_t>> batches;
  std::vector<int64_t> used;
  for (size_t i : order) {
    int64_t len = int64_t(samples[i].tokens.size());
    SHOAL_CHECK(len <= max_tokens, "plan_batches: sample {} has {} tokens, more than the budget {}",
                i, len, max_tokens);
    size_t b = 0;
    while (b < batches.size() && used[b] + len > max_tokens) ++b;
    if (b == batches.size()) {
      batches.emplace_back();
      used.push_back(0);
    }
    batches[b].push_back(i);
    used[b] += len;
  }
  return batches;
}

}  // namespace shoal::rl
