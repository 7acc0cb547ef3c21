// DeepSeek-V3 model: parameter layout, checkpoint mapping, forward and backward.
#include "engine/model/model.h"

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "base/log.h"
#include "engine/generate/kv_cache.h"
#include "engine/model/dsa.h"
#include "engine/model/rope_table.h"
#include "engine/safetensors.h"

namespace shoal {

namespace fs = std::filesystem;

struct Model::Layer {
  std::string prefix;
  Tensor ln1, g_ln1, ln2, g_ln2;
  std::unique_ptr<Mla> attn;
  std::unique_ptr<Moe> moe;
  SwiGluWeights mlp;  // dense layers
};

struct LayerSaved {
  Tensor x_in, xn1, rstd1, h1, xn2, rstd2;
  MlaSaved attn;
  MoeSaved moe;
  SwiGluSaved mlp;
};

struct Model::Saved {
  Tensor ids;
  AttentionInputs in;
  std::vector<LayerSaved> layers;
  Tensor x_final, xn_final, rstd_final, dlogits;
  Tensor logits, labels;  // token_logprobs mode: backward(dlogp) needs them
  TokenSets sets;
  bool has_sets = false;
};

Batch Batch::next_token(const std::vector<std::vector<int32_t>>& seqs) {
  int64_t n = 0;
  for (auto& s : seqs) n += int64_t(s.size());
  Batch b;
  b.ids = Tensor::empty({n}, DType::i32);
  b.labels = Tensor::empty({n}, DType::i32);
  b.positions = Tensor::empty({n}, DType::i32);
  b.cu_seqlens = {0};
  int64_t o = 0;
  for (auto& s : seqs) {
    for (size_t t = 0; t < s.size(); ++t, ++o) {
      b.ids.i32()[o] = s[t];
      b.labels.i32()[o] = t + 1 < s.size() ? s[t + 1] : -100;
      b.positions.i32()[o] = int32_t(t);
    }
    b.cu_seqlens.push_back(o);
  }
  return b;
}

namespace {
bool decode_graphs_default() {
  const char* e = std::getenv("SHOAL_CUDA_GRAPHS");
  return !(e && std::string(e) == "0");
}
}  // namespace

ParameterCount parameter_count(const ModelConfig& c) {
  ParameterCount n;
  const int64_t d = c.hidden_size, h = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, dv = c.v_head_dim, rkv = c.kv_lora_rank;
  auto add = [&](int64_t elems, bool trainable = true) {
    n.values += elems;
    if (trainable) n.trainable += elems;
  };
  add(c.vocab_size * d);                              // embed_tokens
  if (!c.tie_word_embeddings) add(c.vocab_size * d);  // lm_head
  add(d);                                             // final norm
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    add(2 * d);  // input and post-attention norms
    if (c.q_lora_rank > 0)
      add(c.q_lora_rank * d + c.q_lora_rank + h * (dn + dr) * c.q_lora_rank);
    else
      add(h * (dn + dr) * d);
    add((rkv + dr) * d + rkv + h * (dn + dv) * rkv + d * h * dv);
    if (c.is_v32()) {
      const int64_t hi = c.index_n_heads, di = c.index_head_dim;
      add(hi * di * c.q_lora_rank + di * d + 2 * di + hi * d);
    }
    if (c.is_moe_layer(l)) {
      const int64_t e = c.n_routed_experts, in = c.moe_intermediate_size;
      add(e * d);           // router
      add(e, false);        // e_score_correction_bias (a buffer)
      add(e * 3 * in * d);  // gate_up + down
      if (c.n_shared_experts > 0) add(3 * in * c.n_shared_experts * d);
    } else {
      add(3 * c.intermediate_size * d);
    }
  }
  return n;
}

Model::Model(const ModelConfig& config, Backend& backend)
    : config_(config), be_(&backend), params_(backend), decode_graphs_on_(decode_graphs_default()) {
  config_.validate("model config");
  const ModelConfig& c = config_;
  int64_t d = c.hidden_size;
  size_t free_b = 0, total_b = 0;
  if (backend.memory_info(free_b, total_b)) {  // say so before allocating, not at the n-th tensor
    const ParameterCount pc = parameter_count(c);
    const double need = double(pc.values) * double(backend.bytes_per_parameter()) +
                        double(pc.trainable) * sizeof(float);
    auto gib = [](double b) { return b / double(size_t(1) << 30); };
    SHOAL_CHECK(need <= double(free_b),
                "the model does not fit on the {} device: its {:.3g} B parameters need {:.2f} GiB "
                "({} bytes per parameter for the weights, 4 for each trainable one's gradient) and "
                "the device has {:.2f} GiB free of {:.2f} GiB",
                device_name(backend.device()), double(pc.values) * 1e-9, gib(need),
                backend.bytes_per_parameter(), gib(double(free_b)), gib(double(total_b)));
  }
  {
    auto& p = params_[params_.add("model.embed_tokens.weight", {c.vocab_size, d})];
    embed_ = p.value, g_embed_ = p.grad;
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto layer = std::make_unique<Layer>();
    std::string pre = fmt::format("model.layers.{}.", l);
    layer->prefix = pre;
    auto& ln1 = params_[params_.add(pre + "input_layernorm.weight", {d})];
    layer->ln1 = ln1.value, layer->g_ln1 = ln1.grad;
    layer->attn = std::make_unique<Mla>(config_, params_, pre + "self_attn.");
    auto& ln2 = params_[params_.add(pre + "post_attention_layernorm.weight", {d})];
    layer->ln2 = ln2.value, layer->g_ln2 = ln2.grad;
    if (c.is_moe_layer(l)) {
      layer->moe = std::make_unique<Moe>(config_, params_, pre + "mlp.");
    } else {
      int64_t in = c.intermediate_size;
      auto& gu = params_[params_.add(pre + "mlp.gate_up_proj.weight", {2 * in, d})];
      auto& dn = params_[params_.add(pre + "mlp.down_proj.weight", {d, in})];
      layer->mlp = {gu.value, dn.value, gu.grad, dn.grad};
    }
    layers_.push_back(std::move(layer));
  }
  {
    auto& p = params_[params_.add("model.norm.weight", {d})];
    norm_ = p.value, g_norm_ = p.grad;
  }
  if (c.tie_word_embeddings) {
    head_ = embed_, g_head_ = g_embed_;
  } else {
    auto& p = params_[params_.add("lm_head.weight", {c.vocab_size, d})];
    head_ = p.value, g_head_ = p.grad;
  }
  for (auto& p : params_)
    if (p.name.size() >= 11 && p.name.ends_with("norm.weight")) {
      Tensor ones = Tensor::empty(p.value.shape(), DType::f32);  // host, then onto the backend
      ones.fill(1.0);
      be_->copy(ones, p.value);
    }
}

