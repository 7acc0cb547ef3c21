// DeepSeek Sparse Attention (V3.2): sparse attention against an explicit reference, the dense
// limit (index_topk >= sequence length equals dense MLA), the indexer's KL gradients by finite
// differences (dense warm-up and sparse stage), a warm-up run lowering the KL on held-out
// sequences, the Hadamard + FP8 scoring path against the plain one, and bad input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "engine/model/model.h"
#include "engine/safetensors.h"
#include "engine/train/trainer.h"
#include "tests/engine/gradcheck.h"

namespace shoal {
namespace {

using gradcheck::OneOmpThread;
using gradcheck::randn;

nlohmann::json v32_json(int64_t topk) {
  return {{"model_type", "deepseek_v32"},
          {"vocab_size", 64},
          {"hidden_size", 32},
          {"num_hidden_layers", 2},
          {"first_k_dense_replace", 1},
          {"intermediate_size", 48},
          {"num_attention_heads", 2},
          {"q_lora_rank", 16},
          {"kv_lora_rank", 12},
          {"qk_nope_head_dim", 8},
          {"qk_rope_head_dim", 4},
          {"v_head_dim", 8},
          {"n_routed_experts", 4},
          {"num_experts_per_tok", 2},
          {"n_shared_experts", 1},
          {"moe_intermediate_size", 16},
          {"n_group", 2},
          {"topk_group", 1},
          {"routed_scaling_factor", 2.5},
          {"max_position_embeddings", 128},
          {"index_n_heads", 2},
          {"index_head_dim", 8},
          {"index_topk", topk}};
}

std::vector<std::vector<int32_t>> random_sequences(std::mt19937& rng, std::vector<int> lengths,
                                                   int vocab) {
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<std::vector<int32_t>> out;
  for (int len : lengths) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& x : s) x = d(rng);
    out.push_back(s);
  }
  return out;
}

TEST(Dsa, SparseAttentionEqualsAttentionOverTheSelectedKeys) {
  std::mt19937 rng(3);
  const int64_t n = 9, h = 2, d = 4;
  std::vector<int64_t> cu = {0, 4, 9};
  Tensor q = randn({n, h, d}, rng), k = randn({n, h, d}, rng), v = randn({n, h, d}, rng);
  Tensor idx = Tensor::empty({n, 3}, DType::i32);
  std::uniform_int_distribution<int> pick(-1, 4);
  for (int64_t t = 0; t < n; ++t) {
    int64_t pos = t < 4 ? t : t - 4;
    idx.i32()[t * 3] = int32_t(pos);  // always keep the token itself (a row must keep one key)
    for (int j = 1; j < 3; ++j) idx.i32()[t * 3 + j] = int32_t(std::min<int64_t>(pick(rng), 4));
  }
  // Entries past a short sequence's end are invalid: clamp them into range (-1 .. len-1).
  for (int64_t t = 0; t < 4; ++t)
    for (int j = 0; j < 3; ++j) idx.i32()[t * 3 + j] = std::min(idx.i32()[t * 3 + j], 3);
  Tensor out = Tensor::empty({n, h, d}, DType::f32), lse = Tensor::empty({h, n}, DType::f32);
  cpu_backend().attention_forward(q, k, v, cu, 0.5f, out, lse, &idx);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      for (int64_t hh = 0; hh < h; ++hh) {
        std::set<int64_t> keys;
        for (int j = 0; j < 3; ++j) {
          int32_t p = idx.i32()[t * 3 + j];
          if (p >= 0 && cu[s] + p <= t) keys.insert(cu[s] + p);
        }
        double mx = -1e30, z = 0;
        std::vector<double> sc;
        for (int64_t key : keys) {
          double dotp = 0;
          for (int64_t i = 0; i < d; ++i)
            dotp += double(q.f32()[(t * h + hh) * d + i]) * k.f32()[(key * h + hh) * d + i];
          sc.push_back(0.5 * dotp);
          mx = std::max(mx, 0.5 * dotp);
        }
        for (double x : sc) z += std::exp(x - mx);
        for (int64_t i = 0; i < d; ++i) {
          double o = 0;
          size_t j = 0;
          for (int64_t key : keys)
            o += std::exp(sc[j++] - mx) / z * v.f32()[(key * h + hh) * d + i];
          EXPECT_NEAR(out.f32()[(t * h + hh) * d + i], o, 1e-5) << "token " << t << " head " << hh;
        }
        EXPECT_NEAR(lse.f32()[hh * n + t], mx + std::log(z), 1e-5);
      }
  // A selection that leaves a token no key at or before itself is refused.
  Tensor bad = Tensor::empty({n, 1}, DType::i32);
  for (int64_t t = 0; t < n; ++t) bad.i32()[t] = 0;
  bad.i32()[4] = 3;  // token 4 is position 0 of the second sequence: key 3 is in its future
  EXPECT_THROW(cpu_backend().attention_forward(q, k, v, cu, 0.5f, out, lse, &bad), Error);
}

