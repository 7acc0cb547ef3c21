// The stage driver (stage_driver.h).
#include "actors/stage_driver.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <random>

#include "base/error.h"
#include "base/log.h"
#include "tasks/sampler.h"

namespace shoal::actors {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

double stage_lr(const StageSpec& spec, int64_t step) {
  if (spec.warmup_steps > 0 && step < spec.warmup_steps)
    return spec.lr * static_cast<double>(step + 1) / static_cast<double>(spec.warmup_steps);
  int64_t span = std::max<int64_t>(spec.steps - spec.warmup_steps, 1);
  double t = std::clamp(static_cast<double>(step - spec.warmup_steps) / static_cast<double>(span),
                        0.0, 1.0);
  double floor = spec.min_lr_ratio;
  return spec.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * t)));
}

namespace {
uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t episode_seed(uint64_t seed, int64_t gstep, int64_t group, int64_t sample) {
  return mix(mix(mix(seed) ^ static_cast<uint64_t>(gstep)) ^ static_cast<uint64_t>(group)) ^
         static_cast<uint64_t>(sample);
}

std::vector<size_t> step_prompts(size_t pool_size, int64_t step, int64_t per_step, uint64_t seed) {
  SHOAL_CHECK(pool_size > 0, "a grpo stage has no tasks to sample prompts from");
  std::vector<size_t> out;
  int64_t first = step * per_step;
  std::vector<size_t> perm;
  int64_t perm_epoch = -1;
  for (int64_t k = first; k < first + per_step; ++k) {
    int64_t epoch = k / static_cast<int64_t>(pool_size);
    if (epoch != perm_epoch) {
      perm.resize(pool_size);
      std::iota(perm.begin(), perm.end(), size_t{0});
      std::mt19937_64 rng(mix(seed ^ 0x5a17ULL) ^ static_cast<uint64_t>(epoch));
      std::shuffle(perm.begin(), perm.end(), rng);
      perm_epoch = epoch;
    }
    out.push_back(perm[static_cast<size_t>(k % static_cast<int64_t>(pool_size))]);
  }
  return out;
}

namespace {

struct DriverState {
  std::shared_ptr<const StageContext> ctx;
  StageActors a;
  int64_t next_launch = 0, next_train = 0;
  bool training = false, finished = false;
  bool stopping = false;  // asked to stop: checkpoint after the current step and end
  int64_t version = 0;
  std::map<int64_t, std::vector<EpisodeResult>> ready;
  std::map<int64_t, Clock::time_point> launched_at;
  std::map<int64_t, double> rollout_seconds;
  Clock::time_point started = Clock::now();
  int64_t steps_done = 0;
  // sampler "adaptive": the sampler, the pool's indices per bucket (its stats order) and the
  // prompts drawn for steps launched but not yet trained.
  std::optional<tasks::DifficultySampler> sampler;
  std::vector<std::vector<size_t>> bucket_pool;
  std::map<int64_t, std::vector<size_t>> drawn;
};
using State = std::shared_ptr<DriverState>;

void advance(caf::event_based_actor* self, const State& s);

void finish(caf::event_based_actor* self, const State& s, bool ok, const std::string& text) {
  if (s->finished) return;
  s->finished = true;
  self->send(s->a.listener, done_atom::value, ok, text);
  self->quit();
}

json resume_state(const State& s, int64_t stage_step) {
  const StageContext& c = *s->ctx;
  json st = {{"stage_index", c.stage_index}, {"stage", c.spec.name},
             {"stage_step", stage_step},     {"gstep", c.gstep0 + stage_step},
             {"weight_version", s->version}, {"seed", c.seed}};
  if (s->sampler) {
    json drawn = json::object();
    for (const auto& [step, picks] : s->drawn)
      if (step >= stage_step) drawn[std::to_string(step)] = picks;
    st["sampler"] = {{"state", s->sampler->to_json()}, {"drawn", drawn}};
  }
  return st;
}

// The adaptive sampler over the stage's (family, difficulty) buckets, restored from a resumed
// checkpoint's state when there is one.
void init_sampler(const State& s) {
  const StageContext& c = *s->ctx;
  std::vector<tasks::Bucket> buckets;
  for (size_t i = 0; i < c.pool.size(); ++i) {
    tasks::Bucket b{c.pool[i].family, c.pool[i].difficulty};
    auto it = std::find(buckets.begin(), buckets.end(), b);
    if (it == buckets.end()) {
      buckets.push_back(b);
      s->bucket_pool.emplace_back();
      it = buckets.end() - 1;
    }
    s->bucket_pool[static_cast<size_t>(it - buckets.begin())].push_back(i);
  }
  SHOAL_CHECK(!buckets.empty(), "a grpo stage has no tasks to sample prompts from");
  if (c.sampler_state.is_object()) {
    s->sampler = tasks::DifficultySampler::from_json(c.sampler_state.at("state"));
    SHOAL_CHECK(s->sampler->stats().size() == buckets.size(),
                "the checkpoint's sampler has {} task sets, the stage {}",
                s->sampler->stats().size(), buckets.size());
    for (size_t i = 0; i < buckets.size(); ++i)
      SHOAL_CHECK(s->sampler->stats()[i].bucket == buckets[i],
                  "the checkpoint's sampler does not match the stage's task sets");
    for (const auto& [step, picks] : c.sampler_state.at("drawn").items())
      s->drawn[std::stoll(step)] = picks.get<std::vector<size_t>>();
  } else {
    s->sampler.emplace(buckets, c.seed ^ 0x5a3f1e9dULL,
                       tasks::SamplerOptions{c.spec.sampler_decay, c.spec.sampler_explore});
  }
}

// The pool indices of a step's prompts. Adaptive draws happen when the step is launched (with
// staleness k: after step − k − 1 has trained and recorded its groups), so they depend only on
// the seed and the results before, whatever the timing.
std::vector<size_t> prompts_for(const State& s, int64_t step) {
  const StageContext& c = *s->ctx;
  if (!s->sampler) return step_prompts(c.pool.size(), step, c.spec.prompts_per_step, c.seed);
  if (auto it = s->drawn.find(step); it != s->drawn.end()) return it->second;
  std::vector<size_t> out;
  for (int64_t g = 0; g < c.spec.prompts_per_step; ++g) {
    tasks::DifficultySampler::Draw d = s->sampler->next();
    const std::vector<size_t>& members = s->bucket_pool[d.index];
    // The bucket's d.seed-th draw: successive tasks of a per-epoch shuffle of its members.
    size_t k = step_prompts(members.size(), static_cast<int64_t>(d.seed), 1,
                            c.seed ^ (0x9e37ULL * (d.index + 1)))[0];
    out.push_back(members[k]);
  }
  s->drawn[step] = out;
  return out;
}

// Removes all but the newest `keep` checkpoint directories.
void prune_checkpoints(const std::string& run_dir, int64_t keep) {
  fs::path dir = fs::path(run_dir) / "checkpoints";
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind("step_", 0) == 0 && n.find('.') == std::string::npos)
      found.emplace_back(std::stoll(n.substr(5)), e.path());
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < found.size(); ++i)
    fs::remove_all(found[i].second, ec);
}