Model::~Model() = default;

std::unique_ptr<Model> Model::from_pretrained(const std::string& dir, Backend& backend) {
  auto m = std::make_unique<Model>(ModelConfig::load(dir), backend);
  m->load_weights(dir);
  return m;
}

void Model::init_random(uint64_t seed, float std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, std);
  for (auto& p : params_) {
    Tensor h = Tensor::empty(p.value.shape(), DType::f32);
    float* v = h.f32();
    if (p.name.ends_with("norm.weight")) {
      std::fill(v, v + h.numel(), 1.0f);
    } else if (p.name.ends_with("e_score_correction_bias") || p.name.ends_with(".bias")) {
      std::fill(v, v + h.numel(), 0.0f);
    } else {
      for (int64_t i = 0; i < h.numel(); ++i) v[i] = normal(rng);
    }
    be_->copy(be_->from_host(h), p.value);
  }
}

std::vector<CheckpointTensor> Model::checkpoint_tensors(bool grads) {
  std::vector<CheckpointTensor> out;
  auto val = [&](const std::string& name) -> Tensor {
    Param& p = params_.get(name);
    return grads ? p.grad : p.value;
  };
  auto split_gate_up = [&](const std::string& ckpt_prefix, const Tensor& gu) {
    int64_t in = gu.size(0) / 2;
    out.push_back({ckpt_prefix + "gate_proj.weight", gu.slice(0, 0, in)});
    out.push_back({ckpt_prefix + "up_proj.weight", gu.slice(0, in, 2 * in)});
  };
  for (auto& p : params_) {
    if (grads && !p.trainable) continue;
    const std::string& n = p.name;
    if (n.ends_with("mlp.gate_up_proj.weight")) {
      split_gate_up(n.substr(0, n.size() - std::string("gate_up_proj.weight").size()), val(n));
    } else if (n.ends_with("shared_experts.gate_up_proj.weight")) {
      split_gate_up(n.substr(0, n.size() - std::string("gate_up_proj.weight").size()), val(n));
    } else if (n.ends_with("experts.gate_up_proj")) {
      std::string pre = n.substr(0, n.size() - std::string("gate_up_proj").size());
      Tensor t = val(n);
      for (int64_t e = 0; e < t.size(0); ++e)
        split_gate_up(fmt::format("{}{}.", pre, e), t.select(0, e));
    } else if (n.ends_with("experts.down_proj")) {
      std::string pre = n.substr(0, n.size() - std::string("down_proj").size());
      Tensor t = val(n);
      for (int64_t e = 0; e < t.size(0); ++e)
        out.push_back({fmt::format("{}{}.down_proj.weight", pre, e), t.select(0, e)});
    } else {
      out.push_back({n, val(n)});
    }
  }
  return out;
}

namespace {
// Layer index of a checkpoint name "model.layers.N....", or -1.
int64_t layer_of(const std::string& name) {
  const std::string pre = "model.layers.";
  if (name.rfind(pre, 0) != 0) return -1;
  size_t end = name.find('.', pre.size());
  try {
    return std::stoll(name.substr(pre.size(), end - pre.size()));
  } catch (...) {
    return -1;
  }
}
}  // namespace

