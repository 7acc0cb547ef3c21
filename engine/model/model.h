// The DeepSeek-V3 causal LM (REFERENCE.md §1): embedding, decoder layers (RMSNorm -> MLA ->
// residual, RMSNorm -> dense SwiGLU or DeepSeekMoE -> residual), final RMSNorm, untied lm_head,
// next-token cross-entropy. Forward saves what backward needs; backward is written out per layer
// (no tape). forward_cached runs inference over the latent KV cache. Not here: scheduling and
// sampling (engine/generate), DSA's indexer (its own files), the optimizer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/model/config.h"
#include "engine/model/ffn.h"
#include "engine/model/mla.h"
#include "engine/model/moe.h"
#include "engine/model/params.h"

namespace shoal {

// A packed batch of sequences. Host tensors; the model moves them to its backend.
struct Batch {
  Tensor ids;                       // i32 [N]
  Tensor labels;                    // i32 [N]; -100 = no loss at this position
  Tensor positions;                 // i32 [N]; position of each token within its sequence
  std::vector<int64_t> cu_seqlens;  // S+1 offsets from 0 to N
  int64_t tokens() const { return ids.numel(); }
  // Labels are the next token of the same sequence (last position of each sequence: -100).
  static Batch next_token(const std::vector<std::vector<int32_t>>& sequences);
};

struct ForwardOptions {
  bool keep_logits = false;  // return the logits (host copy, [N, V])
  // Compute d(loss)/d(logits) for backward(). Only such forwards count the experts' load for the
  // auxiliary-loss-free bias update (update_router_bias): scoring and diagnostics do not.
  bool need_backward = true;
  double balance_alpha = 0.0;  // sequence-wise balance loss weight (0 = off)
  // Routing replay: per layer (empty for dense layers) the expert ids i32 [N, K] to use.
  const std::vector<Tensor>* replay_routing = nullptr;
  // DeepSeek Sparse Attention (deepseek_v32 models; ignored otherwise):
  bool dsa_dense = false;           // dense attention (the indexer's warm-up stage)
  bool indexer_fp8 = false;         // score with the reference's Hadamard + FP8 path
  double indexer_kl_weight = 0.0;   // > 0: indexer KL loss; its gradient (mean over tokens,
                                    // times this) accumulates into the indexer during forward
  bool measure_indexer_kl = false;  // report the KL without training on it
  bool keep_dsa_topk = false;       // return each layer's selection
  // RL objectives: return log p(label) and the entropy per token (token_logprobs); backward() then
  // takes d(objective)/d(log p) per token instead of using the cross-entropy. sampling_sets
  // renormalises p over each token's recorded top-k/top-p set (keep-sampling-mask).
  bool token_logprobs = false;
  const TokenSets* sampling_sets = nullptr;
};

struct ForwardResult {
  double loss = 0;               // mean cross-entropy over labelled positions + balance loss
  double ce_loss = 0;            // mean cross-entropy alone
  double balance_loss = 0;       // summed over MoE layers
  int64_t targets = 0;           // labelled positions
  Tensor logits;                 // host [N, V] when keep_logits
  std::vector<Tensor> routing;   // per layer i32 [N, K] expert ids (host), empty for dense layers
  double indexer_kl = 0;         // DSA: KL(attention || indexer) per token, summed over layers
  std::vector<Tensor> dsa_topk;  // DSA: per layer i32 [N, k] selected key positions (-1 = none)
  Tensor token_logprobs;         // host f32 [N] (0 where the label is -100), when requested
  Tensor token_entropy;          // host f32 [N], when token_logprobs
};

// How a cached forward's chunks attend (Model::forward_cached).
enum class CachedAttention {
  automatic,  // chunks of several new tokens (prefill) in MHA mode, single tokens absorbed
  absorbed,   // every chunk with weight absorption over the latent (MQA mode)
  mha,        // every chunk in MHA mode (cached latents decompressed through kv_b_proj)
};

struct CachedForwardOptions {
  CachedAttention attention = CachedAttention::automatic;
  // DSA (V3.2): per sequence, the sequence length whose top-k tie-breaking the new rows' selection
  // reproduces (0 or empty = the sequence's length after this forward, i.e. each decode row is
  // selected as the last row of a full forward; a chunked prompt passes the prompt's length).
  std::vector<int64_t> dsa_len;
  // Per sequence (empty = none): 1 when the new tokens are (part of) a prompt. Automatic attention
  // runs those in MHA mode even when the chunk is a single token, so a prompt's rows compute the
  // same whatever chunks a scheduler cut it into.
  std::vector<uint8_t> prefill;
  bool last_logits_only = false;  // logits of each sequence's last new token only: [S, V]
  // Return the logits where the backend computed them (device memory on CUDA), for
  // Backend::sample_rows; else they are copied to the host.
  bool device_logits = false;
  // Outputs when set: per layer the expert ids i32 [N, K] (host; undefined for dense layers), and
  // per layer the DSA selection of each new token.
  std::vector<Tensor>* routing = nullptr;
  std::vector<std::vector<std::vector<int32_t>>>* dsa_topk = nullptr;
};

// The elements of a model's parameters (values; those with gradients), from its config alone:
// what Model's constructor allocates, so that a device can refuse a model before loading it.
struct ParameterCount {
  int64_t values = 0, trainable = 0;
};
ParameterCount parameter_count(const ModelConfig& config);

class Model {
 public:
  Model(const ModelConfig& config, Backend& backend);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Loads a Hugging Face checkpoint directory (config.json + safetensors).
  static std::unique_ptr<Model> from_pretrained(const std::string& dir, Backend& backend);