TEST(Dsa, TopkCoveringTheSequenceEqualsDenseMla) {
  OneOmpThread one;
  ModelConfig c32 = ModelConfig::from_json(v32_json(64), "test");
  nlohmann::json j3 = v32_json(64);
  j3["model_type"] = "deepseek_v3";
  ModelConfig c3 = ModelConfig::from_json(j3, "test");
  Model sparse(c32, cpu_backend()), dense(c3, cpu_backend());
  sparse.init_random(5, 0.3f);
  for (auto& p : dense.params()) p.value.copy_from(sparse.params().get(p.name).value);
  std::mt19937 rng(1);
  Batch b = Batch::next_token(random_sequences(rng, {17, 30}, 64));
  ForwardOptions opt;
  opt.keep_logits = true;
  opt.keep_dsa_topk = true;
  ForwardResult rs = sparse.forward(b, opt), rd = dense.forward(b, opt);
  ASSERT_EQ(rs.dsa_topk.size(), 2u);
  EXPECT_EQ(rs.dsa_topk[0].size(1), 30);  // k = min(index_topk, longest sequence)
  EXPECT_EQ(gradcheck::max_abs(rs.logits), gradcheck::max_abs(rs.logits));
  double diff = 0;
  for (int64_t i = 0; i < rs.logits.numel(); ++i)
    diff = std::max(diff, double(std::fabs(rs.logits.f32()[i] - rd.logits.f32()[i])));
  EXPECT_EQ(diff, 0.0) << "sparse attention over every earlier token must equal dense MLA";
  // With a smaller index_topk the selection really is sparse and the logits differ.
  ModelConfig c8 = ModelConfig::from_json(v32_json(4), "test");
  Model small(c8, cpu_backend());
  for (auto& p : small.params()) p.value.copy_from(sparse.params().get(p.name).value);
  ForwardResult r4 = small.forward(b, opt);
  double diff4 = 0;
  for (int64_t i = 0; i < r4.logits.numel(); ++i)
    diff4 = std::max(diff4, double(std::fabs(r4.logits.f32()[i] - rd.logits.f32()[i])));
  EXPECT_GT(diff4, 1e-3);
  for (int64_t t = 0; t < r4.dsa_topk[0].size(0); ++t) {
    int64_t pos = t < 17 ? t : t - 17, valid = 0;
    for (int64_t j = 0; j < 4; ++j) valid += r4.dsa_topk[0].i32()[t * 4 + j] >= 0;
    EXPECT_EQ(valid, std::min<int64_t>(4, pos + 1)) << "token " << t;
  }
}

