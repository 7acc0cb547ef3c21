// Parsing and validation of run configs (run_config.h).
#include "actors/run_config.h"

#include <filesystem>
#include <map>
#include <optional>

#include "base/error.h"

namespace shoal::actors {

namespace {

std::vector<TaskSetSpec> read_task_sets(const ConfigReader& r, const std::string& key) {
  std::vector<TaskSetSpec> out;
  for (const ConfigReader& t : r.children(key)) {
    TaskSetSpec s;
    s.family = t.str("family");
    if (s.family.empty()) t.fail("family", "expected a task family name, found \"\"");
    s.count = t.integer("count", 100, 1, 10'000'000);
    s.difficulty = t.integer("difficulty", 1, 1, 10);
    out.push_back(s);
  }
  return out;
}

SamplingSpec read_sampling(const ConfigReader& r, SamplingSpec s) {
  // Giving a temperature or a truncation means sampling, unless "greedy" says otherwise.
  bool sampling_keys = r.has("temperature") || r.has("top_k") || r.has("top_p") || r.has("min_p");
  s.greedy = r.boolean("greedy", s.greedy && !sampling_keys);
  s.temperature = r.number("temperature", s.temperature, 1e-3, 100.0);
  s.top_k = r.integer("top_k", s.top_k, 0, 1 << 30);
  s.top_p = r.number("top_p", s.top_p, 1e-6, 1.0);
  s.min_p = r.number("min_p", s.min_p, 0.0, 1.0);
  return s;
}

StageSpec read_stage(const ConfigReader& r, std::map<std::string, int>& names) {
  StageSpec s;
  s.type = r.choice("type", {"sft", "dpo", "grpo"}, "");
  s.name = r.str("name", s.type);
  if (int n = ++names[s.name]; n > 1) s.name = fmt::format("{}-{}", s.name, n);
  s.steps = r.integer("steps", s.steps, 0, 100'000'000);
  s.lr = r.number("lr", s.type == "sft" ? 1e-3 : 1e-4, 0.0, 10.0);
  s.warmup_steps = r.integer("warmup_steps", s.type == "sft" ? 10 : 0, 0, 100'000'000);
  s.min_lr_ratio = r.number("min_lr_ratio", s.type == "sft" ? 0.1 : 1.0, 0.0, 1.0);
  s.weight_decay = r.number("weight_decay", 0.0, 0.0, 10.0);
  s.grad_clip = r.number("grad_clip", 1.0, 0.0, 1e9);
  s.batch_tokens = r.integer("batch_tokens", s.batch_tokens, 16, 1 << 30);
  s.reset_optimizer = r.boolean("reset_optimizer", true);
  s.tasks = read_task_sets(r, "tasks");
  s.jsonl = r.path_value("jsonl", "");
  if (s.type == "sft") {
    s.tool_free_demos = r.number("tool_free_demos", 0.0, 0.0, 1.0);
    s.unformatted_demos = r.number("unformatted_demos", 0.0, 0.0, 1.0);
    if (s.tool_free_demos + s.unformatted_demos > 1.0)
      r.fail("unformatted_demos", "tool_free_demos + unformatted_demos must be at most 1");
  }
  if (s.type == "dpo") {
    s.beta = r.number("beta", s.beta, 1e-6, 1e6);
    s.dpo_variant = r.choice("variant", {"sigmoid", "ipo"}, "sigmoid");
    s.label_smoothing = r.number("label_smoothing", 0.0, 0.0, 0.4999);
  }
  if (s.type == "grpo") {
    s.group_size = r.integer("group_size", s.group_size, 2, 1024);
    s.prompts_per_step = r.integer("prompts_per_step", s.prompts_per_step, 1, 1 << 20);
    s.max_turns = r.integer("max_turns", s.max_turns, 1, 1000);
    s.max_new_tokens = r.integer("max_new_tokens", s.max_new_tokens, 1, 1 << 20);
    s.max_episode_tokens = r.integer("max_episode_tokens", s.max_episode_tokens, 16, 1 << 24);
    if (auto sm = r.optional_child("sampling")) s.sampling = read_sampling(*sm, s.sampling);
    s.advantage = r.choice("advantage", {"mean_centred", "mean_std", "rloo"}, s.advantage);
    s.filter_equal = r.boolean("filter_equal", false);
    s.clip_low = r.number("clip_low", 0.2, 0.0, 1.0);
    s.clip_high = r.number("clip_high", s.clip_low, 0.0, 10.0);
    s.aggregation =
        r.choice("aggregation", {"token_mean", "sequence_mean", "length_unbiased"}, s.aggregation);
    s.kl = r.choice("kl", {"none", "k1", "k2", "k3", "k3_unbiased"}, s.kl);
    s.kl_coef = r.number("kl_coef", 0.0, 0.0, 1e6);
    s.keep_sampling_mask = r.boolean("keep_sampling_mask", false);
    s.keep_routing = r.boolean("keep_routing", false);
    s.surrogate_gain = r.boolean("surrogate_gain", false);
    s.updates_per_step = r.integer("updates_per_step", 1, 1, 1000);
    s.sampler = r.choice("sampler", {"uniform", "adaptive"}, s.sampler);
    s.sampler_explore = r.number("sampler_explore", s.sampler_explore, 0.0, 1.0);
    s.sampler_decay = r.number("sampler_decay", s.sampler_decay, 1e-6, 1.0 - 1e-6);
    if (s.tasks.empty()) r.fail("tasks", "a grpo stage needs task sets to sample prompts from");
  } else {
    if (s.tasks.empty() && s.jsonl.empty())
      r.fail("", "an " + s.type + " stage needs \"tasks\" (task sets) or \"jsonl\" (a data file)");
  }
  if (!s.jsonl.empty() && !std::filesystem::exists(s.jsonl))
    r.fail("jsonl", "no such file: " + s.jsonl);
  return s;
}

}  // namespace

EvalSuiteSpec read_eval_suite(const ConfigReader& e) {
  EvalSuiteSpec s;
  s.name = e.str("name");
  s.tasks = read_task_sets(e, "tasks");
  if (s.tasks.empty()) e.fail("tasks", "an eval suite needs task sets");
  s.samples = e.integer("samples", 1, 1, 1024);
  if (auto sm = e.optional_child("sampling")) s.sampling = read_sampling(*sm, s.sampling);
  s.max_turns = e.integer("max_turns", 4, 1, 1000);
  s.max_new_tokens = e.integer("max_new_tokens", 64, 1, 1 << 20);
  return s;
}

EvalSuiteSpec load_eval_suite(const std::string& file) {
  SHOAL_CHECK(std::filesystem::is_regular_file(file), "eval suite {}: no such file", file);
  LoadedConfig loaded = load_config_file(file);
  ConfigReader r(loaded);
  EvalSuiteSpec s = read_eval_suite(r);
  r.finish();
  return s;
}

RunConfig parse_run_config(const LoadedConfig& loaded) {
  ConfigReader r(loaded);
  RunConfig c;
  c.seed = static_cast<uint64_t>(r.integer("seed", 1, 0, INT64_MAX));

  ConfigReader m = r.child("model");
  c.model_preset = m.str("preset", "");
  c.model_config_file = m.path_value("config", "");
  c.model_checkpoint = m.path_value("checkpoint", "");
  int given = !c.model_preset.empty() + !c.model_config_file.empty() + !c.model_checkpoint.empty();
  if (given != 1)
    m.fail("",
           "give exactly one of \"preset\" (configs/models/NAME.json), \"config\" (an HF "
           "config.json) or \"checkpoint\" (an HF model directory)");
  if (m.has("overrides")) {
    c.model_overrides = m.raw("overrides");
    if (!c.model_overrides.is_object())
      m.fail("overrides",
             "expected an object of HF config keys, found " + json_type_phrase(c.model_overrides));
  }
  c.init_std = m.number("init_std", 0.02, 1e-6, 10.0);
  if (!c.model_config_file.empty() && !std::filesystem::exists(c.model_config_file))
    m.fail("config", "no such file: " + c.model_config_file);
  if (!c.model_checkpoint.empty() &&
      !std::filesystem::exists(std::filesystem::path(c.model_checkpoint) / "config.json"))
    m.fail("checkpoint", "not a model directory (no config.json): " + c.model_checkpoint);

  ConfigReader t = r.child("tokenizer");
  c.tokenizer_file = t.path_value("file", "");
  if (auto tr = t.optional_child("train")) {
    c.train_tokenizer = true;
    c.tokenizer_vocab = tr->integer("vocab_size", 512, 270, 1 << 20);
    c.tokenizer_split_digits = tr->boolean("split_digits", false);
  }
  if (c.train_tokenizer == !c.tokenizer_file.empty())
    t.fail("",
           "give exactly one of \"file\" (a tokenizer.json) or \"train\" ({\"vocab_size\": N})");
  if (!c.tokenizer_file.empty() && !std::filesystem::exists(c.tokenizer_file))
    t.fail("file", "no such file: " + c.tokenizer_file);

  if (auto s = r.optional_child("sandbox")) {
    c.sandbox_endpoint = s->str("endpoint", "");
    c.sandbox_workers = s->integer("workers", 2, 1, 256);
  }

  std::map<std::string, int> names;
  for (const ConfigReader& st : r.children("stages")) c.stages.push_back(read_stage(st, names));
  if (c.stages.empty()) r.fail("stages", "a run needs at least one stage (sft, dpo or grpo)");

  for (const ConfigReader& entry : r.children("eval")) {
    // {"suite": "configs/eval/quick.json"} reads the suite from its own file (same keys).
    std::optional<LoadedConfig> file;
    std::optional<ConfigReader> from_file;
    if (entry.has("suite")) {
      std::string path = entry.path_value("suite");
      if (!std::filesystem::exists(path)) entry.fail("suite", "no such file: " + path);
      entry.finish();
      file = load_config_file(path);
      from_file.emplace(*file);
    }
    EvalSuiteSpec s = read_eval_suite(from_file ? *from_file : entry);
    if (from_file) from_file->finish();
    c.evals.push_back(s);
  }
  c.eval_before = r.boolean("eval_before", true);
  c.eval_after_stage = r.boolean("eval_after_stage", true);
  if (auto ck = r.optional_child("checkpoint")) {
    c.checkpoint_every = ck->integer("every", 50, 0, INT64_MAX);
    c.keep_checkpoints = ck->integer("keep", 2, 1, 1000);
  }
  c.staleness = r.integer("staleness", 0, 0, 64);
  c.max_seq_len = r.integer("max_seq_len", 512, 16, 1 << 24);
  c.system_prompt = r.str("system_prompt", "");
  c.replace_system_prompt = r.boolean("replace_system_prompt", false);
  if (c.replace_system_prompt && c.system_prompt.empty())
    r.fail("replace_system_prompt", "needs a non-empty \"system_prompt\" to replace with");
  c.list_tools = r.boolean("list_tools", true);
  r.finish();
  c.resolved = loaded.value;
  return c;
}

RunConfig load_run_config(const std::string& file, const std::vector<std::string>& overrides) {
  LoadedConfig loaded = load_config_file(file);
  for (const auto& o : overrides) apply_override(loaded, o);
  return parse_run_config(loaded);
}

}  // namespace shoal::actors