  const ModelConfig& config() const { return config_; }
  ParamSet& params() { return params_; }
  Backend& backend() { return *be_; }

  // Normal(0, std) for matrices, 1 for norm weights, 0 for router biases. Deterministic in seed.
  void init_random(uint64_t seed, float std = 0.02f);
  // Every tensor under its Hugging Face checkpoint name, viewing values (or gradients).
  std::vector<CheckpointTensor> checkpoint_tensors(bool grads = false);
  // Reads every expected tensor from a checkpoint directory (dtype-converting, FP8-dequantizing);
  // errors name the file and tensor.
  void load_weights(const std::string& dir);
  // Writes config.json + safetensors (sharded above max_shard_bytes) into dir, atomically, with
  // weights stored as dtype (f32, bf16 or f16).
  void save(const std::string& dir, size_t max_shard_bytes = size_t(2) << 30,
            DType dtype = DType::f32);

  ForwardResult forward(const Batch& batch, const ForwardOptions& options = {});
  // Gradients of the last forward's loss, accumulated into params().grad. After a forward with
  // token_logprobs, dlogp (host f32 [N]) gives d(objective)/d(log p) per token instead.
  void backward(const Tensor* dlogp = nullptr);
  // Inference with the latent KV cache: new tokens of several cached sequences (a prefill chunk or
  // one decode token each) run through the model; each token's latents (and V3.2 indexer keys)
  // are appended to its sequence. On the CPU it is batch invariant (backend.h: BatchInvariance):
  // a sequence's logits do not depend on the other sequences of the call. Returns host logits
  // [total new tokens, V], rows in input order (or [S, V] with last_logits_only; on the backend's
  // device with device_logits). The pool must have room (LatentKvCache::pages_needed).
  Tensor forward_cached(LatentKvCache& cache, const std::vector<int64_t>& seqs,
                        const std::vector<std::vector<int32_t>>& tokens,
                        const CachedForwardOptions& options = {});
  // Decode steps as recorded graphs. On a backend that records op sequences (CUDA), a
  // forward_cached decode step (one new token per sequence, none of them a prompt row, no routing
  // or DSA outputs) replays a recording of the layers instead of launching each op from the host:
  // recorded once per (padded batch, length bucket, cache) after one ordinary step with that key
  // (docs/ENGINE.md, "Decode steps as CUDA graphs"). Device logits it returns are then valid until
  // the next forward_cached call. On by default; SHOAL_CUDA_GRAPHS=0 in the environment turns it
  // off for the process, this for the model (false also drops the recordings).
  void set_decode_graphs(bool on);
  bool decode_graphs() const { return decode_graphs_on_; }
  struct DecodeGraphStats {
    int64_t recorded = 0, replayed = 0;
    std::string refused;  // why the last key that could not be recorded runs op by op
  };
  const DecodeGraphStats& decode_graph_stats() const { return decode_graph_stats_; }
  // Auxiliary-loss-free balancing: router bias += gamma * sign(mean load - load) per MoE layer.
  void update_router_bias(double gamma);

 private:
  struct Layer;
  struct Saved;
  const Tensor& rope_table(int64_t positions);
  // forward_cached's device work after the host bookkeeping: layers, final norm and vocab
  // projection of `rows` (rows of the forward's n) into logits (allocated when undefined).
  void cached_layers(const Tensor& ids, CachedInputs& in, LatentKvCache& cache,
                     const std::vector<int64_t>& rows, const std::vector<int64_t>& wanted,
                     const CachedForwardOptions& opt, Tensor& logits);
  // A decode step through a recorded graph; an undefined tensor when this step runs eagerly.
  struct DecodeGraph;
  Tensor decode_graph_step(LatentKvCache& cache, const std::vector<int64_t>& seqs,
                           const CachedInputs& in, const Tensor& ids, int64_t max_pos);

  ModelConfig config_;
  Backend* be_;
  ParamSet params_;
  Tensor embed_, g_embed_, norm_, g_norm_, head_, g_head_;
  std::vector<std::unique_ptr<Layer>> layers_;
  Tensor rope_table_;
  std::unique_ptr<Saved> saved_;
  std::vector<std::unique_ptr<DecodeGraph>> decode_graphs_;  // least recently used first
  uint64_t decode_graph_clock_ = 0;
  bool decode_graphs_on_;
  DecodeGraphStats decode_graph_stats_;
};

}  // namespace shoal