// d(indexer KL)/d(indexer parameters) against central differences along random directions.
void check_kl_gradients(bool dense) {
  OneOmpThread one;
  ModelConfig c = ModelConfig::from_json(v32_json(5), "test");
  Model m(c, cpu_backend());
  m.init_random(9, 0.4f);
  std::mt19937 rng(dense ? 2 : 4);
  Batch b = Batch::next_token(random_sequences(rng, {12, 9}, 64));
  auto kl_at = [&](std::vector<Tensor>* topk) {
    ForwardOptions o;
    o.need_backward = false;
    o.measure_indexer_kl = true;
    o.dsa_dense = dense;
    o.keep_dsa_topk = topk != nullptr;
    ForwardResult r = m.forward(b, o);
    if (topk) *topk = r.dsa_topk;
    return r.indexer_kl;
  };
  m.params().zero_grads();
  ForwardOptions o;
  o.dsa_dense = dense;
  o.indexer_kl_weight = 1.0;
  o.keep_dsa_topk = true;
  ForwardResult base = m.forward(b, o);
  EXPECT_GT(base.indexer_kl, 0.0);
  int checked = 0;
  for (auto& p : m.params()) {
    if (p.name.find("indexer") == std::string::npos) {
      continue;
    }
    Tensor v = randn(p.value.shape(), rng);
    double ana = gradcheck::dot(p.grad, v);
    Tensor saved = p.value.clone();
    // Step relative to the parameter's size (floored: the LayerNorm bias starts at zero).
    double scale_p = std::max(std::sqrt(gradcheck::dot(p.value, p.value)),
                              0.3 * std::sqrt(double(p.value.numel())));
    double h = 1e-3 * scale_p / std::sqrt(gradcheck::dot(v, v));
    auto at = [&](double step, std::vector<Tensor>* topk) {
      Tensor x = saved.clone();
      for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] += float(step * v.f32()[i]);
      p.value.copy_from(x);
      return kl_at(topk);
    };
    std::vector<Tensor> t1, t2, t3, t4;
    double f1 = at(h, &t1), f2 = at(-h, &t2), f3 = at(2 * h, &t3), f4 = at(-2 * h, &t4);
    p.value.copy_from(saved);
    if (!dense) {  // the selection must not change for the difference to be meaningful
      bool same = true;
      for (auto* t : {&t1, &t2, &t3, &t4})
        for (size_t l = 0; l < t->size(); ++l)
          same = same &&
                 std::equal((*t)[l].i32(), (*t)[l].i32() + (*t)[l].numel(), base.dsa_topk[l].i32());
      if (!same) continue;
    }
    double num = (8 * (f1 - f2) - (f3 - f4)) / (12 * h);
    double rel = std::fabs(num - ana) / std::max({std::fabs(num), std::fabs(ana), 1e-6});
    // f32 forward, KL of order 1, fourth-order differences: agreement to ~1e-3 is typical.
    EXPECT_LT(rel, 1e-2) << p.name << " numeric " << num << " analytic " << ana;
    ++checked;
  }
  EXPECT_GE(checked, dense ? 10 : 5) << "too few indexer tensors checked";
}

TEST(Dsa, IndexerKlGradientsDenseWarmup) {
  check_kl_gradients(true);
}
TEST(Dsa, IndexerKlGradientsSparseStage) {
  check_kl_gradients(false);
}