void Model::load_weights(const std::string& dir) {
  CheckpointReader reader = CheckpointReader::open(dir);
  std::vector<std::string> used;
  for (auto& ct : checkpoint_tensors(false)) {
    SHOAL_CHECK(reader.has(ct.name), "{}: tensor '{}' is missing (the config needs {} {})", dir,
                ct.name, dtype_name(DType::f32), shape_str(ct.view.shape()));
    auto info = reader.info(ct.name);
    const std::string file = reader.file_of(ct.name);
    SHOAL_CHECK(info.shape == ct.view.shape(), "{}: tensor '{}' has shape {}, the config needs {}",
                file, ct.name, shape_str(info.shape), shape_str(ct.view.shape()));
    SHOAL_CHECK(is_floating(info.dtype), "{}: tensor '{}' has dtype {}, expected a float type",
                file, ct.name, dtype_name(info.dtype));
    Tensor src = reader.get(ct.name);
    Tensor host;
    if (info.dtype == DType::f8e4m3 || info.dtype == DType::f8e5m2) {
      // Block-quantized FP8: weight = fp8 block x weight_scale_inv[block].
      std::string sname = ct.name + "_scale_inv";
      SHOAL_CHECK(reader.has(sname), "{}: FP8 tensor '{}' has no '{}'", file, ct.name, sname);
      SHOAL_CHECK(src.ndim() == 2, "{}: FP8 tensor '{}' must be 2-D", file, ct.name);
      Tensor scale = reader.get(sname).to(DType::f32);
      int64_t rows = src.size(0), cols = src.size(1), br = config_.fp8_block_rows,
              bc = config_.fp8_block_cols;
      Shape want = {(rows + br - 1) / br, (cols + bc - 1) / bc};
      SHOAL_CHECK(scale.shape() == want, "{}: '{}' has shape {}, expected {} for {}x{} blocks",
                  reader.file_of(sname), sname, shape_str(scale.shape()), shape_str(want), br, bc);
      host = src.to(DType::f32);
      float* h = host.f32();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          h[r * cols + c] *= scale.f32()[(r / br) * want[1] + c / bc];
      used.push_back(sname);
    } else {
      host = src;
    }
    if (be_->device() == Device::cpu) {
      ct.view.copy_from(host);
    } else {
      be_->copy(be_->from_host(host.to(DType::f32)), ct.view);
    }
    used.push_back(ct.name);
  }
  std::sort(used.begin(), used.end());
  int64_t ignored_mtp = 0;
  std::vector<std::string> unknown;
  for (auto& name : reader.names()) {
    if (std::binary_search(used.begin(), used.end(), name)) continue;
    if (layer_of(name) >= config_.num_hidden_layers)
      ++ignored_mtp;  // MTP layers are stored after the decoder layers
    else
      unknown.push_back(name);
  }
  if (ignored_mtp)
    log::info("{}: {} MTP tensors not loaded (MTP is not used by this model)", dir, ignored_mtp);
  if (!unknown.empty())
    log::warn("{}: {} tensors not used by the model, e.g. '{}'", dir, unknown.size(), unknown[0]);
}

void Model::save(const std::string& dir, size_t max_shard_bytes, DType dtype) {
  SHOAL_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16,
              "checkpoints are saved as f32, bf16 or f16, not {}", dtype_name(dtype));
  fs::path target(dir);
  fs::path tmp = target;
  tmp += fmt::format(".tmp-{}", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  {
    nlohmann::json j = config_.to_json();
    j["dtype"] = dtype == DType::bf16 ? "bfloat16" : dtype == DType::f16 ? "float16" : "float32";
    std::ofstream f(tmp / "config.json");
    f << j.dump(2) << "\n";
    SHOAL_CHECK(f.good(), "cannot write {}", (tmp / "config.json").string());
  }
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& ct : checkpoint_tensors(false)) {
    Tensor host = be_->device() == Device::cpu ? ct.view : be_->to_host(ct.view);
    tensors.emplace_back(ct.name, dtype == DType::f32 ? host : host.to(dtype));
  }
  write_checkpoint_shards(tmp.string(), tensors, max_shard_bytes);
  fs::path old = target;
  old += fmt::format(".old-{}", ::getpid());
  if (fs::exists(target)) fs::rename(target, old);
  fs::rename(tmp, target);
  fs::remove_all(old, ec);
}

const Tensor& Model::rope_table(int64_t positions) {
  if (!rope_table_.defined() || rope_table_.size(0) < positions) {
    int64_t p =
        std::max<int64_t>(positions, std::min<int64_t>(config_.max_position_embeddings, 8192));
    rope_table_ = be_->from_host(rope_cos_sin_table(config_, p));
    decode_graphs_.clear();  // they read the old table
  }
  return rope_table_;
}

