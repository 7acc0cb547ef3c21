// A supervised training loop over batches from a callback: warm-up + cosine learning rate, AdamW,
// router-bias updates, periodic atomic checkpoints (model + optimizer + trainer state) and resume
// from the latest one. Used by `shoal pretrain` and the training tests; RL runs use rl/ + actors/.
#pragma once

#include <functional>
#include <optional>
#include <random>
#include <string>

#include "engine/model/model.h"
#include "engine/optim/adamw.h"

namespace shoal {

struct TrainerConfig {
  int64_t steps = 300;
  float lr = 3e-3f;
  int64_t warmup_steps = 20;
  float min_lr_ratio = 0.1f;  // cosine decays to lr * min_lr_ratio
  AdamWConfig adam;
  double router_bias_gamma = 1e-3;  // aux-loss-free balancing step (0 = off)
  double balance_alpha = 0.0;       // sequence-wise balance loss weight
  // DeepSeek Sparse Attention (V3.2 models): indexer_dense_warmup trains only the indexer, with
  // dense attention, on its KL loss (every other parameter frozen, no LM backward); otherwise a
  // positive indexer_kl_weight trains the indexer on the KL over the selected tokens alongside
  // the LM loss (which never reaches the indexer).
  bool indexer_dense_warmup = false;
  double indexer_kl_weight = 0.0;
  int64_t checkpoint_every = 100;  // 0 = only at the end
  int64_t keep_checkpoints = 2;    // older step_N directories are removed
  std::string out_dir;             // run directory; empty = no checkpoints
};

struct StepStats {
  int64_t step = 0;
  double loss = 0, grad_norm = 0, lr = 0, tokens_per_s = 0;  // loss: the indexer KL in warm-up
  double indexer_kl = 0;
  int64_t tokens = 0;
};

class Trainer {
 public:
  Trainer(Model& model, const TrainerConfig& config, uint64_t seed);
  // Restores model, optimizer, step and RNG from the newest complete checkpoint in out_dir/
  // checkpoints; returns its step, or nullopt when there is none.
  std::optional<int64_t> resume();
  float lr_at(int64_t step) const;
  // Runs until config.steps; next_batch draws from the trainer's RNG (deterministic on resume).
  // on_step is called after every step. When should_stop returns true (e.g. after SIGINT) the
  // loop saves a checkpoint and returns early.
  void run(const std::function<Batch(std::mt19937_64&)>& next_batch,
           const std::function<void(const StepStats&)>& on_step,
           const std::function<bool()>& should_stop = {});
  StepStats train_step(const Batch& batch);
  void save_checkpoint();  // out_dir/checkpoints/step_N (atomic)
  int64_t step() const { return step_; }
  std::mt19937_64& rng() { return rng_; }

 private:
  Model* model_;
  TrainerConfig cfg_;
  AdamW opt_;
  int64_t step_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace shoal
