// The continuous-batching scheduler: admission against a worst-case page budget (so a running
// request never finds the pool empty), chunked prefill, prefix sharing by forking the prompt's
// cache sequence, sampling, records, streaming, stop conditions and cancellation.
#include "engine/generate/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <tuple>

#include "base/error.h"

namespace shoal {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::none:
      return "none";
    case FinishReason::length:
      return "length";
    case FinishReason::stop_id:
      return "stop_id";
    case FinishReason::stop_string:
      return "stop_string";
    case FinishReason::cancelled:
      return "cancelled";
    case FinishReason::error:
      return "error";
  }
  return "?";
}

std::vector<int32_t> Completion::ids() const {
  std::vector<int32_t> out;
  for (auto& t : tokens) out.push_back(t.id);
  return out;
}

std::vector<float> Completion::logprobs() const {
  std::vector<float> out;
  for (auto& t : tokens) out.push_back(t.logprob);
  return out;
}

// ---------------------------------------------------------------------------------------------
// RequestHandle

RequestHandle::RequestHandle(int64_t samples) : samples_(static_cast<size_t>(samples)) {}

bool RequestHandle::next(int64_t sample, TokenRecord& out) {
  SHOAL_CHECK(sample >= 0 && sample < samples(), "request handle: no sample {}", sample);
  std::unique_lock lock(mu_);
  Sample& s = samples_[size_t(sample)];
  cv_.wait(lock,
           [&] { return s.streamed < s.c.tokens.size() || s.c.finish != FinishReason::none; });
  if (s.streamed < s.c.tokens.size()) {
    out = s.c.tokens[s.streamed++];
    return true;
  }
  return false;
}

void RequestHandle::cancel() {
  cancelled_ = true;
}

bool RequestHandle::done() const {
  std::lock_guard lock(mu_);
  for (auto& s : samples_)
    if (s.c.finish == FinishReason::none) return false;
  return true;
}

std::vector<Completion> RequestHandle::wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] {
    for (auto& s : samples_)
      if (s.c.finish == FinishReason::none) return false;
    return true;
  });
  std::vector<Completion> out;
  for (auto& s : samples_) out.push_back(s.c);
  return out;
}

void RequestHandle::push(int64_t sample, const TokenRecord& t) {
  {
    std::lock_guard lock(mu_);
    samples_[size_t(sample)].c.tokens.push_back(t);
  }
  cv_.notify_all();
}

void RequestHandle::finish(int64_t sample, FinishReason r, std::string text, std::string error) {
  bool all_done = true;
  {
    std::lock_guard lock(mu_);
    Completion& c = samples_[size_t(sample)].c;
    bool was_open = c.finish == FinishReason::none;
    c.finish = r;
    c.text = std::move(text);
    c.error = std::move(error);
    for (auto& s : samples_) all_done = all_done && s.c.finish != FinishReason::none;
    all_done = all_done && was_open;  // only the sample that completes the request reports
  }
  cv_.notify_all();
  if (all_done && on_done_) on_done_();
}

void RequestHandle::set_prompt_experts(int64_t sample, std::vector<int32_t> e) {
  std::lock_guard lock(mu_);
  samples_[size_t(sample)].c.prompt_experts = std::move(e);
}

// ---------------------------------------------------------------------------------------------
// Scheduler

struct Scheduler::Sample {
  int64_t index = 0;
  int64_t seq = -1;  // its cache sequence once the prompt is prefilled
  std::mt19937_64 rng;
  std::vector<int32_t> ids;
  int32_t pending = -1;  // the last sampled token, to be fed next step
  bool done = false;
  bool has_draw = false;  // draw holds this step's token (drawn before the records are made)
  Drawn draw;
};

struct Scheduler::Group {
  std::shared_ptr<RequestHandle> handle;
  GenerationRequest req;
  int64_t prefill_seq = -1;
  int64_t prefilled = 0;     // prompt tokens in the cache
  int64_t committed = 0;     // of the scheduler's committed pages, still held for this group
  int64_t sample_pages = 0;  // worst-case pages each sample adds past the shared prompt
  std::vector<int32_t> prompt_experts;
  std::vector<Sample> samples;
  bool decoding() const { return prefilled == int64_t(req.prompt.size()); }
};

