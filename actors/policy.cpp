// The engine owner's policy (policy.h): generation through the scheduler and the three kinds of
// training step.
#include "actors/policy.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "rl/reference.h"
#include "rl/sft.h"

namespace shoal::actors {

namespace fs = std::filesystem;

namespace {

void copy_weights(Model& from, Model& to) {
  auto a = from.checkpoint_tensors();
  auto b = to.checkpoint_tensors();
  SHOAL_CHECK(a.size() == b.size(), "reference copy: {} vs {} tensors", a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    SHOAL_CHECK(a[i].name == b[i].name, "reference copy: {} vs {}", a[i].name, b[i].name);
    to.backend().copy(a[i].view, b[i].view);
  }
}

// Per-row values of a packed batch from per-token values of its samples: row t of a sequence
// scores token t + 1, so it takes that token's value (the last row of each sequence gets 0).
Tensor rows_from_tokens(const Batch& b, const std::vector<const std::vector<float>*>& per_token) {
  Tensor out = Tensor::empty({b.tokens()}, DType::f32);
  float* o = out.data<float>();
  SHOAL_CHECK(per_token.size() + 1 == b.cu_seqlens.size(), "{} samples for {} sequences",
              per_token.size(), b.cu_seqlens.size() - 1);
  for (size_t s = 0; s < per_token.size(); ++s) {
    int64_t begin = b.cu_seqlens[s], end = b.cu_seqlens[s + 1];
    SHOAL_CHECK(static_cast<int64_t>(per_token[s]->size()) == end - begin,
                "sample {}: {} values for {} tokens", s, per_token[s]->size(), end - begin);
    for (int64_t t = begin; t < end; ++t)
      o[t] = t + 1 < end ? (*per_token[s])[static_cast<size_t>(t - begin + 1)] : 0.0f;
  }
  return out;
}

}  // namespace

Policy::Policy(std::unique_ptr<Model> model, const PolicyConfig& config)
    : model_(std::move(model)), cfg_(config), opt_(model_->params(), model_->backend(), cfg_.adam) {
  resume_generation();
}

Policy::~Policy() {
  pause_generation();
}

void Policy::pause_generation() {
  if (!running_) return;
  scheduler_->stop();
  scheduler_.reset();  // the cache holds latents of the old weights: start clean
  running_ = false;
}

void Policy::resume_generation() {
  if (running_) return;
  SchedulerConfig sc;
  sc.max_batch_tokens = cfg_.max_batch_tokens;
  sc.max_sequences = cfg_.max_sequences;
  sc.cache.pages = cfg_.cache_pages;
  sc.cache.page_tokens = cfg_.page_tokens;
  scheduler_ = std::make_unique<Scheduler>(*model_, sc);
  scheduler_->start();
  running_ = true;
}

std::shared_ptr<RequestHandle> Policy::submit(const std::vector<int32_t>& context,
                                              const SamplingParams& o,
                                              std::function<void()> on_done) {
  SHOAL_CHECK(running_, "generation is paused (a training step is running)");
  GenerationRequest req;
  req.prompt = context;
  req.sampling = o;
  req.on_done = std::move(on_done);
  return scheduler_->submit(std::move(req));
}

GenOutput Policy::output(RequestHandle& handle) const {
  std::vector<Completion> done = handle.wait();
  SHOAL_CHECK(done.size() == 1, "generation returned {} completions", done.size());
  const Completion& c = done[0];
  SHOAL_CHECK(c.finish != FinishReason::error, "generation failed: {}", c.error);
  GenOutput out;
  out.ids = c.ids();
  out.logprobs = c.logprobs();
  out.stopped = c.finish == FinishReason::stop_id;
  out.weight_version = version_;  // weights change only while generation is paused
  return out;
}

GenOutput Policy::generate(const std::vector<int32_t>& context, const SamplingParams& o) {
  return output(*submit(context, o, nullptr));
}

Metrics Policy::finish_step(double loss, double lr, int64_t tokens, double seconds) {
  SHOAL_CHECK(std::isfinite(loss), "the loss is {} (diverged); the step was not applied", loss);
  Metrics m;
  m["loss"] = loss;
  m["grad_norm"] = opt_.step(static_cast<float>(lr));
  if (cfg_.router_bias_gamma > 0) model_->update_router_bias(cfg_.router_bias_gamma);
  m["lr"] = lr;
  m["tokens"] = static_cast<double>(tokens);
  m["train_tokens_per_s"] = static_cast<double>(tokens) / std::max(seconds, 1e-9);
  ++version_;
  return m;
}

Metrics Policy::sft_step(const std::vector<rl::Sample>& samples, double lr) {
  auto t0 = std::chrono::steady_clock::now();
  Batch b = rl::pack(samples);
  model_->params().zero_grads();
  ForwardOptions fo;
  fo.token_logprobs = true;
  ForwardResult r = model_->forward(b, fo);
  rl::ObjectiveResult obj = rl::sft_loss(b, r.token_logprobs);
  SHOAL_CHECK(std::isfinite(obj.loss), "sft loss is {}; the step was not applied", obj.loss);
  model_->backward(&obj.dlogp);
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Metrics m = finish_step(obj.loss, lr, b.tokens(), dt);
  for (auto& [k, v] : obj.metrics) m[k] = v;
  return m;
}

void Policy::snapshot_reference() {
  reference_ = std::make_unique<Model>(model_->config(), model_->backend());
  copy_weights(*model_, *reference_);
  ref_cache_ = std::make_unique<rl::ReferenceLogprobs>(*reference_);
}

Tensor Policy::reference_logprobs(const std::vector<rl::Sample>& samples, const Batch& b) {
  if (!reference_) snapshot_reference();
  return ref_cache_->token_logprobs(samples, b);
}

Metrics Policy::dpo_step(const std::vector<rl::Sample>& pairs, const rl::DpoConfig& cfg,
                         double lr) {
  SHOAL_CHECK(!pairs.empty() && pairs.size() % 2 == 0,
              "DPO needs [chosen, rejected] pairs, got {} samples", pairs.size());
  auto t0 = std::chrono::steady_clock::now();
  Batch b = rl::pack(pairs);
  Tensor ref = reference_logprobs(pairs, b);
  std::vector<double> ref_seq = rl::sequence_logprobs(b, ref);
  model_->params().zero_grads();
  ForwardOptions fo;
  fo.token_logprobs = true;
  ForwardResult r = model_->forward(b, fo);
  rl::ObjectiveResult obj = rl::dpo_loss(b, r.token_logprobs, ref_seq, cfg);
  SHOAL_CHECK(std::isfinite(obj.loss), "dpo loss is {}; the step was not applied", obj.loss);
  model_->backward(&obj.dlogp);
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Metrics m = finish_step(obj.loss, lr, b.tokens(), dt);
  for (auto& [k, v] : obj.metrics) m[k] = v;
  return m;
}

Metrics Policy::grpo_step(const std::vector<GrpoSample>& samples, const rl::GrpoConfig& cfg,
                          double lr, bool surrogate_gain) {
  SHOAL_CHECK(!samples.empty(), "a GRPO step needs samples");
  auto t0 = std::chrono::steady_clock::now();
  std::vector<rl::Sample> plain;
  std::vector<const std::vector<float>*> old;
  rl::GrpoInputs in;
  for (const GrpoSample& s : samples) {
    plain.push_back(s.sample);
    old.push_back(&s.logprobs);
    in.advantages.push_back(s.advantage);
    in.keep.push_back(s.keep ? 1 : 0);
  }
  Batch b = rl::pack(plain);
  in.logp_old = rows_from_tokens(b, old);
  if (cfg.kl != rl::KlEstimator::none) in.logp_ref = reference_logprobs(plain, b);
  model_->params().zero_grads();
  ForwardOptions fo;
  fo.token_logprobs = true;
  ForwardResult r = model_->forward(b, fo);
  in.logp = r.token_logprobs;
  in.entropy = r.token_entropy;
  rl::ObjectiveResult obj = rl::grpo_loss(b, in, cfg);
  SHOAL_CHECK(std::isfinite(obj.loss), "grpo loss is {}; the step was not applied", obj.loss);
  model_->backward(&obj.dlogp);
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Metrics m = finish_step(obj.loss, lr, b.tokens(), dt);
  for (auto& [k, v] : obj.metrics) m[k] = v;
  if (!surrogate_gain) return m;
  // Did the step go uphill on its own batch? The advantage-weighted change of the trained tokens'
  // log-probs, per token (positive: the update raised what had positive advantage).
  ForwardOptions after;
  after.token_logprobs = true;
  after.need_backward = false;
  ForwardResult r2 = model_->forward(b, after);
  const float* lp_new = r2.token_logprobs.data<float>();
  const float* lp_old = in.logp_old.data<float>();
  const int32_t* labels = b.labels.data<int32_t>();
  double gain = 0;
  int64_t counted = 0;
  for (size_t sq = 0; sq + 1 < b.cu_seqlens.size(); ++sq) {
    if (!samples[sq].keep) continue;
    for (int64_t t = b.cu_seqlens[sq]; t < b.cu_seqlens[sq + 1]; ++t)
      if (labels[t] != -100) {
        gain += samples[sq].advantage * (double(lp_new[t]) - double(lp_old[t]));
        ++counted;
      }
  }
  m["surrogate_gain"] = counted ? gain / double(counted) : 0.0;
  return m;
}

double Policy::mean_logprob(const std::vector<rl::Sample>& samples) {
  Batch b = rl::pack(samples);
  ForwardOptions fo;
  fo.token_logprobs = true;
  fo.need_backward = false;
  ForwardResult r = model_->forward(b, fo);
  const float* lp = r.token_logprobs.data<float>();
  const int32_t* labels = b.labels.data<int32_t>();
  double sum = 0;
  int64_t n = 0;
  for (int64_t t = 0; t < b.tokens(); ++t)
    if (labels[t] != -100) {
      sum += lp[t];
      ++n;
    }
  return n ? sum / static_cast<double>(n) : 0.0;
}

void Policy::save(const std::string& dir) {
  model_->save(dir);
  opt_.save((fs::path(dir) / "optimizer.safetensors").string());
  nlohmann::json st = {{"weight_version", version_}, {"has_reference", reference_ != nullptr}};
  if (reference_) reference_->save((fs::path(dir) / "reference").string());
  std::ofstream((fs::path(dir) / "policy_state.json")) << st.dump(2);
}

void Policy::load(const std::string& dir) {
  bool was_running = running_;
  pause_generation();
  model_->load_weights(dir);
  opt_.load((fs::path(dir) / "optimizer.safetensors").string());
  std::ifstream in(fs::path(dir) / "policy_state.json");
  SHOAL_CHECK(in.good(), "checkpoint {}: no policy_state.json", dir);
  nlohmann::json st = nlohmann::json::parse(in);
  version_ = st.at("weight_version").get<int64_t>();
  reference_.reset();
  ref_cache_.reset();
  if (st.value("has_reference", false)) {
    reference_ = std::make_unique<Model>(model_->config(), model_->backend());
    reference_->load_weights((fs::path(dir) / "reference").string());
    ref_cache_ = std::make_unique<rl::ReferenceLogprobs>(*reference_);
  }
  if (was_running) resume_generation();
}

}  // namespace shoal::actors