ForwardResult Model::forward(const Batch& batch, const ForwardOptions& opt) {
  const ModelConfig& c = config_;
  Backend& be = *be_;
  int64_t n = batch.tokens(), d = c.hidden_size;
  SHOAL_CHECK(n > 0, "forward: empty batch");
  SHOAL_CHECK(
      batch.ids.dtype() == DType::i32 && batch.labels.numel() == n && batch.positions.numel() == n,
      "forward: batch ids/labels/positions must be i32[{}]", n);
  SHOAL_CHECK(batch.cu_seqlens.size() >= 2 && batch.cu_seqlens.back() == n,
              "forward: cu_seqlens must end at the token count {}", n);
  int32_t max_pos = 0;
  for (int64_t i = 0; i < n; ++i) max_pos = std::max(max_pos, batch.positions.i32()[i]);
  if (opt.replay_routing)
    SHOAL_CHECK(int64_t(opt.replay_routing->size()) == c.num_hidden_layers,
                "routing replay has {} layers, the model {}", opt.replay_routing->size(),
                c.num_hidden_layers);

  auto s = std::make_unique<Saved>();
  s->ids = be.from_host(batch.ids);
  s->in.positions = be.from_host(batch.positions);
  s->in.cu_seqlens = batch.cu_seqlens;
  s->in.cos_sin = rope_table(int64_t(max_pos) + 1);
  s->in.dsa_dense = opt.dsa_dense;
  s->in.indexer_fp8 = opt.indexer_fp8;
  s->in.indexer_kl = c.is_v32() && (opt.indexer_kl_weight > 0 || opt.measure_indexer_kl);
  s->in.indexer_kl_grad = opt.need_backward ? float(opt.indexer_kl_weight / double(n)) : 0.0f;
  const float eps = float(c.rms_norm_eps);

  ForwardResult r;
  Tensor x = be.empty({n, d});
  be.embedding_forward(s->ids, embed_, x);
  s->layers.resize(layers_.size());
  r.routing.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = *layers_[l];
    LayerSaved& ls = s->layers[l];
    ls.x_in = x;
    ls.xn1 = be.empty({n, d});
    ls.rstd1 = be.empty({n});
    be.rmsnorm_forward(x, L.ln1, eps, ls.xn1, ls.rstd1);
    ls.h1 = be.empty({n, d});
    L.attn->forward(be, ls.xn1, s->in, ls.h1, ls.attn);
    r.indexer_kl += ls.attn.indexer_kl / double(n);
    if (opt.keep_dsa_topk && c.is_v32()) r.dsa_topk.push_back(be.to_host(ls.attn.indexer.topk));
    be.add(ls.h1, x);
    ls.xn2 = be.empty({n, d});
    ls.rstd2 = be.empty({n});
    be.rmsnorm_forward(ls.h1, L.ln2, eps, ls.xn2, ls.rstd2);
    Tensor out = be.empty({n, d});
    if (L.moe) {
      const Tensor* replay = nullptr;
      if (opt.replay_routing && (*opt.replay_routing)[l].defined())
        replay = &(*opt.replay_routing)[l];
      r.balance_loss +=
          L.moe->forward(be, ls.xn2, s->in.cu_seqlens, out, ls.moe, replay, opt.balance_alpha,
                         /*count_load=*/opt.need_backward);
      r.routing[l] = be.to_host(ls.moe.topk_idx);
    } else {
      swiglu_forward(be, L.mlp, ls.xn2, out, ls.mlp, false);
    }
    be.add(out, ls.h1);
    x = out;
  }
  s->x_final = x;
  s->xn_final = be.empty({n, d});
  s->rstd_final = be.empty({n});
  be.rmsnorm_forward(x, norm_, eps, s->xn_final, s->rstd_final);
  Tensor logits = be.empty({n, c.vocab_size});
  be.matmul(s->xn_final, false, head_, true, logits);
  if (opt.keep_logits) r.logits = be.to_host(logits);

  Tensor labels = be.from_host(batch.labels);
  for (int64_t i = 0; i < n; ++i) r.targets += batch.labels.i32()[i] != -100;
  if (opt.token_logprobs) {
    Tensor logp = be.empty({n}), ent = be.empty({n});
    be.token_logprobs(logits, labels, opt.sampling_sets, logp, &ent);
    r.token_logprobs = be.to_host(logp);
    r.token_entropy = be.to_host(ent);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total -= r.token_logprobs.f32()[i];
    r.ce_loss = r.targets > 0 ? total / double(r.targets) : 0.0;
    r.loss = r.ce_loss + r.balance_loss;
    if (opt.need_backward) {
      s->logits = logits;  // backward(dlogp) turns them into d/dlogits in place
      s->labels = labels;
      if (opt.sampling_sets) s->sets = *opt.sampling_sets;
      s->has_sets = opt.sampling_sets != nullptr;
      saved_ = std::move(s);
    } else {
      saved_.reset();
    }
    return r;
  }
  float grad_scale = r.targets > 0 ? 1.0f / float(r.targets) : 0.0f;
  double total =
      be.cross_entropy(logits, labels, grad_scale, opt.need_backward ? &logits : nullptr);
  r.ce_loss = r.targets > 0 ? total / double(r.targets) : 0.0;
  r.loss = r.ce_loss + r.balance_loss;
  if (opt.need_backward) {
    s->dlogits = logits;
    saved_ = std::move(s);
  } else {
    saved_.reset();
  }
  return r;
}

