// A tiny chat model for the `shoal eval` and `shoal chat` tests, made once per test process
// through the CLI as a user would: a byte-level BPE tokenizer (`shoal train-tokenizer`) and a
// short SFT run (`shoal train`) of a 2-layer DeepSeek-style model on a handful of conversations,
// overfitted on purpose: asked "What is A+B?" it calls the calculator tool, then answers; told
// "Laugh" it answers "ha ha ha ..." without end (greedy decoding never picks the end of sentence
// after " ha"), which gives the Ctrl-C test a generation that is still running. The run keeps
// two checkpoints (halfway and at the end): two models for the --baseline tests. Test support.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/cli/cli_runner.h"

namespace shoal::test {

struct TinyChatModel {
  std::filesystem::path root;    // everything lives under it
  std::filesystem::path model;   // the final checkpoint (tokenizer.json inside)
  std::filesystem::path middle;  // the halfway checkpoint
  std::string error;             // why it could not be made (the tests fail with it)
  double seconds = 0;
  static constexpr int kSteps = 160;
};

namespace detail {

// What the sandbox's calculator answers (tool_reply_text of its reply).
inline std::string calc_output(int v) {
  std::string s = std::to_string(v);
  return nlohmann::json{{"decimal", s}, {"is_integer", true}, {"value", s}}.dump();
}

inline nlohmann::json calc_conversation(int a, int b) {
  using nlohmann::json;
  std::string expr = std::to_string(a) + "+" + std::to_string(b);
  json call = {
      {"id", "call_0"},
      {"type", "function"},
      {"function", {{"name", "calculator"}, {"arguments", json{{"expression", expr}}.dump()}}}};
  return {{"messages",
           {{{"role", "user"}, {"content", "What is " + expr + "?"}},
            {{"role", "assistant"}, {"content", ""}, {"tool_calls", {call}}},
            {{"role", "tool"}, {"tool_call_id", "call_0"}, {"content", calc_output(a + b)}},
            {{"role", "assistant"}, {"content", "The answer is " + std::to_string(a + b) + "."}}}}};
}

inline nlohmann::json laugh_conversation() {
  std::string ha = "ha";
  for (int i = 0; i < 300; ++i) ha += " ha";
  return {{"messages",
           {{{"role", "user"}, {"content", "Laugh"}}, {{"role", "assistant"}, {"content", ha}}}}};
}

inline TinyChatModel make_tiny_chat_model() {
  namespace fs = std::filesystem;
  using nlohmann::json;
  TinyChatModel m;
  auto t0 = std::chrono::steady_clock::now();
  m.root = fs::temp_directory_path() / ("shoal_chat_model_" + std::to_string(getpid()));
  fs::remove_all(m.root);
  fs::create_directories(m.root);
  {
    std::ofstream f(m.root / "sft.jsonl");
    std::ofstream corpus(m.root / "corpus.txt");
    int pairs[][2] = {{12, 7}, {3, 4}, {25, 17}, {8, 9}, {40, 2}, {6, 13}, {31, 5}, {2, 2}};
    for (auto& p : pairs) {
      std::string line = calc_conversation(p[0], p[1]).dump();
      f << line << "\n";
      corpus << line << "\n";
    }
    std::string laugh = laugh_conversation().dump();
    f << laugh << "\n";
    corpus << laugh << "\n";
  }
  ShoalResult tok = run_shoal("train-tokenizer --input " + (m.root / "corpus.txt").string() +
                              " --vocab-size 320 --out " + (m.root / "tokenizer.json").string());
  if (tok.code != 0) {
    m.error = "train-tokenizer failed: " + tok.out;
    return m;
  }
  json cfg = {
      {"seed", 3},
      {"model", {{"preset", "tiny-moe"}, {"overrides", {{"max_position_embeddings", 8192}}}}},
      {"tokenizer", {{"file", (m.root / "tokenizer.json").string()}}},
      {"list_tools", false},
      {"max_seq_len", 1024},
      {"eval_before", false},
      {"eval_after_stage", false},
      {"checkpoint", {{"every", TinyChatModel::kSteps / 2}, {"keep", 2}}},
      {"stages",
       {{{"type", "sft"},
         {"steps", TinyChatModel::kSteps},
         {"lr", 5e-3},
         {"warmup_steps", 5},
         {"min_lr_ratio", 0.3},
         {"batch_tokens", 1024},
         {"jsonl", (m.root / "sft.jsonl").string()}}}}};
  {
    std::ofstream f(m.root / "train.json");
    f << cfg.dump(2);
  }
  ShoalResult tr = run_shoal("train " + (m.root / "train.json").string() + " --runs-dir " +
                             m.root.string() + " --name run --no-report");
  if (tr.code != 0) {
    m.error = "shoal train failed: " + tr.out;
    return m;
  }
  m.model = m.root / "run" / "checkpoints" / ("step_" + std::to_string(TinyChatModel::kSteps));
  m.middle = m.root / "run" / "checkpoints" / ("step_" + std::to_string(TinyChatModel::kSteps / 2));
  if (!fs::exists(m.model / "tokenizer.json") || !fs::exists(m.middle / "config.json"))
    m.error = "the run did not leave its checkpoints: " + tr.out;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}

struct TinyChatModelHolder {
  TinyChatModel model = make_tiny_chat_model();
  ~TinyChatModelHolder() { std::filesystem::remove_all(model.root); }
};

}  // namespace detail

// Made on first use, removed when the process ends.
inline const TinyChatModel& tiny_chat_model() {
  static detail::TinyChatModelHolder holder;
  return holder.model;
}

}  // namespace shoal::test
