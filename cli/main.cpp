// The shoal binary: parses the command line (CLI11), runs one subcommand, and turns errors into one
// clear message and an exit code (1 = failed, 2 = usage).
#include <cstdio>
#include <map>

#include "base/error.h"
#include "base/log.h"
#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"shoal: post-train DeepSeek-style models (MLA, DeepSeekMoE) with SFT, DPO and RL"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--log-level) may follow the subcommand too
  app.set_version_flag("--version", "shoal 0.1.0");
  std::string level = "info";
  app.add_option("--log-level", level, "debug, info, warn or error")->capture_default_str();
  std::map<CLI::App*, shoal::cli::Run> runs;
  auto add = [&](const char* name, const char* help, auto fn) {
    CLI::App* sub = app.add_subcommand(name, help);
    runs[sub] = fn(*sub);
  };
  add("check-model",
      "Compare a checkpoint's logits, loss and gradients with a reference file (e.g. from "
      "transformers)",
      shoal::cli::add_check_model);
  add("convert", "Rewrite a checkpoint in Hugging Face layout (dtype, shard size, FP8 dequantized)",
      shoal::cli::add_convert);
  add("pretrain", "Train a small model from scratch on a synthetic sequence task (CPU)",
      shoal::cli::add_pretrain);
  add("generate", "Complete a prompt with a checkpoint (greedy or sampled, through the KV cache)",
      shoal::cli::add_generate);
  add("tokenize", "Encode {\"text\"} JSON lines to token ids (or --decode ids to text)",
      shoal::cli::add_tokenize);
  add("train-tokenizer",
      "Train a byte-level BPE tokenizer (DeepSeek-V3 pre-tokenizer and chat markers) on text files",
      shoal::cli::add_train_tokenizer);
  add("sandboxd", "Serve sandboxed tool calls over ZeroMQ (--bind ipc://PATH|tcp://HOST:PORT)",
      shoal::cli::add_sandboxd);
  add("tool", "List the sandbox tools, or run one call (locally or on --endpoint)",
      shoal::cli::add_tool);
  add("tasks", "Task families and the task store: families, synth, check, list, show, export",
      shoal::cli::add_tasks);
  add("train", "Run a pipeline of SFT, DPO and GRPO stages from a config (or --resume runs/NAME)",
      shoal::cli::add_train);
  add("runs", "Training runs: list, show, export (JSON lines), report (HTML)",
      shoal::cli::add_runs);
  add("eval", "Evaluate a checkpoint on an eval suite (pass@k, per family; --baseline compares)",
      shoal::cli::add_eval);
  add("chat", "Chat with a checkpoint in the terminal, its tool calls run in a sandbox",
      shoal::cli::add_chat);
  add("serve", "Serve a checkpoint over an OpenAI-compatible HTTP API (chat completions)",
      shoal::cli::add_serve);
  // CLI11 reports an unknown first word only as "a subcommand is required": say what was wrong.
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (auto& [sub, run] : runs) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr,
                   "shoal: unknown subcommand '%s' (available: %s)\nRun with --help for "
                   "more information.\n",
                   argv[1], names.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the problem and "Run with --help for more information."
    return 2;
  }
  shoal::log::set_level(level);
  for (auto& [sub, run] : runs) {
    if (!sub->parsed()) continue;
    try {
      return run();
    } catch (const shoal::Error& e) {
      std::fprintf(stderr, "shoal %s: error: %s\n", sub->get_name().c_str(), e.message().c_str());
      shoal::log::debug("at {}:{}", e.file(), e.line());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shoal %s: error: %s\n", sub->get_name().c_str(), e.what());
      return 1;
    }
  }
  return 2;
}