void Model::backward(const Tensor* dlogp) {
  SHOAL_CHECK(saved_ != nullptr, "backward() without a forward(need_backward = true) before it");
  Backend& be = *be_;
  Saved& s = *saved_;
  int64_t n = s.x_final.size(0), d = config_.hidden_size;
  if (s.logits.defined()) {
    SHOAL_CHECK(dlogp != nullptr,
                "backward(): the forward returned token log-probs, so backward "
                "needs d(objective)/d(log p) per token");
    SHOAL_CHECK(dlogp->dtype() == DType::f32 && dlogp->numel() == n,
                "backward(): dlogp must be f32[{}], got {}", n, dlogp->describe());
    for (int64_t i = 0; i < n; ++i)
      SHOAL_CHECK(std::isfinite(dlogp->f32()[i]), "backward(): dlogp[{}] is {}", i,
                  dlogp->f32()[i]);
    be.token_logprobs_backward(s.logits, s.labels, s.has_sets ? &s.sets : nullptr,
                               be.from_host(*dlogp), s.logits);
    s.dlogits = s.logits;
    s.logits = Tensor();
  } else {
    SHOAL_CHECK(dlogp == nullptr, "backward(dlogp) needs a forward with token_logprobs");
  }
  be.matmul(s.dlogits, true, s.xn_final, false, g_head_, 1.0f, 1.0f);
  Tensor dxn = be.empty({n, d});
  be.matmul(s.dlogits, false, head_, false, dxn);
  s.dlogits = Tensor();
  Tensor dx = be.empty({n, d});
  be.rmsnorm_backward(dxn, s.x_final, norm_, s.rstd_final, dx, g_norm_);
  Tensor tmp = be.empty({n, d}), dh1 = be.empty({n, d});
  for (size_t li = layers_.size(); li-- > 0;) {
    Layer& L = *layers_[li];
    LayerSaved& ls = s.layers[li];
    // out = h1 + mlp(norm2(h1)):  dh1 = dout + norm2'(mlp'(dout)).
    if (L.moe)
      L.moe->backward(be, ls.moe, dx, tmp);
    else
      swiglu_backward(be, L.mlp, ls.mlp, dx, tmp, false);
    be.rmsnorm_backward(tmp, ls.h1, L.ln2, ls.rstd2, dh1, L.g_ln2);
    be.add(dh1, dx);
    // h1 = x + attn(norm1(x)):  dx = dh1 + norm1'(attn'(dh1)).
    L.attn->backward(be, ls.attn, s.in, dh1, tmp);
    be.rmsnorm_backward(tmp, ls.x_in, L.ln1, ls.rstd1, dx, L.g_ln1);
    be.add(dx, dh1);
    ls = LayerSaved{};  // free activations as we go
  }
  be.embedding_backward(s.ids, dx, g_embed_);
  saved_.reset();
}

