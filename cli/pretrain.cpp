// shoal pretrain: trains a small DeepSeek-V3-architecture model from scratch on a synthetic
// sequence task, on the CPU, with progress lines, periodic checkpoints (Ctrl-C saves one and
// stops) and --resume. The quick start's end-to-end job until RL runs exist.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "engine/train/synthetic.h"
#include "engine/train/trainer.h"

namespace shoal::cli {
namespace {
std::atomic<bool> g_stop{false};
void on_sigint(int) {
  g_stop = true;
}

std::string hms(double seconds) {
  int64_t s = int64_t(seconds + 0.5);
  return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
}
}  // namespace

Run add_pretrain(CLI::App& app) {
  struct Opts {
    std::string model = "configs/models/tiny-moe.json", out = "runs/pretrain-reverse";
    SyntheticTask task;
    TrainerConfig train;
    int64_t batch = 32, log_every = 20;
    uint64_t seed = 1;
    bool resume = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--task", o->task.kind, "copy, reverse or sort")->capture_default_str();
  app.add_option("--model", o->model, "model config.json (DeepSeek-V3 architecture)")
      ->capture_default_str();
  app.add_option("--out", o->out, "run directory (checkpoints/step_N inside)")
      ->capture_default_str();
  app.add_option("--steps", o->train.steps, "optimizer steps")->capture_default_str();
  app.add_option("--batch", o->batch, "sequences per step")->capture_default_str();
  app.add_option("--lr", o->train.lr, "peak learning rate")->capture_default_str();
  app.add_option("--warmup", o->train.warmup_steps, "warm-up steps")->capture_default_str();
  app.add_option("--checkpoint-every", o->train.checkpoint_every, "steps between checkpoints")
      ->capture_default_str();
  app.add_option("--log-every", o->log_every, "steps between progress lines")
      ->capture_default_str();
  app.add_option("--seed", o->seed, "initialisation and data seed")->capture_default_str();
  app.add_flag("--resume", o->resume, "continue from the newest checkpoint in --out");
  return [o]() {
    o->task.validate();
    SHOAL_CHECK(o->batch > 0 && o->log_every > 0, "--batch and --log-every must be positive");
    // Presets under configs/ are found from any working directory (relative to the source tree).
    namespace fs = std::filesystem;
    if (!fs::exists(o->model) && fs::path(o->model).is_relative() &&
        fs::exists(fs::path(SHOAL_SOURCE_DIR) / o->model))
      o->model = (fs::path(SHOAL_SOURCE_DIR) / o->model).string();
    ModelConfig cfg = ModelConfig::load(o->model);
    SHOAL_CHECK(cfg.vocab_size >= o->task.vocab(),
                "{}: vocab_size {} is smaller than the task's {} tokens", o->model, cfg.vocab_size,
                o->task.vocab());
    SHOAL_CHECK(cfg.max_position_embeddings >= 2 * o->task.max_len + 3,
                "{}: max_position_embeddings {} is too small for sequences of {} tokens", o->model,
                cfg.max_position_embeddings, 2 * o->task.max_len + 3);
    bool has_ckpt = fs::exists(fs::path(o->out) / "checkpoints");
    SHOAL_CHECK(o->resume || !has_ckpt,
                "{} already holds checkpoints: pass --resume to continue that run, or choose "
                "another --out",
                o->out);
    o->train.out_dir = o->out;

    // The run's options live in OUT/run.json; a resumed run must use the same ones (else the data
    // stream or the schedule would silently change). Only --steps may grow, with a note.
    nlohmann::json opts = {{"task", o->task.kind},    {"model", o->model},
                           {"steps", o->train.steps}, {"batch", o->batch},
                           {"lr", o->train.lr},       {"warmup", o->train.warmup_steps},
                           {"seed", o->seed},         {"model_config", cfg.to_json()}};
    fs::path run_json = fs::path(o->out) / "run.json";
    if (o->resume && fs::exists(run_json)) {
      nlohmann::json prev;
      try {
        prev = nlohmann::json::parse(std::ifstream(run_json));
      } catch (const nlohmann::json::exception& e) {
        SHOAL_FAIL("{}: invalid JSON: {}", run_json.string(), e.what());
      }
      for (auto& [key, value] : opts.items()) {
        if (key == "steps" || key == "model" || prev.value(key, nlohmann::json()) == value)
          continue;
        SHOAL_FAIL("{}: this run was started with {} = {}, not {}: resume with the same options",
                   run_json.string(), key, prev.value(key, nlohmann::json()).dump(), value.dump());
      }
      if (prev.value("steps", int64_t(0)) != o->train.steps)
        std::printf("note: --steps changed from %lld to %lld: the learning-rate schedule changes\n",
                    (long long)prev.value("steps", int64_t(0)), (long long)o->train.steps);
    }
    fs::create_directories(o->out);
    {
      std::ofstream f(run_json.string() + ".tmp");
      f << opts.dump(2) << "\n";
      SHOAL_CHECK(f.good(), "cannot write {}", run_json.string());
    }
    fs::rename(run_json.string() + ".tmp", run_json);

    Backend& be = cpu_backend();
    Model model(cfg, be);
    model.init_random(o->seed);
    Trainer trainer(model, o->train, o->seed);
    if (o->resume) {
      auto step = trainer.resume();
      if (step)
        std::printf("resumed from %s/checkpoints/step_%lld\n", o->out.c_str(), (long long)*step);
      else
        std::printf("no checkpoint in %s yet: starting from step 0\n", o->out.c_str());
    }
    std::printf("pretrain: task %s, model %s (%lld parameters), %lld steps x %lld sequences\n",
                o->task.kind.c_str(), o->model.c_str(), (long long)model.params().trainable_numel(),
                (long long)o->train.steps, (long long)o->batch);
    std::fflush(stdout);
    std::signal(SIGINT, on_sigint);
    std::signal(SIGTERM, on_sigint);
    auto t0 = std::chrono::steady_clock::now();
    int64_t first = trainer.step();
    double loss_sum = 0;
    int64_t loss_n = 0;
    trainer.run([&](std::mt19937_64& rng) { return o->task.batch(rng, o->batch); },
                [&](const StepStats& s) {
                  loss_sum += s.loss;
                  ++loss_n;
                  if (s.step % o->log_every && s.step != o->train.steps) return;
                  double el =
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                  double eta = el / double(s.step - first) * double(o->train.steps - s.step);
                  std::printf(
                      "step %5lld/%lld  loss %.4f  lr %.2e  grad-norm %.3f  %6.0f tok/s  "
                      "elapsed %s  eta %s\n",
                      (long long)s.step, (long long)o->train.steps, loss_sum / loss_n, s.lr,
                      s.grad_norm, s.tokens_per_s, hms(el).c_str(), hms(eta).c_str());
                  std::fflush(stdout);
                  loss_sum = 0;
                  loss_n = 0;
                },
                [] { return g_stop.load(); });
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (g_stop) {
      std::printf("interrupted: saved %s/checkpoints/step_%lld (continue with --resume)\n",
                  o->out.c_str(), (long long)trainer.step());
      return 130;
    }
    std::mt19937_64 eval_rng(o->seed ^ 0x5eed5eedULL);
    double acc = synthetic_accuracy(model, o->task, eval_rng, 256);
    std::printf("held-out exact match (teacher-forced, 256 examples): %.1f%%\n", 100.0 * acc);
    std::printf("checkpoint: %s/checkpoints/step_%lld (Hugging Face format)\n", o->out.c_str(),
                (long long)trainer.step());
    return 0;
  };
}

}  // namespace shoal::cli