Scheduler::Scheduler(Model& model, const SchedulerConfig& config)
    : model_(model), cfg_(config), cache_(model.config(), config.cache, &model.backend()) {
  SHOAL_CHECK(cfg_.max_sequences >= 1 && cfg_.max_batch_tokens >= cfg_.max_sequences,
              "scheduler: max_batch_tokens ({}) must be >= max_sequences ({}) >= 1",
              cfg_.max_batch_tokens, cfg_.max_sequences);
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l)
    if (model.config().is_moe_layer(l)) moe_layers_.push_back(l);
}

Scheduler::~Scheduler() {
  stop();
  std::lock_guard lock(mu_);
  for (auto* q : {&incoming_, &waiting_})
    for (auto& g : *q)
      for (auto& s : g->samples) g->handle->finish(s.index, FinishReason::cancelled, "");
  for (auto& g : active_)
    for (auto& s : g->samples)
      if (!s.done) g->handle->finish(s.index, FinishReason::cancelled, "");
}

int64_t Scheduler::pages_for(const GenerationRequest& r) const {
  const int64_t pt = cache_.page_tokens(), p = int64_t(r.prompt.size());
  const int64_t stored = p + r.sampling.max_tokens - 1;  // the last token is never fed back
  return p / pt + r.samples * ((stored + pt - 1) / pt - p / pt);
}

std::string Scheduler::validate(const GenerationRequest& r) const {
  const ModelConfig& c = model_.config();
  try {
    r.sampling.validate();
  } catch (const Error& e) {
    return e.what();
  }
  if (r.prompt.empty()) return "the prompt is empty";
  for (int32_t id : r.prompt)
    if (id < 0 || id >= c.vocab_size)
      return fmt::format("prompt token {} is outside the vocabulary [0, {})", id, c.vocab_size);
  for (int32_t id : r.sampling.stop_ids)
    if (id < 0 || id >= c.vocab_size)
      return fmt::format("stop id {} is outside the vocabulary [0, {})", id, c.vocab_size);
  int64_t total = int64_t(r.prompt.size()) + r.sampling.max_tokens;
  if (total > c.max_position_embeddings)
    return fmt::format("the prompt ({} tokens) plus max_tokens {} exceeds the context of {}",
                       r.prompt.size(), r.sampling.max_tokens, c.max_position_embeddings);
  if (r.samples < 1 || r.samples > cfg_.max_sequences)
    return fmt::format("samples must be in [1, {}] (the scheduler's max_sequences), got {}",
                       cfg_.max_sequences, r.samples);
  for (auto& s : r.stop_strings)
    if (s.empty()) return "a stop string is empty";
  if (!r.stop_strings.empty() && !cfg_.detokenize)
    return "stop strings need a detokenizer (SchedulerConfig::detokenize)";
  if (pages_for(r) > cache_.total_pages())
    return fmt::format("the request needs up to {} cache pages, the pool has {}", pages_for(r),
                       cache_.total_pages());
  return {};
}

std::shared_ptr<RequestHandle> Scheduler::submit(GenerationRequest r) {
  auto handle = std::make_shared<RequestHandle>(std::max<int64_t>(r.samples, 1));
  handle->on_done_ = r.on_done;
  std::string err = validate(r);
  if (!err.empty()) {
    for (int64_t i = 0; i < handle->samples(); ++i)
      handle->finish(i, FinishReason::error, "", "request: " + err);
    return handle;
  }
  auto g = std::make_unique<Group>();
  g->handle = handle;
  g->samples.resize(size_t(r.samples));
  for (int64_t i = 0; i < r.samples; ++i) {
    g->samples[size_t(i)].index = i;
    g->samples[size_t(i)].rng.seed(r.sampling.seed + uint64_t(i));
  }
  g->req = std::move(r);
  {
    std::lock_guard lock(mu_);
    incoming_.push_back(std::move(g));
  }
  cv_.notify_all();
  return handle;
}

int64_t Scheduler::running_samples() const {
  int64_t n = 0;
  for (auto& g : active_)
    for (auto& s : g->samples) n += !s.done;
  return n;
}

int64_t Scheduler::waiting_requests() const {
  std::lock_guard lock(mu_);
  return int64_t(waiting_.size() + incoming_.size());
}

