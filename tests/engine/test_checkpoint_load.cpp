// Model checkpoint loading beyond plain f32: bf16 and FP8 (block-quantized, weight_scale_inv)
// checkpoints convert on load; missing and misshapen tensors give errors naming file and tensor.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/model/model.h"
#include "engine/safetensors.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / ("shoal_ckpt_" + tag + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string golden() {
  return std::string(SHOAL_TEST_DATA) + "/tiny_v3";
}

// parameter_count (what a device checks before allocating a model) equals what the constructor
// allocates, on every golden config: V3, YaRN, V3.2 (DSA indexer), no q LoRA, dense and MoE
// layers, tied embeddings.
TEST(CheckpointLoad, ParameterCountMatchesTheConstructedModel) {
  std::vector<fs::path> configs;
  for (const auto& e : fs::recursive_directory_iterator(SHOAL_TEST_DATA))
    if (e.path().filename() == "config.json") configs.push_back(e.path());
  ASSERT_GE(configs.size(), 4u);
  for (const fs::path& cfg : configs) {
    ModelConfig c;
    try {
      c = ModelConfig::load(cfg.parent_path().string());
    } catch (const Error&) {
      continue;  // not a model config (a tokenizer's)
    }
    for (bool tie : {false, true}) {
      c.tie_word_embeddings = tie;
      Model m(c, cpu_backend());
      int64_t values = 0, trainable = 0;
      for (const Param& p : m.params()) {
        values += p.value.numel();
        if (p.grad.defined()) trainable += p.grad.numel();
      }
      const ParameterCount pc = parameter_count(c);
      EXPECT_EQ(pc.values, values) << cfg << (tie ? " tied" : "");
      EXPECT_EQ(pc.trainable, trainable) << cfg << (tie ? " tied" : "");
    }
  }
}

TEST(CheckpointLoad, Bf16CheckpointLoadsAsRoundedValues) {
  CheckpointReader src = CheckpointReader::open(golden());
  fs::path dir = fresh_dir("bf16");
  fs::copy_file(golden() + "/config.json", dir / "config.json");
  std::vector<std::pair<std::string, Tensor>> t;
  for (auto& n : src.names()) t.emplace_back(n, src.get(n).to(DType::bf16));
  write_safetensors((dir / "model.safetensors").string(), t);
  auto m = Model::from_pretrained(dir.string(), cpu_backend());
  for (auto& ct : m->checkpoint_tensors()) {
    Tensor want = src.get(ct.name).to(DType::bf16).to(DType::f32);
    Tensor have = ct.view.contiguous();
    ASSERT_EQ(std::memcmp(want.raw(), have.raw(), want.nbytes()), 0) << ct.name;
  }
  fs::remove_all(dir);
}

TEST(CheckpointLoad, Fp8BlockQuantizedCheckpointDequantizes) {
  // Quantize every 2-D linear weight to e4m3 with per-block scales (block 16 x 16 here, set in
  // quantization_config, so several blocks per tensor), as DeepSeek's FP8 checkpoints store them.
  CheckpointReader src = CheckpointReader::open(golden());
  fs::path dir = fresh_dir("fp8");
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(golden() + "/config.json"));
  cfg["quantization_config"] = {
      {"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {16, 16}}};
  std::ofstream(dir / "config.json") << cfg.dump(2);
  std::vector<std::pair<std::string, Tensor>> t;
  std::map<std::string, Tensor> expected;
  for (auto& n : src.names()) {
    Tensor w = src.get(n).to(DType::f32);
    bool quantize = w.ndim() == 2 && n.find("proj") != std::string::npos;
    if (!quantize) {
      t.emplace_back(n, w);
      expected[n] = w;
      continue;
    }
    int64_t r = w.size(0), c = w.size(1), br = (r + 15) / 16, bc = (c + 15) / 16;
    Tensor q = Tensor::empty({r, c}, DType::f8e4m3), s = Tensor::empty({br, bc}, DType::f32);
    Tensor deq = Tensor::empty({r, c}, DType::f32);
    for (int64_t i = 0; i < br; ++i)
      for (int64_t j = 0; j < bc; ++j) {
        float amax = 1e-4f;
        for (int64_t a = i * 16; a < std::min(r, i * 16 + 16); ++a)
          for (int64_t b = j * 16; b < std::min(c, j * 16 + 16); ++b)
            amax = std::max(amax, std::fabs(w.f32()[a * c + b]));
        float scale = amax / 448.0f;
        s.f32()[i * bc + j] = scale;
        for (int64_t a = i * 16; a < std::min(r, i * 16 + 16); ++a)
          for (int64_t b = j * 16; b < std::min(c, j * 16 + 16); ++b) {
            uint8_t code = f32_to_f8e4m3(w.f32()[a * c + b] / scale);
            static_cast<uint8_t*>(q.raw())[a * c + b] = code;
            deq.f32()[a * c + b] = f8e4m3_to_f32(code) * scale;
          }
      }
    t.emplace_back(n, q);
    t.emplace_back(n + "_scale_inv", s);
    expected[n] = deq;
  }
  write_safetensors((dir / "model.safetensors").string(), t);
  auto m = Model::from_pretrained(dir.string(), cpu_backend());
  for (auto& ct : m->checkpoint_tensors()) {
    Tensor have = ct.view.contiguous();
    const Tensor& want = expected.at(ct.name);
    for (int64_t i = 0; i < want.numel(); ++i)
      ASSERT_EQ(have.f32()[i], want.f32()[i]) << ct.name << " element " << i;
  }
  // Without its scale the FP8 tensor is refused, naming it.
  std::vector<std::pair<std::string, Tensor>> no_scale;
  for (auto& [n, v] : t)
    if (n != "model.layers.0.self_attn.o_proj.weight_scale_inv") no_scale.emplace_back(n, v);
  write_safetensors((dir / "model.safetensors").string(), no_scale);
  try {
    Model::from_pretrained(dir.string(), cpu_backend());
    FAIL() << "loaded an FP8 tensor without its scale";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("o_proj.weight_scale_inv"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(CheckpointLoad, MissingAndMisshapenTensorsAreNamed) {
  CheckpointReader src = CheckpointReader::open(golden());
  fs::path dir = fresh_dir("missing");
  fs::copy_file(golden() + "/config.json", dir / "config.json");
  std::vector<std::pair<std::string, Tensor>> t;
  for (auto& n : src.names())
    if (n != "model.layers.2.mlp.experts.5.up_proj.weight") t.emplace_back(n, src.get(n));
  write_safetensors((dir / "model.safetensors").string(), t);
  try {
    Model::from_pretrained(dir.string(), cpu_backend());
    FAIL() << "loaded a checkpoint with a missing expert";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.2.mlp.experts.5.up_proj.weight"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  t.emplace_back("model.layers.2.mlp.experts.5.up_proj.weight",
                 Tensor::zeros({32, 63}, DType::f32));
  write_safetensors((dir / "model.safetensors").string(), t);
  try {
    Model::from_pretrained(dir.string(), cpu_backend());
    FAIL() << "loaded a misshapen tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[32, 63]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  t.back().second = Tensor::zeros({32, 64}, DType::i32);
  write_safetensors((dir / "model.safetensors").string(), t);
  EXPECT_THROW(Model::from_pretrained(dir.string(), cpu_backend()), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shoal
