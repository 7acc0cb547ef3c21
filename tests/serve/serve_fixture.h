// What the `shoal serve` tests share: two tiny model directories made once per test binary run (a
// byte-level BPE tokenizer trained on the test conversations; a random-weight model for the
// protocol tests, and the same model fine-tuned with Policy::sft_step until it answers the weather
// questions with a get_weather tool call), a `shoal serve` child process on a free port, and a
// runner for the Node scripts that use the official `openai` npm package.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "actors/agent_loop.h"
#include "actors/policy.h"
#include "engine/model/config.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/tokenizer.h"
#include "rl/batch.h"

extern char** environ;

namespace shoal::serve::testing {

namespace fs = std::filesystem;
using nlohmann::json;

inline json weather_tools() {
  return json::parse(R"([{"type": "function", "function": {"name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}])");
}

inline const std::vector<std::string>& cities() {
  static const std::vector<std::string> c = {"Paris", "Tokyo", "Lima", "Oslo"};
  return c;
}

inline json weather_question(const std::string& city) {
  return json::array({{{"role", "user"}, {"content", "What is the weather in " + city + "?"}}});
}

// The conversations the tool model is fine-tuned on, as the server renders them (the tools listed
// in a system message by actors::agent_prompt), each ending in the assistant's answer.
inline std::vector<json> training_conversations() {
  std::vector<json> out;
  for (const std::string& city : cities()) {
    json m = actors::agent_prompt(weather_question(city), weather_tools(), true);
    m.push_back(
        {{"role", "assistant"},
         {"content", nullptr},
         {"tool_calls", json::array({{{"id", "call_0"},
                                      {"type", "function"},
                                      {"function",
                                       {{"name", "get_weather"},
                                        {"arguments", "{\"city\": \"" + city + "\"}"}}}}})}});
    out.push_back(m);
  }
  json hello = json::array({{{"role", "user"}, {"content", "Say hello."}},
                            {{"role", "assistant"}, {"content", "Hello! How can I help?"}}});
  out.push_back(hello);
  return out;
}

struct Models {
  std::string random_dir, tools_dir;
  double sft_seconds = 0;
  double final_loss = 0;
};

// Made once: tokenizer, random model, fine-tuned tool model (a few seconds of SFT).
inline const Models& models() {
  static Models m = [] {
    Models out;
    fs::path root = fs::temp_directory_path() / ("shoal_serve_test_" + std::to_string(getpid()));
    fs::create_directories(root);
    static std::string to_remove = root.string();
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(to_remove, ec);
    });
    BpeTrainer trainer;
    for (const json& conv : training_conversations())
      for (int i = 0; i < 4; ++i) trainer.add_text(render_chat(conv));
    trainer.add_text("The quick brown fox jumps over the lazy dog. 0123456789 {}[]\":,");
    json tok_json = trainer.train({.vocab_size = 420, .min_frequency = 2});
    write_json_atomic(tok_json, (root / "tokenizer.json").string());
    Tokenizer tok = Tokenizer::load((root / "tokenizer.json").string());

    json cfg_json = json::parse(
        std::ifstream(std::string(SHOAL_TEST_DATA) + "/../../configs/models/tiny-moe.json"));
    cfg_json["vocab_size"] = tok.vocab_size();
    cfg_json["max_position_embeddings"] = 1024;
    ModelConfig cfg = ModelConfig::from_json(cfg_json, "serve test model");
    auto save = [&](Model& model, const fs::path& dir) {
      model.save(dir.string());
      fs::copy_file(root / "tokenizer.json", dir / "tokenizer.json",
                    fs::copy_options::overwrite_existing);
    };
    {
      Model random(cfg, cpu_backend());
      random.init_random(7);
      save(random, root / "random");
    }
    auto model = std::make_unique<Model>(cfg, cpu_backend());
    model->init_random(7);
    actors::Policy policy(std::move(model), {});
    std::vector<rl::Sample> samples;
    for (const json& conv : training_conversations())
      samples.push_back(rl::sample_from_chat(tok, chat_messages_from_json(conv)));
    policy.pause_generation();
    auto t0 = std::chrono::steady_clock::now();
    double loss = 0;
    for (int step = 0; step < 300; ++step) {
      actors::Metrics metrics = policy.sft_step(samples, step < 20 ? 3e-3 * (step + 1) / 20 : 3e-3);
      loss = metrics.at("loss");
      if (loss < 0.01) break;
    }
    out.sft_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.final_loss = loss;
    save(policy.model(), root / "tools");
    out.random_dir = (root / "random").string();
    out.tools_dir = (root / "tools").string();
    return out;
  }();
  return m;
}

// `shoal serve` as a child process on a free port; stopped with SIGTERM when destroyed.
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& model_dir, std::vector<std::string> extra = {}) {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("shoal_serve_proc_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
    std::vector<std::string> args = {SHOAL_BINARY, "serve", "--model", model_dir,
                                     "--port",     "0",     "--name",  "tiny"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, (dir_ / "stdout").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, (dir_ / "stderr").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = posix_spawn(&pid_, SHOAL_BINARY, &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("cannot start " + std::string(SHOAL_BINARY));
    const std::string marker = "listening on http://127.0.0.1:";
    // Up to 2 minutes: loading a model on a machine busy with parallel tests can be slow.
    for (int i = 0; i < 2400 && port_ == 0; ++i) {
      std::string out = read(dir_ / "stdout");
      if (auto at = out.find(marker);
          at != std::string::npos && out.find(' ', at + marker.size()) != std::string::npos)
        port_ = std::stoi(out.substr(at + marker.size()));
      int status = 0;
      if (port_ == 0 && waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("shoal serve exited: " + read(dir_ / "stderr"));
      }
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (port_ == 0) throw std::runtime_error("shoal serve did not start: " + stderr_text());
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }
  std::string stderr_text() const { return read(dir_ / "stderr"); }
  // True while the process runs.
  bool alive() const {
    int status = 0;
    return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
  }
  // Stops it with SIGTERM; returns the exit status (-1 when it did not exit normally).
  int terminate() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  static std::string read(const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  fs::path dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// The installed `openai` npm package (scripts/install-deps puts it under the data directory).
inline std::string openai_module() {
  return std::string(SHOAL_DATA_DIR) + "/npm/node_modules/openai";
}

struct NodeResult {
  int status = -1;
  std::string output;  // stdout and stderr
  json result;         // the last stdout line that parses as JSON
};

// Runs tests/serve/js/NAME.cjs against `server` (OPENAI_BASE_URL, MODEL, OPENAI_API_KEY,
// SHOAL_OPENAI_MODULE in its environment).
inline NodeResult run_node(const std::string& script, const ServerProcess& server,
                           const std::string& api_key = "unused") {
  std::string cmd = "SHOAL_OPENAI_MODULE='" + openai_module() + "' OPENAI_BASE_URL='" +
                    server.base_url() + "' OPENAI_API_KEY='" + api_key + "' MODEL=tiny node '" +
                    std::string(SHOAL_TEST_DATA) + "/../serve/js/" + script + "' 2>&1";
  NodeResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::stringstream ss(r.output);
  std::string line;
  while (std::getline(ss, line)) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object()) r.result = j;
  }
  return r;
}

}  // namespace shoal::serve::testing