// Saves the policy to checkpoints/step_G (written as step_G.tmp and renamed, so a directory named
// step_G is always complete), records it, then continues.
void checkpoint(caf::event_based_actor* self, const State& s, int64_t stage_step) {
  const StageContext& c = *s->ctx;
  int64_t gstep = c.gstep0 + stage_step;
  fs::path final_dir = fs::path(c.run_dir) / "checkpoints" / fmt::format("step_{}", gstep);
  fs::path tmp = final_dir;
  tmp += ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp.parent_path());
  self->request(s->a.engine, caf::infinite, save_atom::value, tmp.string())
      .then(
          [self, s, stage_step, gstep, final_dir, tmp](int64_t) {
            const StageContext& c = *s->ctx;
            std::error_code ec;
            if (!c.tokenizer_file.empty())
              fs::copy_file(c.tokenizer_file, tmp / "tokenizer.json",
                            fs::copy_options::overwrite_existing, ec);
            fs::remove_all(final_dir, ec);
            fs::rename(tmp, final_dir, ec);
            if (ec) {
              finish(self, s, false,
                     fmt::format("saving a checkpoint: cannot rename {} to {}: {}", tmp.string(),
                                 final_dir.string(), ec.message()));
              return;
            }
            CheckpointRecord rec{gstep, c.spec.name, stage_step, final_dir.string(),
                                 resume_state(s, stage_step)};
            self->request(s->a.store, caf::infinite, ckpt_atom::value, rec)
                .then(
                    [self, s](bool) {
                      prune_checkpoints(s->ctx->run_dir, s->ctx->keep_checkpoints);
                      advance(self, s);
                    },
                    [self, s](caf::error& e) {
                      finish(self, s, false, "recording a checkpoint: " + self->system().render(e));
                    });
          },
          [self, s](caf::error& e) {
            finish(self, s, false, "saving a checkpoint: " + self->system().render(e));
          });
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