void Scheduler::finish_sample(Group& g, Sample& s, FinishReason r, std::string error) {
  if (s.done) return;
  s.done = true;
  if (s.seq >= 0) cache_.release(s.seq);
  s.seq = -1;
  int64_t share = std::min(g.committed, g.sample_pages);
  committed_ -= share;
  g.committed -= share;
  std::string text;
  if (cfg_.detokenize) text = cfg_.detokenize(s.ids);
  if (r == FinishReason::stop_string) {
    size_t cut = std::string::npos;
    for (auto& st : g.req.stop_strings) cut = std::min(cut, text.find(st));
    if (cut != std::string::npos) text.resize(cut);
  }
  g.handle->finish(s.index, r, std::move(text), std::move(error));
}

void Scheduler::finish_group(Group& g, FinishReason r, const std::string& error) {
  for (auto& s : g.samples) finish_sample(g, s, r, error);
}

void Scheduler::drop_finished() {
  auto gone = [&](std::unique_ptr<Group>& g) {
    for (auto& s : g->samples)
      if (!s.done) return false;
    if (g->prefill_seq >= 0) cache_.release(g->prefill_seq);
    committed_ -= g->committed;
    return true;
  };
  active_.erase(std::remove_if(active_.begin(), active_.end(), gone), active_.end());
}