Tensor Model::forward_cached(LatentKvCache& cache, const std::vector<int64_t>& seqs,
                             const std::vector<std::vector<int32_t>>& tokens,
                             const CachedForwardOptions& opt) {
  const ModelConfig& c = config_;
  Backend& be = *be_;
  SHOAL_CHECK(seqs.size() == tokens.size() && !seqs.empty(),
              "forward_cached: {} sequences, {} token lists", seqs.size(), tokens.size());
  SHOAL_CHECK(opt.dsa_len.empty() || opt.dsa_len.size() == seqs.size(),
              "forward_cached: {} dsa lengths for {} sequences", opt.dsa_len.size(), seqs.size());
  SHOAL_CHECK(opt.prefill.empty() || opt.prefill.size() == seqs.size(),
              "forward_cached: {} prefill flags for {} sequences", opt.prefill.size(), seqs.size());
  BatchInvariance invariant;
  const bool on_device = be.device() != Device::cpu;
  SHOAL_CHECK(cache.device() == be.device(),
              "forward_cached: the kv cache is on the {} device, the model's backend on {} (give "
              "the cache the model's backend)",
              device_name(cache.device()), device_name(be.device()));
  SHOAL_CHECK(!on_device || !c.is_v32(),
              "forward_cached: DeepSeek Sparse Attention (V3.2) decoding is not built for the {} "
              "backend yet: the indexer's cached top-k selection (Indexer::select_cached) and its "
              "key cache run on the host",
              device_name(be.device()));
  // DSA: a row whose top-k boundary is an exact tie may select differently at the new length (as
  // the uncached forward over the longer sequence would). If any does, the sequence is recomputed
  // from the earliest such row, so the cache always holds what a full forward computes.
  std::vector<std::vector<int32_t>> feed(tokens.begin(), tokens.end());
  std::vector<int64_t> from(seqs.size()), dsa_len(seqs.size());
  int64_t n = 0, max_pos = 0, need = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    SHOAL_CHECK(!tokens[i].empty(), "forward_cached: no new tokens for sequence {}", seqs[i]);
    for (size_t j = 0; j < i; ++j)
      SHOAL_CHECK(seqs[j] != seqs[i], "forward_cached: sequence {} appears twice", seqs[i]);
    for (int32_t id : tokens[i])
      SHOAL_CHECK(id >= 0 && id < c.vocab_size, "forward_cached: token {} outside [0, {})", id,
                  c.vocab_size);
    int64_t len = cache.length(seqs[i]), add = int64_t(tokens[i].size());
    dsa_len[i] = std::max(len + add, opt.dsa_len.empty() ? 0 : opt.dsa_len[i]);
    from[i] = len;
    if (c.is_v32()) {
      std::vector<int32_t> now;
      for (const DsaTieRow& tie : cache.dsa_ties(seqs[i])) {
        if (tie.pos >= from[i]) continue;
        now.clear();
        topk_row(tie.scores.data(), tie.pos, dsa_len[i], c.index_topk, now);
        std::sort(now.begin(), now.end());
        if (now != tie.selected) from[i] = tie.pos;
      }
    }
    n += len - from[i] + add;
    max_pos = std::max(max_pos, len + add);
    need += cache.pages_needed_at(seqs[i], from[i], len - from[i] + add);
  }
  SHOAL_CHECK(max_pos <= c.max_position_embeddings,
              "forward_cached: {} positions exceed max_position_embeddings {}", max_pos,
              c.max_position_embeddings);
  SHOAL_CHECK(need <= cache.free_pages(),
              "kv cache: this forward needs {} more pages, {} free (of {})", need,
              cache.free_pages(), cache.total_pages());
  Tensor ids = Tensor::empty({n}, DType::i32);
  CachedInputs in;
  in.positions = Tensor::empty({n}, DType::i32);
  in.cu = {0};
  std::vector<int64_t> wanted;  // rows of the requested tokens (not of recomputed ones)
  int64_t o = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    int64_t len = cache.length(seqs[i]);
    if (from[i] < len) {
      const std::vector<int32_t>& known = cache.tokens(seqs[i]);
      SHOAL_CHECK(int64_t(known.size()) == len, "kv cache: sequence {} has {} token ids for {}",
                  seqs[i], known.size(), len);
      feed[i].insert(feed[i].begin(), known.begin() + from[i], known.end());
      cache.truncate(seqs[i], from[i]);
    }
    cache.reserve(seqs[i], int64_t(feed[i].size()));
    for (size_t j = 0; j < feed[i].size(); ++j, ++o) {
      ids.i32()[o] = feed[i][j];
      in.positions.i32()[o] = int32_t(from[i] + int64_t(j));
      if (j + tokens[i].size() >= feed[i].size()) wanted.push_back(o);
    }
    in.cu.push_back(o);
    in.seq.push_back(seqs[i]);
    bool multi = feed[i].size() > 1 || (!opt.prefill.empty() && opt.prefill[i]);
    in.mha.push_back(opt.attention == CachedAttention::mha ||
                     (opt.attention == CachedAttention::automatic && multi));
    in.dsa_len.push_back(dsa_len[i]);
  }
  in.cos_sin = rope_table(max_pos);
  if (on_device && decode_graphs_on_ && int64_t(seqs.size()) == n && !opt.routing &&
      !opt.dsa_topk && std::find(in.mha.begin(), in.mha.end(), 1) == in.mha.end()) {
    Tensor logits = decode_graph_step(cache, seqs, in, ids, max_pos);
    if (logits.defined()) {
      for (size_t i = 0; i < seqs.size(); ++i) {
        cache.advance(seqs[i], 1);
        cache.tokens(seqs[i]).push_back(feed[i][0]);
      }
      return opt.device_logits ? logits : be.to_host(logits);
    }
  }
  if (on_device) {
    // The cache addressing of every layer, with the ids and positions, in one upload: the slot
    // of each row, each chunk's page list, and each row's chunk and key count.
    const int64_t chunks = int64_t(seqs.size()), pt = cache.page_tokens();
    int64_t np = 1;
    for (int64_t s : seqs) np = std::max<int64_t>(np, int64_t(cache.pages(s).size()));
    Tensor packed = Tensor::empty({5 * n + chunks * np}, DType::i32);
    int32_t* pk = packed.i32();
    std::copy_n(ids.i32(), n, pk);
    std::copy_n(in.positions.i32(), n, pk + n);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const std::vector<int32_t>& pages = cache.pages(seqs[size_t(ch)]);
      int32_t* bt = pk + 5 * n + ch * np;
      std::fill_n(bt, np, -1);
      std::copy(pages.begin(), pages.end(), bt);
      for (int64_t r = in.cu[size_t(ch)]; r < in.cu[size_t(ch) + 1]; ++r) {
        const int32_t p = in.positions.i32()[r];
        pk[2 * n + r] = int32_t(int64_t(pages[size_t(p / pt)]) * pt + p % pt);
        pk[3 * n + r] = int32_t(ch);
        pk[4 * n + r] = p + 1;
      }
    }
    Tensor dev = be.from_host(packed);
    ids = dev.slice(0, 0, n);
    in.positions = dev.slice(0, n, 2 * n);
    in.slots = dev.slice(0, 2 * n, 3 * n);
    in.row_seq = dev.slice(0, 3 * n, 4 * n);
    in.row_len = dev.slice(0, 4 * n, 5 * n);
    in.block_table = dev.slice(0, 5 * n, 5 * n + chunks * np).view({chunks, np});
    in.max_len = max_pos;
    in.fresh_chunks = true;
    for (size_t i = 0; i < seqs.size(); ++i)
      in.fresh_chunks = in.fresh_chunks && in.mha[i] && from[i] == 0;
  }
  std::vector<int64_t> rows;
  if (opt.last_logits_only) {
    for (size_t i = 0; i < seqs.size(); ++i) rows.push_back(in.cu[i + 1] - 1);
  } else {
    rows = wanted;
  }
  Tensor logits;
  cached_layers(ids, in, cache, rows, wanted, opt, logits);
  for (size_t i = 0; i < seqs.size(); ++i) {
    cache.advance(seqs[i], int64_t(feed[i].size()));
    auto& known = cache.tokens(seqs[i]);
    known.insert(known.end(), feed[i].begin(), feed[i].end());
  }
  return opt.device_logits ? logits : be.to_host(logits);
}