// The step's numbers from its episodes (grpo).
void episode_metrics(const std::vector<EpisodeResult>& eps, double rollout_s,
                     std::map<std::string, double>& m) {
  std::vector<double> reward, pass, gen, turns, calls, invalid;
  double gen_total = 0, failed = 0, gen_s = 0, tool_s = 0, reward_s = 0;
  for (const EpisodeResult& e : eps) {
    reward.push_back(e.record.reward);
    pass.push_back(e.record.reward >= 1.0 ? 1.0 : 0.0);
    gen.push_back(static_cast<double>(e.generated_tokens));
    gen_total += static_cast<double>(e.generated_tokens);
    turns.push_back(static_cast<double>(e.record.turns));
    calls.push_back(static_cast<double>(e.record.tool_calls));
    invalid.push_back(static_cast<double>(e.record.invalid_tool_calls));
    failed += e.record.status == "failed";
    gen_s += e.seconds_generate;
    tool_s += e.seconds_tools;
    reward_s += e.seconds_reward;
  }
  m["reward"] = mean(reward);
  m["pass_rate"] = mean(pass);
  m["response_tokens"] = mean(gen);
  m["turns"] = mean(turns);
  m["tool_calls"] = mean(calls);
  m["invalid_tool_calls"] = mean(invalid);
  m["failed_episodes"] = failed;
  m["episodes"] = static_cast<double>(eps.size());
  m["time_rollout"] = rollout_s;
  m["rollout_tokens_per_s"] = gen_total / std::max(rollout_s, 1e-9);
  // Where the episodes' time went (summed over episodes, so shares of their total).
  double total = std::max(gen_s + tool_s + reward_s, 1e-9);
  m["share_generate"] = gen_s / total;
  m["share_tools"] = tool_s / total;
  m["share_reward"] = reward_s / total;
}

void write_step(caf::event_based_actor* self, const State& s, int64_t step,
                std::map<std::string, double> metrics, std::vector<EpisodeRecord> episodes,
                Clock::time_point train_start) {
  const StageContext& c = *s->ctx;
  metrics["time_train"] = std::chrono::duration<double>(Clock::now() - train_start).count();
  // The names the progress line and the report use for the objective's statistics.
  for (auto [from, to] : {std::pair{"kl_mean", "kl"}, std::pair{"entropy_mean", "entropy"},
                          std::pair{"clip_fraction", "clip_frac"}})
    if (metrics.count(from)) metrics[to] = metrics[from];
  if (metrics.count("weight_version")) s->version = static_cast<int64_t>(metrics["weight_version"]);
  StepRecord rec;
  rec.gstep = c.gstep0 + step + 1;
  rec.stage = c.spec.name;
  rec.stage_step = step + 1;
  rec.episodes = std::move(episodes);
  rec.state = resume_state(s, step + 1);
  auto t0 = Clock::now();
  rec.metrics = metrics;
  self->request(s->a.store, caf::infinite, write_atom::value, rec)
      .then(
          [self, s, step, metrics, t0](bool) mutable {
            const StageContext& c = *s->ctx;
            metrics["time_store"] = std::chrono::duration<double>(Clock::now() - t0).count();
            ++s->steps_done;
            double elapsed = std::chrono::duration<double>(Clock::now() - s->started).count();
            json p = {{"stage", c.spec.name},
                      {"type", c.spec.type},
                      {"step", step + 1},
                      {"steps", c.spec.steps},
                      {"gstep", c.gstep0 + step + 1},
                      {"metrics", metrics},
                      {"elapsed", elapsed},
                      {"steps_this_run", s->steps_done}};
            self->send(s->a.listener, progress_atom::value, p.dump());
            s->training = false;
            s->next_train = step + 1;
            bool last = step + 1 == c.spec.steps || s->stopping;
            bool due = c.checkpoint_every > 0 && (c.gstep0 + step + 1) % c.checkpoint_every == 0;
            if (last || due)
              checkpoint(self, s, step + 1);
            else
              advance(self, s);
          },
          [self, s](caf::error& e) {
            finish(self, s, false, "writing a step to the run store: " + self->system().render(e));
          });
}