void Scheduler::admit() {
  {
    std::lock_guard lock(mu_);
    while (!incoming_.empty()) {
      waiting_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->handle->cancelled()) {
      finish_group(**it, FinishReason::cancelled);
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& g : active_)
    if (g->handle->cancelled()) finish_group(*g, FinishReason::cancelled);
  drop_finished();
  // First come, first served: the head waits until the batch and the page budget have room.
  while (!waiting_.empty()) {
    Group& g = *waiting_.front();
    int64_t need = pages_for(g.req);
    if (running_samples() + g.req.samples > cfg_.max_sequences ||
        committed_ + need > cache_.total_pages())
      break;
    const int64_t pt = cache_.page_tokens(), p = int64_t(g.req.prompt.size());
    g.committed = need;
    g.sample_pages = (p + g.req.sampling.max_tokens - 1 + pt - 1) / pt - p / pt;
    committed_ += need;
    g.prefill_seq = cache_.add_sequence();
    active_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

std::vector<int32_t> Scheduler::experts_of(const std::vector<Tensor>& routing, int64_t row) const {
  std::vector<int32_t> out;
  for (int64_t l : moe_layers_) {
    const Tensor& r = routing[size_t(l)];
    int64_t k = r.size(1);
    out.insert(out.end(), r.i32() + row * k, r.i32() + (row + 1) * k);
  }
  return out;
}

void Scheduler::accept_token(Group& g, Sample& s, const float* logits,
                             const std::vector<Tensor>& routing, int64_t row) {
  const GenerationRequest& r = g.req;
  TokenRecord t;
  int32_t id;
  float lp;
  if (s.has_draw) {
    s.has_draw = false;
    id = s.draw.id;
    lp = s.draw.logprob;
    if (r.record_sampling_mask) t.sampling_mask = std::move(s.draw.kept);
  } else {
    std::tie(id, lp) = sample_token(logits, model_.config().vocab_size, r.sampling, s.rng,
                                    r.record_sampling_mask ? &t.sampling_mask : nullptr);
  }
  t.id = id;
  t.logprob = lp;
  if (r.top_logprobs >= 0) {
    const int64_t vocab = model_.config().vocab_size;
    double mx = *std::max_element(logits, logits + vocab), z = 0;
    for (int64_t i = 0; i < vocab; ++i) z += std::exp(double(logits[i]) - mx);
    const double lse = mx + std::log(z);
    t.model_logprob = float(double(logits[id]) - lse);
    int64_t k = std::min(r.top_logprobs, vocab);
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int64_t i = 0; i < k; ++i)
      t.top_logprobs.emplace_back(order[size_t(i)], float(double(logits[order[size_t(i)]]) - lse));
  }
  if (r.record_routing) t.experts = experts_of(routing, row);
  s.ids.push_back(id);
  g.handle->push(s.index, t);
  if (r.on_token) r.on_token(s.index, t);
  const auto& stop = r.sampling.stop_ids;
  if (std::find(stop.begin(), stop.end(), id) != stop.end()) {
    finish_sample(g, s, FinishReason::stop_id);
    return;
  }
  if (!r.stop_strings.empty()) {
    std::string text = cfg_.detokenize(s.ids);
    for (auto& st : r.stop_strings)
      if (text.find(st) != std::string::npos) {
        finish_sample(g, s, FinishReason::stop_string);
        return;
      }
  }
  if (int64_t(s.ids.size()) >= r.sampling.max_tokens) {
    finish_sample(g, s, FinishReason::length);
    return;
  }
  s.pending = id;
}

bool Scheduler::step() {
  admit();
  // The batch: one row for every running sample, then prompt chunks while the budget lasts.
  struct Entry {
    Group* g;
    Sample* s;      // decode row
    int64_t chunk;  // prefill: tokens of the prompt in this forward
  };
  std::vector<Entry> entries;
  std::vector<int64_t> seqs, dsa_len;
  std::vector<uint8_t> prefill;
  std::vector<std::vector<int32_t>> toks;
  bool routing = false;
  int64_t budget = cfg_.max_batch_tokens;
  for (auto& g : active_) {
    if (!g->decoding()) continue;
    for (auto& s : g->samples) {
      if (s.done) continue;
      entries.push_back({g.get(), &s, 0});
      seqs.push_back(s.seq);
      toks.push_back({s.pending});
      dsa_len.push_back(0);
      prefill.push_back(0);
      routing = routing || g->req.record_routing;
      --budget;
    }
  }
  for (auto& g : active_) {
    if (g->decoding() || budget <= 0) continue;
    int64_t p = int64_t(g->req.prompt.size());
    int64_t chunk = std::min(p - g->prefilled, budget);
    budget -= chunk;
    entries.push_back({g.get(), nullptr, chunk});
    seqs.push_back(g->prefill_seq);
    toks.emplace_back(g->req.prompt.begin() + g->prefilled,
                      g->req.prompt.begin() + g->prefilled + chunk);
    dsa_len.push_back(p);  // every prompt row is selected as one forward over the prompt would
    prefill.push_back(1);  // the same attention for every chunking of the prompt
    routing = routing || g->req.record_routing;
  }
  if (entries.empty()) return false;

  std::vector<Tensor> route;
  CachedForwardOptions opt;
  opt.last_logits_only = true;
  opt.dsa_len = dsa_len;
  opt.prefill = prefill;
  opt.device_logits = true;  // only ids and log-probs come back, unless a request needs the row
  if (routing) opt.routing = &route;
  Tensor logits;
  try {
    logits = model_.forward_cached(cache_, seqs, toks, opt);
  } catch (const Error& e) {
    // Requests are validated and pages committed up front, so this is a bug; fail the batch
    // rather than the process.
    for (auto& e2 : entries) finish_group(*e2.g, FinishReason::error, e.what());
    drop_finished();
    return true;
  }
  const int64_t v = logits.size(1);
  // The draws: one for every decode row and for every sample of a group whose prompt this forward
  // completes (they draw from the same row with their own generators). A request that records the
  // kept set or the top log-probs needs its whole row on the host: those rows are copied into a
  // reused host buffer (none on the CPU backend) and drawn there as before; every other draw runs
  // in one Backend::sample_rows call, each with one uniform from its sample's generator.
  std::vector<size_t> host_entries;  // entries whose row goes to the host
  std::vector<TokenDraw> draws;
  std::vector<Sample*> drawers;
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    const GenerationRequest& r = e.g->req;
    const bool completes =
        !e.s && e.g->prefilled + int64_t(toks[i].size()) == int64_t(r.prompt.size());
    if ((e.s && e.s->done) || (!e.s && !completes)) continue;
    if (r.record_sampling_mask || r.top_logprobs >= 0) {
      host_entries.push_back(i);
      continue;
    }
    for (auto& s : e.g->samples) {
      if (e.s && &s != e.s) continue;
      draws.push_back(token_draw(int64_t(i), r.sampling, s.rng));
      drawers.push_back(&s);
    }
  }
  if (!draws.empty()) {
    std::vector<int32_t> ids;
    std::vector<float> lps;
    model_.backend().sample_rows(logits, draws, ids, lps);
    for (size_t j = 0; j < drawers.size(); ++j) {
      drawers[j]->has_draw = true;
      drawers[j]->draw.id = ids[j];
      drawers[j]->draw.logprob = lps[j];
    }
  }
  std::vector<const float*> host_row(entries.size(), nullptr);
  if (!host_entries.empty()) {
    if (logits.device() == Device::cpu) {
      for (size_t i : host_entries) host_row[i] = logits.f32() + int64_t(i) * v;
    } else {
      Backend& be = model_.backend();
      const int64_t n = int64_t(host_entries.size());
      if (!host_logits_.defined() || host_logits_.size(0) < n || host_logits_.size(1) != v)
        host_logits_ = Tensor::empty({n, v}, DType::f32, be.host_allocator());
      Tensor dst = host_logits_.slice(0, 0, n);
      if (n == logits.size(0)) {
        be.copy(logits, dst);
      } else {
        Tensor idx = Tensor::empty({n}, DType::i32);
        for (int64_t j = 0; j < n; ++j) idx.i32()[j] = int32_t(host_entries[size_t(j)]);
        Tensor picked = be.empty({n, v});
        be.gather_rows(logits, idx, 1, picked);
        be.copy(picked, dst);
      }
      for (int64_t j = 0; j < n; ++j) host_row[host_entries[size_t(j)]] = dst.f32() + j * v;
    }
    // Decode rows draw in parallel (each sample has its own generator; a draw with its kept set
    // sorts the vocabulary); the first tokens of a group are drawn in accept_token.
#pragma omp parallel for schedule(dynamic) if (host_entries.size() > 1)
    for (size_t j = 0; j < host_entries.size(); ++j) {
      const Entry& e = entries[host_entries[j]];
      if (!e.s) continue;
      const GenerationRequest& r = e.g->req;
      Drawn& d = e.s->draw;
      auto [id, lp] = sample_token(host_row[host_entries[j]], v, r.sampling, e.s->rng,
                                   r.record_sampling_mask ? &d.kept : nullptr);
      d.id = id;
      d.logprob = lp;
      e.s->has_draw = true;
    }
  }
  int64_t first_row = 0;  // of this entry in the forward's rows (routing)
  for (size_t i = 0; i < entries.size(); ++i) {
    Entry& e = entries[i];
    Group& g = *e.g;
    int64_t rows = int64_t(toks[i].size()), last_row = first_row + rows - 1;
    const float* row = host_row[i];  // null unless the request needs the row on the host
    if (e.s) {
      if (!e.s->done) accept_token(g, *e.s, row, route, last_row);
    } else {
      int64_t p = int64_t(g.req.prompt.size());
      if (g.req.record_routing) {
        for (int64_t j = 0; j < rows; ++j)
          if (g.prefilled + j < p - 1) {
            auto ex = experts_of(route, first_row + j);
            g.prompt_experts.insert(g.prompt_experts.end(), ex.begin(), ex.end());
          }
      }
      g.prefilled += rows;
      if (g.decoding()) {
        // The prompt is in the cache: the samples share its pages and draw their first tokens
        // from the same logits with their own generators.
        for (auto& s : g.samples) {
          if (g.req.samples == 1) {
            s.seq = g.prefill_seq;
            g.prefill_seq = -1;
          } else {
            s.seq = cache_.fork(g.prefill_seq);
          }
          if (g.req.record_routing) g.handle->set_prompt_experts(s.index, g.prompt_experts);
        }
        if (g.prefill_seq >= 0) cache_.release(g.prefill_seq);
        g.prefill_seq = -1;
        if (g.handle->cancelled()) {
          finish_group(g, FinishReason::cancelled);
        } else {
          for (auto& s : g.samples) accept_token(g, s, row, route, last_row);
        }
      }
    }
    first_row += rows;
  }
  drop_finished();
  return true;
}

void Scheduler::run_until_idle() {
  while (step()) {
  }
}

void Scheduler::start() {
  SHOAL_CHECK(!thread_.joinable(), "scheduler: already started");
  stop_ = false;
  thread_ = std::thread([this] {
    while (!stop_) {
      if (step()) continue;
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(20),
                   [&] { return stop_.load() || !incoming_.empty(); });
    }
  });
}

void Scheduler::stop() {
  stop_ = true;
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace shoal