void Model::cached_layers(const Tensor& ids, CachedInputs& in, LatentKvCache& cache,
                          const std::vector<int64_t>& rows, const std::vector<int64_t>& wanted,
                          const CachedForwardOptions& opt, Tensor& logits) {
  const ModelConfig& c = config_;
  Backend& be = *be_;
  const bool on_device = be.device() != Device::cpu;
  const int64_t n = ids.numel();
  const float eps = float(c.rms_norm_eps);
  int64_t d = c.hidden_size;
  if (opt.routing) opt.routing->assign(layers_.size(), Tensor());
  if (opt.dsa_topk) opt.dsa_topk->assign(layers_.size(), {});
  Tensor x = be.empty({n, d});
  be.embedding_forward(ids, embed_, x);
  Tensor xn = be.empty({n, d}), rstd = be.empty({n}), h1 = be.empty({n, d});
  std::vector<std::vector<int32_t>> sel;
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = *layers_[l];
    be.rmsnorm_forward(x, L.ln1, eps, xn, rstd);
    in.dsa_topk = opt.dsa_topk ? &sel : nullptr;
    L.attn->forward_cached(be, xn, in, cache, int64_t(l), h1);
    if (opt.dsa_topk && c.is_v32())
      for (int64_t r : wanted) (*opt.dsa_topk)[l].push_back(sel[size_t(r)]);
    be.add(h1, x);
    be.rmsnorm_forward(h1, L.ln2, eps, xn, rstd);
    Tensor out = be.empty({n, d});
    if (L.moe) {
      MoeSaved ms;
      L.moe->forward(be, xn, {0, n}, out, ms, nullptr, 0.0, /*count_load=*/false);
      if (opt.routing) {
        Tensor all = be.to_host(ms.topk_idx);
        int64_t k = all.size(1);
        Tensor mine = Tensor::empty({int64_t(wanted.size()), k}, DType::i32);
        for (size_t r = 0; r < wanted.size(); ++r)
          std::copy_n(all.i32() + wanted[r] * k, k, mine.i32() + int64_t(r) * k);
        (*opt.routing)[l] = mine;
      }
    } else {
      SwiGluSaved unused;
      swiglu_forward(be, L.mlp, xn, out, unused, false);
    }
    be.add(out, h1);
    x = out;
  }
  if (int64_t(rows.size()) != n && on_device) {  // one gather, not a copy per row
    Tensor idx = Tensor::empty({int64_t(rows.size())}, DType::i32);
    for (size_t r = 0; r < rows.size(); ++r) idx.i32()[r] = int32_t(rows[r]);
    Tensor picked = be.empty({int64_t(rows.size()), d});
    be.gather_rows(x, idx, 1, picked);
    x = picked;
  } else if (int64_t(rows.size()) != n) {
    Tensor picked = be.empty({int64_t(rows.size()), d});
    for (size_t r = 0; r < rows.size(); ++r) {
      Tensor dst = picked.select(0, int64_t(r));
      be.copy(x.select(0, rows[r]), dst);
    }
    x = picked;
  }
  int64_t m = x.size(0);
  Tensor xf = be.empty({m, d}), rf = be.empty({m});
  be.rmsnorm_forward(x, norm_, eps, xf, rf);
  if (!logits.defined()) logits = be.empty({m, c.vocab_size});
  be.matmul(xf, false, head_, true, logits);
}

// ---------------------------------------------------------------- decode steps as graphs
//
// The host launches a decode step's ~40 ops per layer one by one, which at small batches takes
// longer than the GPU needs for them. A step is instead recorded once (Backend::record) for a key
// -- rows padded up, the longest sequence rounded up, the cache's pools -- and replayed with one
// launch: the step's inputs (ids, positions, cache slots, block table, key counts) go into the
// recording's input tensor, its logits come out in the recording's logits tensor. Padding rows
// repeat row 0 but write no latent (slot -1); the block table is as wide as the rounded length
// needs, and the attention kernels split their work for the rounded length (each row still
// attends to its own keys only). A key is recorded the second time it is seen, so that the first
// ordinary step has made what the recording must not (the weights' bf16 copies, cuBLAS's plans).

namespace {

// Rows a decode step is recorded for: powers of two up to 32, then multiples of 32.
int64_t graph_rows(int64_t n) {
  if (n > 32) return (n + 31) / 32 * 32;
  int64_t r = 1;
  while (r < n) r *= 2;
  return r;
}

// The length the attention's work is split for: a power of two, at least 256.
int64_t graph_len(int64_t len) {
  int64_t r = 256;
  while (r < len) r *= 2;
  return r;
}

constexpr size_t kMaxDecodeGraphs = 8;

}  // namespace

struct Model::DecodeGraph {
  int64_t rows = 0, max_len = 0, width = 0;
  std::vector<const void*> pools;  // the cache pools (per layer) it reads and writes
  std::string why;                 // set when it cannot be recorded: the key runs op by op
  std::unique_ptr<OpGraph> graph;  // null until recorded (the key's first step runs op by op)
  Tensor inputs;                   // i32 [5 rows + rows * width]: ids, positions, slots, row's
                                   // sequence, key counts, block table
  Tensor logits;                   // [rows, vocab]
  // The weights as recorded: a recording reads their memory and their bf16 copies directly.
  struct Stamp {
    const Storage* storage;
    const void* data;
    const void* derived;
  };
  std::vector<Stamp> weights;
  uint64_t used = 0;
};

void Model::set_decode_graphs(bool on) {
  decode_graphs_on_ = on;
  if (!on) decode_graphs_.clear();
}

