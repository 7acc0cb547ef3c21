// Synthetic task sampling and scoring.
#include "engine/train/synthetic.h"

#include <algorithm>

namespace shoal {

void SyntheticTask::validate() const {
  SHOAL_CHECK(kind == "copy" || kind == "reverse" || kind == "sort",
              "unknown synthetic task '{}' (copy, reverse or sort)", kind);
  SHOAL_CHECK(alphabet >= 2 && min_len >= 1 && max_len >= min_len,
              "synthetic task: alphabet {} and lengths [{}, {}] are invalid", alphabet, min_len,
              max_len);
}

SyntheticTask::Example SyntheticTask::sample(std::mt19937_64& rng) const {
  std::uniform_int_distribution<int64_t> len_d(min_len, max_len), sym(0, alphabet - 1);
  int64_t len = len_d(rng);
  std::vector<int32_t> a(static_cast<size_t>(len));
  for (auto& x : a) x = int32_t(4 + sym(rng));
  std::vector<int32_t> f = a;
  if (kind == "reverse") std::reverse(f.begin(), f.end());
  if (kind == "sort") std::sort(f.begin(), f.end());
  Example e;
  e.tokens.push_back(kBos);
  e.tokens.insert(e.tokens.end(), a.begin(), a.end());
  e.tokens.push_back(kSep);
  e.answer_start = int64_t(e.tokens.size());
  e.tokens.insert(e.tokens.end(), f.begin(), f.end());
  e.tokens.push_back(kEos);
  return e;
}

Batch SyntheticTask::batch(std::mt19937_64& rng, int64_t sequences) const {
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < sequences; ++i) {
    Example e = sample(rng);
    seqs.push_back(e.tokens);
    starts.push_back(e.answer_start);
  }
  Batch b = Batch::next_token(seqs);
  // Keep labels only where the *target* is an answer token or <eos>: position t predicts t + 1.
  for (size_t s = 0; s < seqs.size(); ++s) {
    int64_t o = b.cu_seqlens[s];
    for (int64_t t = 0; t + 1 < starts[s]; ++t) b.labels.i32()[o + t] = -100;
  }
  return b;
}

double synthetic_accuracy(Model& model, const SyntheticTask& task, std::mt19937_64& rng,
                          int64_t examples) {
  Batch b = task.batch(rng, examples);
  ForwardOptions opt;
  opt.keep_logits = true;
  opt.need_backward = false;
  ForwardResult r = model.forward(b, opt);
  int64_t v = r.logits.size(1), correct = 0;
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s) {
    bool ok = true;
    for (int64_t i = b.cu_seqlens[s]; i < b.cu_seqlens[s + 1]; ++i) {
      int32_t want = b.labels.i32()[i];
      if (want == -100) continue;
      const float* row = r.logits.f32() + i * v;
      if (std::max_element(row, row + v) - row != want) ok = false;
    }
    correct += ok;
  }
  return double(correct) / double(examples);
}

}  // namespace shoal