// A failed training step (a NaN loss, an engine error): recorded; the weights are those before
// the step (the policy applies nothing when the loss is not finite); the stage goes on.
void step_failed(caf::event_based_actor* self, const State& s, int64_t step,
                 const std::string& why) {
  const StageContext& c = *s->ctx;
  json data = {{"stage", c.spec.name}, {"stage_step", step + 1}, {"gstep", c.gstep0 + step + 1}};
  std::string msg =
      fmt::format("{} step {} failed and was skipped: {}", c.spec.name, step + 1, why);
  self->send(s->a.store, event_atom::value, std::string("step_failed"), msg, data.dump());
  self->send(s->a.listener, progress_atom::value,
             json{{"stage", c.spec.name}, {"warning", msg}}.dump());
  StepRecord rec;
  std::map<std::string, double> m = {{"failed", 1.0}};
  write_step(self, s, step, m, {}, Clock::now());
}

void train_sft_dpo(caf::event_based_actor* self, const State& s, int64_t step) {
  const StageContext& c = *s->ctx;
  TrainRequest r;
  r.kind = c.spec.type;
  r.samples = c.batches[static_cast<size_t>(step) % c.batches.size()];
  r.lr = stage_lr(c.spec, step);
  r.options = json{{"beta", c.spec.beta},
                   {"variant", c.spec.dpo_variant},
                   {"label_smoothing", c.spec.label_smoothing}}
                  .dump();
  auto t0 = Clock::now();
  self->request(s->a.engine, caf::infinite, train_atom::value, r)
      .then(
          [self, s, step, t0](StepMetrics& m) {
            write_step(self, s, step, std::move(m.values), {}, t0);
          },
          [self, s, step](caf::error& e) { step_failed(self, s, step, self->system().render(e)); });
}

std::vector<EpisodeJob> make_jobs(const State& s, int64_t step) {
  const StageContext& c = *s->ctx;
  const StageSpec& sp = c.spec;
  std::vector<EpisodeJob> jobs;
  std::vector<size_t> picks = prompts_for(s, step);
  int64_t gstep = c.gstep0 + step + 1;
  for (size_t g = 0; g < picks.size(); ++g)
    for (int64_t k = 0; k < sp.group_size; ++k) {
      EpisodeJob j;
      j.task_id = c.pool[picks[g]].id;
      j.task = c.pool[picks[g]].task;
      j.stage = sp.name;
      j.gstep = gstep;
      j.group = static_cast<int64_t>(g);
      j.sample = k;
      j.sampling.greedy = sp.sampling.greedy;
      j.sampling.temperature = static_cast<float>(sp.sampling.temperature);
      j.sampling.top_k = sp.sampling.top_k;
      j.sampling.top_p = static_cast<float>(sp.sampling.top_p);
      j.sampling.min_p = static_cast<float>(sp.sampling.min_p);
      j.sampling.seed = episode_seed(c.seed, gstep, j.group, k);
      j.limits.max_turns = sp.max_turns;
      j.limits.max_new_tokens = sp.max_new_tokens;
      j.limits.max_episode_tokens = sp.max_episode_tokens;
      j.limits.list_tools = c.list_tools;
      jobs.push_back(std::move(j));
    }
  return jobs;
}

void launch(caf::event_based_actor* self, const State& s, int64_t step) {
  s->launched_at[step] = Clock::now();
  self->request(s->a.collector, caf::infinite, collect_atom::value, make_jobs(s, step))
      .then(
          [self, s, step](std::vector<EpisodeResult>& results) {
            s->rollout_seconds[step] =
                std::chrono::duration<double>(Clock::now() - s->launched_at[step]).count();
            s->ready[step] = std::move(results);
            advance(self, s);
          },
          [self, s](caf::error& e) {
            finish(self, s, false, "collecting rollouts: " + self->system().render(e));
          });
}