Tensor Model::decode_graph_step(LatentKvCache& cache, const std::vector<int64_t>& seqs,
                                const CachedInputs& in, const Tensor& ids, int64_t max_pos) {
  Backend& be = *be_;
  const int64_t n = int64_t(seqs.size()), rows = graph_rows(n), max_len = graph_len(max_pos),
                pt = cache.page_tokens(), width = (max_len + pt - 1) / pt;
  for (int64_t s : seqs)
    if (int64_t(cache.pages(s).size()) > width) return Tensor();
  std::vector<const void*> pools;
  for (size_t l = 0; l < layers_.size(); ++l) {
    Tensor p = cache.latent_pool(int64_t(l));
    pools.push_back(static_cast<const char*>(p.storage()->data) + p.offset() * sizeof(float));
  }
  DecodeGraph* g = nullptr;
  for (auto& e : decode_graphs_)
    if (e->rows == rows && e->max_len == max_len && e->pools == pools) g = e.get();
  if (g && g->graph) {
    bool current = true;
    for (const auto& w : g->weights) {
      const Storage& st = *w.storage;
      current = current && st.data == w.data && st.derived.get() == w.derived &&
                (!st.derived || st.derived_version == st.version.load());
    }
    // A recording reads the weights' memory and their bf16 copies directly: when either moved, or
    // a write bypassed the optimizer's update (which refreshes the copies) and left a copy stale,
    // every recording is dropped; an ordinary step refreshes the copies, the next records again.
    if (!current) {
      for (auto& e : decode_graphs_) e->graph.reset(), e->inputs = Tensor(), e->logits = Tensor();
      return Tensor();
    }
  }
  if (!g) {  // first sighting: an ordinary step
    if (decode_graphs_.size() >= kMaxDecodeGraphs) {
      auto lru = std::min_element(decode_graphs_.begin(), decode_graphs_.end(),
                                  [](const auto& a, const auto& b) { return a->used < b->used; });
      decode_graphs_.erase(lru);
    }
    auto e = std::make_unique<DecodeGraph>();
    e->rows = rows, e->max_len = max_len, e->width = width, e->pools = pools;
    e->used = ++decode_graph_clock_;
    decode_graphs_.push_back(std::move(e));
    return Tensor();
  }
  g->used = ++decode_graph_clock_;
  if (!g->why.empty()) return Tensor();

  // The step's inputs, padded: rows past n repeat row 0 and write no latent.
  Tensor packed = Tensor::empty({5 * rows + rows * width}, DType::i32);
  int32_t* pk = packed.i32();
  std::fill_n(pk + 5 * rows, rows * width, -1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r < n ? r : 0;
    const int32_t p = in.positions.i32()[i];
    const std::vector<int32_t>& pages = cache.pages(seqs[size_t(i)]);
    pk[r] = ids.i32()[i];
    pk[rows + r] = p;
    pk[2 * rows + r] = r < n ? int32_t(int64_t(pages[size_t(p / pt)]) * pt + p % pt) : -1;
    pk[3 * rows + r] = int32_t(i);
    pk[4 * rows + r] = p + 1;
    if (r < n) std::copy(pages.begin(), pages.end(), pk + 5 * rows + r * width);
  }
  if (!g->graph) {
    g->inputs = be.empty({5 * rows + rows * width}, DType::i32);
    g->logits = be.empty({rows, config_.vocab_size});
    be.copy(packed, g->inputs);
    CachedInputs gin;
    gin.positions = g->inputs.slice(0, rows, 2 * rows);
    gin.cos_sin = in.cos_sin;
    gin.slots = g->inputs.slice(0, 2 * rows, 3 * rows);
    gin.row_seq = g->inputs.slice(0, 3 * rows, 4 * rows);
    gin.row_len = g->inputs.slice(0, 4 * rows, 5 * rows);
    gin.block_table = g->inputs.slice(0, 5 * rows, 5 * rows + rows * width).view({rows, width});
    gin.max_len = max_len;
    std::vector<int64_t> all(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      all[size_t(r)] = r;
      gin.cu.push_back(r);
      gin.seq.push_back(seqs[size_t(r < n ? r : 0)]);
    }
    gin.cu.push_back(rows);
    gin.mha.assign(size_t(rows), 0);
    gin.dsa_len.assign(size_t(rows), 0);
    const Tensor gids = g->inputs.slice(0, 0, rows);
    CachedForwardOptions plain;
    std::string why;
    g->graph = be.record([&] { cached_layers(gids, gin, cache, all, all, plain, g->logits); }, why);
    if (!g->graph) {
      g->why = why;
      decode_graph_stats_.refused = why;
      g->inputs = Tensor(), g->logits = Tensor();
      log::info("decode steps of {} rows run op by op (not as a recorded graph): {}", rows, why);
      return Tensor();
    }
    ++decode_graph_stats_.recorded;
    g->weights.clear();
    for (const Param& p : params_) {
      const Storage* st = p.value.storage();
      g->weights.push_back({st, st->data, st->derived.get()});
    }
  } else {
    be.copy(packed, g->inputs);
  }
  g->graph->replay();
  ++decode_graph_stats_.replayed;
  return g->logits.slice(0, 0, n);
}

void Model::update_router_bias(double gamma) {
  for (auto& L : layers_)
    if (L->moe) L->moe->update_bias(*be_, gamma);
}

}  // namespace shoal