// The LM loss's gradient through sparse attention (the selection held fixed), by central
// differences on a few main-model parameters; directions that change the selection are skipped.
TEST(Dsa, LmGradientsThroughSparseAttention) {
  OneOmpThread one;
  Model m(ModelConfig::from_json(v32_json(5), "test"), cpu_backend());
  m.init_random(12, 0.4f);
  std::mt19937 rng(17);
  Batch b = Batch::next_token(random_sequences(rng, {14, 11}, 64));
  m.params().zero_grads();
  ForwardOptions o;
  o.keep_dsa_topk = true;
  ForwardResult base = m.forward(b, o);
  m.backward();
  int checked = 0;
  for (const char* name :
       {"model.layers.0.self_attn.q_b_proj.weight", "model.layers.0.self_attn.kv_b_proj.weight",
        "model.layers.1.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.1.self_attn.o_proj.weight", "model.embed_tokens.weight"}) {
    Param& p = m.params().get(name);
    Tensor v = randn(p.value.shape(), rng);
    double ana = gradcheck::dot(p.grad, v);
    Tensor saved = p.value.clone();
    double h = 1e-3 * std::sqrt(gradcheck::dot(p.value, p.value) / gradcheck::dot(v, v));
    bool same = true;
    auto loss_at = [&](double step) {
      Tensor x = saved.clone();
      for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] += float(step * v.f32()[i]);
      p.value.copy_from(x);
      ForwardOptions fo;
      fo.need_backward = false;
      fo.keep_dsa_topk = true;
      ForwardResult r = m.forward(b, fo);
      for (size_t l = 0; l < r.dsa_topk.size(); ++l)
        same = same && std::equal(r.dsa_topk[l].i32(), r.dsa_topk[l].i32() + r.dsa_topk[l].numel(),
                                  base.dsa_topk[l].i32());
      return r.loss;
    };
    double f1 = loss_at(h), f2 = loss_at(-h), f3 = loss_at(2 * h), f4 = loss_at(-2 * h);
    p.value.copy_from(saved);
    if (!same) continue;
    double num = (8 * (f1 - f2) - (f3 - f4)) / (12 * h);
    double rel = std::fabs(num - ana) / std::max({std::fabs(num), std::fabs(ana), 1e-6});
    EXPECT_LT(rel, 1e-2) << name << " numeric " << num << " analytic " << ana;
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST(Dsa, LmLossDoesNotReachTheIndexer) {
  OneOmpThread one;
  Model m(ModelConfig::from_json(v32_json(4), "test"), cpu_backend());
  m.init_random(2, 0.3f);
  std::mt19937 rng(8);
  m.params().zero_grads();
  m.forward(Batch::next_token(random_sequences(rng, {10}, 64)));
  m.backward();
  for (auto& p : m.params()) {
    if (!p.lm_grad) {
      EXPECT_EQ(gradcheck::max_abs(p.grad), 0.0) << p.name;
    }
  }
  EXPECT_GT(gradcheck::max_abs(m.params().get("model.layers.0.self_attn.q_a_proj.weight").grad),
            0.0);
}

TEST(Dsa, DenseWarmupLowersHeldOutKl) {
  OneOmpThread one;
  Model m(ModelConfig::from_json(v32_json(6), "test"), cpu_backend());
  m.init_random(4, 0.3f);
  std::mt19937 rng(21);
  Batch held_out = Batch::next_token(random_sequences(rng, {24, 24, 24, 24}, 64));
  auto held_kl = [&] {
    ForwardOptions o;
    o.need_backward = false;
    o.measure_indexer_kl = true;
    o.dsa_dense = true;
    return m.forward(held_out, o).indexer_kl;
  };
  Tensor q_a_before = m.params().get("model.layers.1.self_attn.q_a_proj.weight").value.clone();
  double before = held_kl();
  TrainerConfig tc;
  tc.steps = 60;
  tc.lr = 1e-2f;
  tc.warmup_steps = 5;
  tc.indexer_dense_warmup = true;
  Trainer t(m, tc, 5);
  t.run(
      [&](std::mt19937_64& r) {
        std::mt19937 r32(static_cast<uint32_t>(r()));
        return Batch::next_token(random_sequences(r32, {24, 24, 24, 24}, 64));
      },
      nullptr);
  double after = held_kl();
  EXPECT_LT(after, 0.8 * before) << "KL on held-out sequences: " << before << " -> " << after;
  // Only the indexer trained.
  Tensor q_a_after = m.params().get("model.layers.1.self_attn.q_a_proj.weight").value;
  EXPECT_EQ(std::memcmp(q_a_before.raw(), q_a_after.raw(), q_a_before.nbytes()), 0);
}

TEST(Dsa, HadamardFp8ScoringTracksThePlainPath) {
  OneOmpThread one;
  Model m(ModelConfig::from_json(v32_json(6), "test"), cpu_backend());
  m.init_random(6, 0.3f);
  std::mt19937 rng(13);
  Batch b = Batch::next_token(random_sequences(rng, {40}, 64));
  ForwardOptions o;
  o.need_backward = false;
  o.keep_logits = true;
  o.keep_dsa_topk = true;
  ForwardResult plain = m.forward(b, o);
  o.indexer_fp8 = true;
  ForwardResult fp8 = m.forward(b, o);
  // The rotation preserves dot products and e4m3 keeps ~3 significant bits per element, so the
  // selected sets overlap almost entirely and the logits stay close.
  int64_t same = 0, total = 0;
  for (size_t l = 0; l < plain.dsa_topk.size(); ++l)
    for (int64_t t = 0; t < plain.dsa_topk[l].size(0); ++t) {
      std::set<int32_t> a, c;
      for (int64_t j = 0; j < 6; ++j) {
        a.insert(plain.dsa_topk[l].i32()[t * 6 + j]);
        c.insert(fp8.dsa_topk[l].i32()[t * 6 + j]);
      }
      for (int32_t x : a) same += x >= 0 && c.count(x);
      for (int32_t x : a) total += x >= 0;
    }
  EXPECT_GT(double(same) / double(total), 0.9) << same << " of " << total;
  // Hadamard alone (no FP8) preserves scores up to f32 rounding: check on random rows.
  Tensor a = randn({3, 16}, rng), c = randn({3, 16}, rng);
  Tensor ha = a.clone(), hc = c.clone();
  cpu_backend().hadamard_fp8(ha, true, false);
  cpu_backend().hadamard_fp8(hc, true, false);
  for (int64_t r = 0; r < 3; ++r) {
    double d0 = 0, d1 = 0;
    for (int64_t i = 0; i < 16; ++i) {
      d0 += double(a.f32()[r * 16 + i]) * c.f32()[r * 16 + i];
      d1 += double(ha.f32()[r * 16 + i]) * hc.f32()[r * 16 + i];
    }
    EXPECT_NEAR(d0, d1, 1e-5 * (1 + std::fabs(d0)));
  }
}

TEST(Dsa, BadConfigsAndCheckpoints) {
  auto bad = [](auto edit, const char* key) {
    nlohmann::json j = v32_json(4);
    edit(j);
    try {
      ModelConfig::from_json(j, "cfg.json");
      ADD_FAILURE() << "accepted a config with bad " << key;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  bad([](auto& j) { j["index_topk"] = 0; }, "index_topk");
  bad([](auto& j) { j["index_topk"] = -3; }, "index_topk");
  bad([](auto& j) { j["index_head_dim"] = 2; }, "index_head_dim");  // < qk_rope_head_dim 4
  bad([](auto& j) { j["q_lora_rank"] = nullptr; }, "q_lora_rank");
  bad(
      [](auto& j) {
        j["layer_types"] = {"deepseek_sparse_attention", "full_attention"};
      },
      "layer_types");
  // A V3.2 checkpoint without its indexer tensors is refused, naming the tensor.
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("shoal_dsa_" + std::to_string(getpid()));
  fs::remove_all(dir);
  Model m(ModelConfig::from_json(v32_json(4), "test"), cpu_backend());
  m.init_random(1);
  m.save(dir.string());
  CheckpointReader r = CheckpointReader::open(dir.string());
  std::vector<std::pair<std::string, Tensor>> t;
  for (auto& n : r.names())
    if (n != "model.layers.1.self_attn.indexer.k_norm.bias") t.emplace_back(n, r.get(n).clone());
  write_safetensors((dir / "model.safetensors").string(), t);
  try {
    Model::from_pretrained(dir.string(), cpu_backend());
    ADD_FAILURE() << "loaded a V3.2 checkpoint without an indexer tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("indexer.k_norm.bias"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shoal