void train_grpo(caf::event_based_actor* self, const State& s, int64_t step) {
  const StageContext& c = *s->ctx;
  std::vector<EpisodeResult> results = std::move(s->ready[step]);
  s->ready.erase(step);
  std::map<std::string, double> m;
  episode_metrics(results, s->rollout_seconds[step], m);
  s->rollout_seconds.erase(step);
  GrpoBatch b;
  int64_t stale = 0, lag = 0;
  for (EpisodeResult& r : results) {
    // The staleness bound: weights more than k versions old are never trained on.
    int64_t behind = s->version - r.record.weight_version;
    lag = std::max(lag, behind);
    if (r.record.status != "failed" && behind > c.staleness) {
      r.record.status = "failed";
      r.record.reason =
          fmt::format("sampled {} weight versions ago (staleness bound {})", behind, c.staleness);
      ++stale;
    }
    b.episodes.push_back(r.record);
  }
  m["stale_dropped"] = static_cast<double>(stale);
  m["version_lag"] = static_cast<double>(lag);
  if (s->sampler) {
    // Each group's rewards go to its task set's statistics, in step order.
    const std::vector<size_t>& picks = s->drawn.at(step);
    std::map<int64_t, std::vector<double>> groups;
    for (const EpisodeResult& r : results) groups[r.record.group].push_back(r.record.reward);
    for (const auto& [g, rewards] : groups) {
      const TaskRef& t = c.pool[picks.at(static_cast<size_t>(g))];
      s->sampler->record({t.family, t.difficulty}, rewards);
    }
    s->drawn.erase(step);
    const auto& stats = s->sampler->stats();
    std::vector<double> p = s->sampler->probabilities();
    for (size_t i = 0; i < stats.size() && stats.size() > 1; ++i)
      m[fmt::format("sampler_p_{}_d{}", stats[i].bucket.family, stats[i].bucket.difficulty)] = p[i];
  }
  b.lr = stage_lr(c.spec, step);
  b.updates = c.spec.updates_per_step;
  b.options = json{{"advantage", c.spec.advantage},     {"filter_equal", c.spec.filter_equal},
                   {"clip_low", c.spec.clip_low},       {"clip_high", c.spec.clip_high},
                   {"aggregation", c.spec.aggregation}, {"kl", c.spec.kl},
                   {"kl_coef", c.spec.kl_coef},         {"surrogate_gain", c.spec.surrogate_gain}}
                  .dump();
  auto t0 = Clock::now();
  std::vector<EpisodeRecord> records = b.episodes;
  self->request(s->a.learner, caf::infinite, train_atom::value, std::move(b))
      .then(
          [self, s, step, m, records, t0](StepMetrics& sm) mutable {
            for (auto& [k, v] : sm.values) m[k] = v;
            write_step(self, s, step, std::move(m), std::move(records), t0);
          },
          [self, s, step](caf::error& e) { step_failed(self, s, step, self->system().render(e)); });
}

void advance(caf::event_based_actor* self, const State& s) {
  const StageContext& c = *s->ctx;
  if (s->finished) return;
  if (s->stopping) {
    // Wait for the step in flight (its write and checkpoint call advance again), then end.
    if (!s->training) finish(self, s, false, "interrupted");
    return;
  }
  if (s->next_train >= c.spec.steps && !s->training) {
    finish(self, s, true, fmt::format("{}: {} steps", c.spec.name, c.spec.steps));
    return;
  }
  if (c.spec.type != "grpo") {
    if (!s->training) {
      s->training = true;
      train_sft_dpo(self, s, s->next_train);
    }
    return;
  }
  while (s->next_launch < c.spec.steps && s->next_launch <= s->next_train + c.staleness)
    launch(self, s, s->next_launch++);
  if (!s->training && s->ready.count(s->next_train)) {
    s->training = true;
    train_grpo(self, s, s->next_train);
  }
}

}  // namespace

caf::behavior stage_driver(caf::event_based_actor* self, std::shared_ptr<const StageContext> ctx,
                           StageActors actors) {
  auto s = std::make_shared<DriverState>();
  s->ctx = std::move(ctx);
  s->a = std::move(actors);
  s->next_launch = s->next_train = s->ctx->start_step;
  s->version = s->ctx->weight_version;
  if (s->ctx->spec.type == "grpo" && s->ctx->spec.sampler == "adaptive") init_sampler(s);
  SHOAL_CHECK(s->ctx->spec.type == "grpo" || !s->ctx->batches.empty(),
              "stage {} has no training data", s->ctx->spec.name);
  return {
      [self, s](run_atom) {
        s->started = Clock::now();
        if (s->ctx->start_step > 0 || !s->ctx->spec.reset_optimizer) return advance(self, s);
        // A stage starts with fresh optimizer moments (a resumed stage has the checkpoint's).
        self->request(s->a.engine, caf::infinite, reset_atom::value)
            .then([self, s](int64_t) { advance(self, s); },
                  [self, s](caf::error& e) {
                    finish(self, s, false, "resetting the optimizer: " + self->system().render(e));
                  });
      },
      [self, s](stop_atom) {
        s->stopping = true;
        if (!s->training) finish(self, s, false, "interrupted");
      },
  };
}

}  // namespace shoal::actors
