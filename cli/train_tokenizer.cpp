// shoal train-tokenizer: trains a byte-level BPE tokenizer (DeepSeek-V3's pre-tokenizer and chat
// markers) on text files and writes an HF tokenizer.json atomically. Then reloads it and reports
// its compression on the training text. Not the tokenizer (shoal tokenize uses one).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::cli {

Run add_train_tokenizer(CLI::App& app) {
  struct Opts {
    std::vector<std::string> inputs;
    std::string out;
    int32_t vocab_size = 0;
    int64_t min_frequency = 2;
    bool split_digits = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--input", o->inputs, "training text files (any number)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--vocab-size", o->vocab_size,
                 "total ids, the 14 control/chat markers included (at least 270)")
      ->required()
      ->check(CLI::Range(BpeTrainer::kMinVocabSize, 1 << 30));
  app.add_option("--out", o->out, "the tokenizer.json to write (atomically)")->required();
  app.add_option("--min-frequency", o->min_frequency, "merge a pair only if it occurs this often")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--split-digits", o->split_digits,
               "one pre-token per digit (\\p{N} instead of DeepSeek-V3's \\p{N}{1,3})");
  return [o]() {
    const auto start = std::chrono::steady_clock::now();
    BpeTrainer trainer(o->split_digits);
    for (const std::string& path : o->inputs) trainer.add_file(path);
    const nlohmann::json doc = trainer.train({o->vocab_size, o->min_frequency});
    write_json_atomic(doc, o->out);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // Reload what was written, and measure it on (up to 4 MB of) the first input.
    const Tokenizer tok = Tokenizer::load(o->out);
    std::ifstream in(o->inputs.front(), std::ios::binary);
    std::string sample(4u << 20, '\0');
    in.read(sample.data(), static_cast<std::streamsize>(sample.size()));
    sample.resize(static_cast<size_t>(in.gcount()));
    const size_t tokens = tok.encode(sample).size();
    std::printf(
        "wrote %s: %d ids (%zu merges; asked for at most %d), from %lld words (%zu distinct) in "
        "%.1f s; %.2f bytes/token on %s\n",
        o->out.c_str(), tok.vocab_size(), doc["model"]["merges"].size(), o->vocab_size,
        static_cast<long long>(trainer.total_words()), trainer.distinct_words(), seconds,
        tokens ? double(sample.size()) / double(tokens) : 0.0, o->inputs.front().c_str());
    return 0;
  };
}

}  // namespace shoal::cli
