// Trainer: the loop, the schedule and checkpoint/resume.
#include "engine/train/trainer.h"

#include <unistd.h>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/log.h"

namespace shoal {

namespace fs = std::filesystem;

Trainer::Trainer(Model& model, const TrainerConfig& config, uint64_t seed)
    : model_(&model), cfg_(config), opt_(model.params(), model.backend(), config.adam), rng_(seed) {
  SHOAL_CHECK(!cfg_.indexer_dense_warmup || model.config().is_v32(),
              "trainer: the indexer warm-up needs a deepseek_v32 model");
  // The warm-up trains the indexer alone: freeze everything the LM loss trains.
  for (auto& p : model.params()) p.frozen = cfg_.indexer_dense_warmup && p.lm_grad;
  SHOAL_CHECK(cfg_.steps >= 0 && cfg_.lr > 0 && cfg_.warmup_steps >= 0,
              "trainer: steps {} lr {} warmup {} are invalid", cfg_.steps, cfg_.lr,
              cfg_.warmup_steps);
}

float Trainer::lr_at(int64_t step) const {
  if (step < cfg_.warmup_steps) return cfg_.lr * float(step + 1) / float(cfg_.warmup_steps);
  double span = double(std::max<int64_t>(1, cfg_.steps - cfg_.warmup_steps));
  double t = std::min(1.0, double(step - cfg_.warmup_steps) / span);
  double cosine = 0.5 * (1.0 + std::cos(M_PI * t));
  return float(cfg_.lr * (cfg_.min_lr_ratio + (1.0 - cfg_.min_lr_ratio) * cosine));
}

StepStats Trainer::train_step(const Batch& batch) {
  auto t0 = std::chrono::steady_clock::now();
  model_->params().zero_grads();
  ForwardOptions fo;
  fo.balance_alpha = cfg_.balance_alpha;
  bool warmup = cfg_.indexer_dense_warmup;
  if (warmup) {
    fo.dsa_dense = true;
    fo.indexer_kl_weight = cfg_.indexer_kl_weight > 0 ? cfg_.indexer_kl_weight : 1.0;
  } else {
    fo.indexer_kl_weight = cfg_.indexer_kl_weight;
  }
  ForwardResult r = model_->forward(batch, fo);
  SHOAL_CHECK(std::isfinite(r.loss), "training diverged at step {}: loss is {}", step_ + 1, r.loss);
  if (!warmup) model_->backward();
  StepStats s;
  s.lr = lr_at(step_);
  s.grad_norm = opt_.step(float(s.lr));
  // (In the warm-up the router is frozen: the call only resets the load counts.)
  if (cfg_.router_bias_gamma > 0) model_->update_router_bias(warmup ? 0.0 : cfg_.router_bias_gamma);
  ++step_;
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.step = step_;
  s.loss = warmup ? r.indexer_kl : r.loss;
  s.indexer_kl = r.indexer_kl;
  s.tokens = batch.tokens();
  s.tokens_per_s = double(batch.tokens()) / dt;
  return s;
}

void Trainer::run(const std::function<Batch(std::mt19937_64&)>& next_batch,
                  const std::function<void(const StepStats&)>& on_step,
                  const std::function<bool()>& should_stop) {
  while (step_ < cfg_.steps) {
    Batch b = next_batch(rng_);
    StepStats s = train_step(b);
    if (on_step) on_step(s);
    bool stop = should_stop && should_stop();
    bool last = step_ == cfg_.steps || stop;
    if (!cfg_.out_dir.empty() &&
        (last || (cfg_.checkpoint_every > 0 && step_ % cfg_.checkpoint_every == 0)))
      save_checkpoint();
    if (stop) return;
  }
}

void Trainer::save_checkpoint() {
  SHOAL_CHECK(!cfg_.out_dir.empty(), "save_checkpoint: the trainer has no output directory");
  fs::path root = fs::path(cfg_.out_dir) / "checkpoints";
  fs::create_directories(root);
  fs::path final_dir = root / fmt::format("step_{}", step_);
  fs::path tmp = root / fmt::format(".step_{}.tmp-{}", step_, ::getpid());
  model_->save(tmp.string());
  opt_.save((tmp / "optimizer.safetensors").string());
  nlohmann::json st;
  st["step"] = step_;
  std::ostringstream rng;
  rng << rng_;
  st["rng"] = rng.str();
  {
    std::ofstream f(tmp / "trainer_state.json");
    f << st.dump(2) << "\n";
    f.flush();
    SHOAL_CHECK(f.good(), "cannot write {}", (tmp / "trainer_state.json").string());
  }
  std::error_code ec;
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir);
  // Keep the newest keep_checkpoints.
  std::vector<int64_t> steps;
  for (auto& e : fs::directory_iterator(root)) {
    std::string n = e.path().filename().string();
    if (n.rfind("step_", 0) == 0) steps.push_back(std::stoll(n.substr(5)));
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; cfg_.keep_checkpoints > 0 && i + size_t(cfg_.keep_checkpoints) < steps.size();
       ++i)
    fs::remove_all(root / fmt::format("step_{}", steps[i]), ec);
  log::info("checkpoint {}", final_dir.string());
}

std::optional<int64_t> Trainer::resume() {
  if (cfg_.out_dir.empty()) return std::nullopt;
  fs::path root = fs::path(cfg_.out_dir) / "checkpoints";
  if (!fs::exists(root)) return std::nullopt;
  int64_t best = -1;
  for (auto& e : fs::directory_iterator(root)) {
    std::string n = e.path().filename().string();
    if (n.rfind("step_", 0) != 0 || !fs::exists(e.path() / "trainer_state.json")) continue;
    try {
      best = std::max<int64_t>(best, std::stoll(n.substr(5)));
    } catch (...) {
    }
  }
  if (best < 0) return std::nullopt;
  fs::path dir = root / fmt::format("step_{}", best);
  ModelConfig saved = ModelConfig::load(dir.string());
  SHOAL_CHECK(saved.to_json() == model_->config().to_json(),
              "{}: the checkpoint's config.json differs from this run's model", dir.string());
  model_->load_weights(dir.string());
  opt_.load((dir / "optimizer.safetensors").string());
  std::ifstream f(dir / "trainer_state.json");
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(f);
    step_ = st.at("step").get<int64_t>();
    std::istringstream rng(st.at("rng").get<std::string>());
    rng >> rng_;
    SHOAL_CHECK(!rng.fail(), "bad rng state");
  } catch (const nlohmann::json::exception& e) {
    SHOAL_FAIL("{}: trainer_state.json is invalid: {}", dir.string(), e.what());
  }
  SHOAL_CHECK(step_ == opt_.steps(), "{}: trainer step {} != optimizer step {}", dir.string(),
              step_, opt_.steps());
  return best;
}

}  // namespace shoal
