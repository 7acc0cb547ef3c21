// Continuous batching over the latent KV cache: requests are submitted at any time (from any
// thread), admitted into the running batch while the token budget, the sequence limit and the
// cache pool allow, their prompts prefilled in chunks, and every running sample decodes one token
// per step; finished and cancelled samples leave the batch and free their pages. The G samples of
// one request prefill the prompt once and share its pages (copy-on-write at divergence). Each
// generated token is recorded (id, log-prob under the sampling distribution, on request the kept
// sampling set and the MoE experts chosen) and streamed to the request's handle.
// Not here: sampling itself (generate.h), the model's cached forward (model.h), HTTP serving.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engine/generate/generate.h"
#include "engine/generate/kv_cache.h"

namespace shoal {

enum class FinishReason {
  none,         // still running
  length,       // max_tokens generated
  stop_id,      // a stop id was generated (it is the last of ids)
  stop_string,  // the text contains a stop string (text ends before it; ids keep every token)
  cancelled,
  error,  // the request was refused or failed (Completion::error says why)
};
const char* finish_reason_name(FinishReason r);

struct TokenRecord {
  int32_t id = 0;
  float logprob = 0;  // under the distribution sampled from (temperature, truncation)
  // record_sampling_mask: the kept top-k/top-p/min-p set as sorted ids; empty = whole vocabulary.
  std::vector<int32_t> sampling_mask;
  // record_routing: the experts chosen, in every MoE layer (layer order, K ids each), at the
  // position whose logits this token was sampled from.
  std::vector<int32_t> experts;
  // GenerationRequest::top_logprobs >= 0: the token's log-prob under the model's own distribution
  // (temperature 1, no truncation), and the top_logprobs most likely ids with theirs (descending).
  float model_logprob = 0;
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

struct Completion {
  std::vector<TokenRecord> tokens;
  // record_routing: the experts of prompt positions 0 .. P-2 (P-1 rows of [MoE layers x K]);
  // with tokens[i].experts they give the routing of every position of prompt + ids that a
  // teacher-forced forward needs to score the generated tokens (positions 0 .. P+T-2).
  std::vector<int32_t> prompt_experts;
  std::string text;  // with SchedulerConfig::detokenize: the completion's text, stop string cut
  FinishReason finish = FinishReason::none;
  std::string error;
  std::vector<int32_t> ids() const;
  std::vector<float> logprobs() const;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;  // sample i of the request draws with seed sampling.seed + i
  int64_t samples = 1;      // G: samples of this prompt, sharing its prefill and cache pages
  std::vector<std::string> stop_strings;  // need SchedulerConfig::detokenize
  bool record_sampling_mask = false;
  bool record_routing = false;
  // >= 0: record TokenRecord::model_logprob and the top_logprobs most likely ids (OpenAI-style
  // log-probs, independent of temperature and truncation); -1: off.
  int64_t top_logprobs = -1;
  // Called on the engine thread for every generated token of every sample (keep it short).
  std::function<void(int64_t sample, const TokenRecord&)> on_token;
  // Called once, on the engine thread (or in submit() for a request rejected at once), when every
  // sample has finished; wait() then returns without blocking. Keep it short (post a message).
  std::function<void()> on_done;
};

// The caller's side of a submitted request: streaming, cancellation, results. Thread-safe.
class RequestHandle {
 public:
  explicit RequestHandle(int64_t samples);
  int64_t samples() const { return int64_t(samples_.size()); }
  // Blocks until sample s has a token not yet returned by next() (true) or has finished with all
  // its tokens returned (false).
  bool next(int64_t sample, TokenRecord& out);
  void cancel();  // every sample; the scheduler frees their pages at its next step
  bool cancelled() const { return cancelled_.load(); }
  bool done() const;
  std::vector<Completion> wait();  // blocks until every sample has finished

 private:
  friend class Scheduler;
  void push(int64_t sample, const TokenRecord& t);
  void finish(int64_t sample, FinishReason r, std::string text, std::string error = {});
  void set_prompt_experts(int64_t sample, std::vector<int32_t> e);
  struct Sample {
    Completion c;
    size_t streamed = 0;
  };
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Sample> samples_;
  std::atomic<bool> cancelled_{false};
  std::function<void()> on_done_;
};

struct SchedulerConfig {
  int64_t max_batch_tokens = 256;  // new tokens per forward: decode rows + prefill chunk rows
  int64_t max_sequences = 64;      // samples running at once (>= a request's samples)
  KvCacheConfig cache;
  // Ids -> text, for stop strings and Completion::text (e.g. Tokenizer::decode).
  std::function<std::string(std::span<const int32_t>)> detokenize;
};

class Scheduler {
 public:
  Scheduler(Model& model, const SchedulerConfig& config = {});
  ~Scheduler();  // stops the engine thread; unfinished requests finish as cancelled
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Thread-safe. A request that can never run (bad parameters, out-of-vocabulary or unknown stop
  // ids, prompt + max_tokens beyond the context, more pages than the whole pool) comes back
  // already finished with FinishReason::error; it never disturbs the other requests.
  std::shared_ptr<RequestHandle> submit(GenerationRequest request);

  // Engine side: one thread drives it, either by calling step() / run_until_idle() itself or by
  // start() (a background thread that steps while there is work).
  bool step();  // admits, runs one forward, samples, retires; false when there was nothing to do
  void run_until_idle();
  void start();
  void stop();

  const LatentKvCache& cache() const { return cache_; }
  int64_t running_samples() const;   // engine thread
  int64_t waiting_requests() const;  // engine thread
  int64_t committed_pages() const { return committed_; }

 private:
  struct Group;
  struct Sample;
  std::string validate(const GenerationRequest& r) const;
  int64_t pages_for(const GenerationRequest& r) const;  // worst case, shared prompt counted once
  void admit();
  void finish_sample(Group& g, Sample& s, FinishReason r, std::string error = {});
  void finish_group(Group& g, FinishReason r, const std::string& error = {});
  // A sample's token drawn before its record is made (sample_rows, or sample_token with the
  // kept set).
  struct Drawn {
    int32_t id = -1;
    float logprob = 0;
    std::vector<int32_t> kept;
  };
  // Records the sample's drawn token, or draws it here from logits (host row; may be null when
  // drawn and the request needs no row on the host).
  void accept_token(Group& g, Sample& s, const float* logits, const std::vector<Tensor>& routing,
                    int64_t row);
  std::vector<int32_t> experts_of(const std::vector<Tensor>& routing, int64_t row) const;
  void drop_finished();

  Model& model_;
  SchedulerConfig cfg_;
  LatentKvCache cache_;
  std::vector<int64_t> moe_layers_;
  int64_t committed_ = 0;  // pages admitted requests may still take (worst case)
  mutable std::mutex mu_;  // guards incoming_
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Group>> incoming_;
  // Engine thread only:
  std::deque<std::unique_ptr<Group>> waiting_;
  std::vector<std::unique_ptr<Group>> active_;  // admitted, in admission order
  Tensor host_logits_;  // device backends: reused host rows for requests that need them
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

}  // namespace shoal
