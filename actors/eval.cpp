// Evaluation (eval.h).
#include "actors/eval.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>

#include "actors/collector.h"
#include "actors/engine_owner.h"
#include "actors/local_sandbox.h"
#include "actors/policy.h"
#include "actors/reward_actor.h"
#include "actors/stage_driver.h"
#include "actors/tool_actor.h"
#include "base/error.h"
#include "engine/backend.h"
#include "engine/device.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "sandbox/client.h"
#include "tasks/registry.h"
#include "tasks/store.h"
#include "tasks/synth.h"

namespace shoal::actors {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---- the numbers ----

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  SHOAL_CHECK(n >= 1 && c >= 0 && c <= n, "pass@k: need 0 <= c <= n and n >= 1 (n {}, c {})", n, c);
  SHOAL_CHECK(k >= 1 && k <= n, "pass@k: need 1 <= k <= n (k {}, n {})", k, n);
  if (n - c < k) return 1.0;  // every k-subset holds a pass
  // C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
  double fail_all = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i)
    fail_all *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  return 1.0 - fail_all;
}

PairedDifference paired_bootstrap(const std::vector<double>& a, const std::vector<double>& b,
                                  int64_t resamples, uint64_t seed) {
  SHOAL_CHECK(a.size() == b.size(), "paired comparison: {} and {} observations", a.size(),
              b.size());
  SHOAL_CHECK(resamples >= 1, "paired comparison: resamples must be at least 1");
  PairedDifference out;
  out.pairs = static_cast<int64_t>(a.size());
  out.resamples = resamples;
  if (a.empty()) return out;
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = b[i] - a[i];
  double sum = 0;
  for (double x : d) sum += x;
  out.mean = sum / static_cast<double>(d.size());
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, d.size() - 1);
  std::vector<double> means(static_cast<size_t>(resamples));
  for (double& m : means) {
    double s = 0;
    for (size_t i = 0; i < d.size(); ++i) s += d[pick(rng)];
    m = s / static_cast<double>(d.size());
  }
  std::sort(means.begin(), means.end());
  // Percentiles by linear interpolation between order statistics.
  auto quantile = [&means](double q) {
    double pos = q * static_cast<double>(means.size() - 1);
    size_t lo = static_cast<size_t>(std::floor(pos));
    size_t hi = std::min(lo + 1, means.size() - 1);
    double f = pos - static_cast<double>(lo);
    return means[lo] * (1 - f) + means[hi] * f;
  };
  out.low = quantile(0.025);
  out.high = quantile(0.975);
  return out;
}

// ---- tasks and episodes ----

PromptSettings prompt_settings(const RunConfig& cfg) {
  PromptSettings s;
  s.system_prompt = cfg.system_prompt;
  s.replace_system_prompt = cfg.replace_system_prompt;
  s.list_tools = cfg.list_tools;
  s.max_episode_tokens = cfg.max_seq_len;
  return s;
}

std::string task_prompt(const tasks::Task& t, const PromptSettings& s) {
  json j = tasks::to_json(t);
  if (!s.system_prompt.empty()) {
    json& m = j["messages"];
    bool has_system = !m.empty() && m[0].value("role", "") == "system";
    if (has_system && s.replace_system_prompt)
      m[0]["content"] = s.system_prompt;
    else if (has_system)
      m[0]["content"] = s.system_prompt + "\n\n" + m[0]["content"].get<std::string>();
    else
      m.insert(m.begin(), json{{"role", "system"}, {"content", s.system_prompt}});
  }
  return j.dump();
}

std::vector<EvalTask> eval_suite_tasks(tasks::TaskStore& store, const EvalSuiteSpec& suite,
                                       sandbox::Client* sandbox, const PromptSettings& settings,
                                       const std::function<void(const std::string&)>& info) {
  std::vector<EvalTask> out;
  for (const TaskSetSpec& spec : suite.tasks) {
    tasks::TaskQuery q;
    q.family = spec.family;
    q.split = "eval";
    q.difficulty = static_cast<int>(spec.difficulty);
    int64_t have = store.count(q);
    if (have < spec.count) {
      if (info)
        info(fmt::format("synthesizing {} eval tasks ({}, difficulty {})", spec.count - have,
                         spec.family, spec.difficulty));
      tasks::SynthOptions so;
      so.family = spec.family;
      so.split = "eval";
      so.count = static_cast<int>(spec.count - have);
      so.difficulty = static_cast<int>(spec.difficulty);
      so.sandbox = sandbox;
      tasks::synthesize(store, so);
    }
    q.limit = spec.count;
    for (const tasks::StoredTask& t : store.list(q))
      out.push_back(
          {std::to_string(t.id), task_prompt(t.task, settings), t.task.family, t.task.difficulty});
  }
  return out;
}

std::vector<EpisodeJob> eval_jobs(const EvalSuiteSpec& suite, const std::vector<EvalTask>& tasks,
                                  const std::string& stage, int64_t gstep, uint64_t seed,
                                  const PromptSettings& settings) {
  std::vector<EpisodeJob> jobs;
  for (size_t ti = 0; ti < tasks.size(); ++ti)
    for (int64_t k = 0; k < suite.samples; ++k) {
      const EvalTask& t = tasks[ti];
      EpisodeJob j;
      j.task_id = t.id;
      j.task = t.task;
      j.stage = stage;
      j.gstep = gstep;
      j.group = static_cast<int64_t>(ti);
      j.sample = k;
      j.sampling.greedy = suite.sampling.greedy;
      j.sampling.temperature = static_cast<float>(suite.sampling.temperature);
      j.sampling.top_k = suite.sampling.top_k;
      j.sampling.top_p = static_cast<float>(suite.sampling.top_p);
      j.sampling.min_p = static_cast<float>(suite.sampling.min_p);
      j.sampling.seed = episode_seed(seed ^ 0xe7a1ULL, gstep, j.group, k);
      j.limits.max_turns = suite.max_turns;
      j.limits.max_new_tokens = suite.max_new_tokens;
      j.limits.max_episode_tokens = settings.max_episode_tokens;
      j.limits.list_tools = settings.list_tools;
      jobs.push_back(std::move(j));
    }
  return jobs;
}

bool episode_passed(const EpisodeRecord& r) {
  return r.reward >= 1.0;
}

namespace {

// Sums over a set of episodes, and per task the (episodes, passes) that pass@k needs.
struct Tally {
  double episodes = 0, passed = 0, reward = 0, calls = 0, invalid = 0, tokens = 0, turns = 0,
         failed = 0;
  std::map<int64_t, std::pair<int64_t, int64_t>> per_task;  // task index -> (n, c)

  void add(const EpisodeResult& r) {
    const EpisodeRecord& e = r.record;
    bool p = episode_passed(e);
    episodes += 1;
    passed += p;
    reward += e.reward;
    calls += static_cast<double>(e.tool_calls);
    invalid += static_cast<double>(e.invalid_tool_calls);
    tokens += static_cast<double>(r.generated_tokens);
    turns += static_cast<double>(e.turns);
    failed += e.status == "failed";
    auto& t = per_task[e.group];
    ++t.first;
    t.second += p;
  }
  json to_json(int64_t max_k) const {
    double n = std::max(1.0, episodes);
    json j = {{"pass_rate", passed / n},
              {"mean_reward", reward / n},
              {"count", static_cast<int64_t>(episodes)},
              {"passed", static_cast<int64_t>(passed)},
              {"tasks", per_task.size()},
              {"valid_tool_call_rate", calls > 0 ? 1.0 - invalid / calls : 1.0},
              {"tool_calls", static_cast<int64_t>(calls)},
              {"invalid_tool_calls", static_cast<int64_t>(invalid)},
              {"tokens_per_episode", tokens / n},
              {"turns_per_episode", turns / n},
              {"failed", static_cast<int64_t>(failed)}};
    json pk = json::object();
    for (int64_t k = 1; k <= max_k; ++k) {
      double sum = 0;
      int64_t used = 0;
      for (const auto& [task, nc] : per_task)
        if (nc.first >= k) {
          sum += pass_at_k(nc.first, nc.second, k);
          ++used;
        }
      if (used > 0) pk[std::to_string(k)] = sum / static_cast<double>(used);
    }
    j["pass_at_k"] = pk;
    return j;
  }
};

}  // namespace

json summarize_eval(const std::vector<EpisodeResult>& episodes, const std::vector<EvalTask>& tasks,
                    int64_t samples, double seconds, bool per_task) {
  Tally all;
  std::map<std::string, Tally> fam, diff;
  for (const EpisodeResult& r : episodes) {
    if (r.index < 0) continue;  // never ran (an interrupted eval)
    SHOAL_CHECK(r.record.group >= 0 && r.record.group < static_cast<int64_t>(tasks.size()),
                "an eval episode's task index {} is out of range ({} tasks)", r.record.group,
                tasks.size());
    all.add(r);
    const EvalTask& t = tasks[static_cast<size_t>(r.record.group)];
    fam[t.family].add(r);
    diff[std::to_string(t.difficulty)].add(r);
  }
  json res = all.to_json(samples);
  res["tasks"] = tasks.size();
  res["samples"] = samples;
  res["seconds"] = seconds;
  res["families"] = json::object();
  res["difficulties"] = json::object();
  for (auto& [k, v] : fam) res["families"][k] = v.to_json(samples);
  for (auto& [k, v] : diff) res["difficulties"][k] = v.to_json(samples);
  if (per_task) {
    json pt = json::array();
    for (size_t i = 0; i < tasks.size(); ++i) {
      auto it = all.per_task.find(static_cast<int64_t>(i));
      int64_t n = it == all.per_task.end() ? 0 : it->second.first;
      int64_t c = it == all.per_task.end() ? 0 : it->second.second;
      double reward = 0;
      for (const EpisodeResult& r : episodes)
        if (r.index >= 0 && r.record.group == static_cast<int64_t>(i)) reward += r.record.reward;
      pt.push_back({{"id", tasks[i].id},
                    {"family", tasks[i].family},
                    {"difficulty", tasks[i].difficulty},
                    {"n", n},
                    {"passed", c},
                    {"mean_reward", n > 0 ? reward / static_cast<double>(n) : 0.0}});
    }
    res["per_task"] = pt;
  }
  return res;
}

namespace {

using episode_atom = caf::atom_constant<caf::atom("episode")>;
using ep_fail_atom = caf::atom_constant<caf::atom("ep_fail")>;
using drained_atom = caf::atom_constant<caf::atom("drained")>;

struct GatherState {
  std::vector<EpisodeJob> jobs;
  size_t next = 0, outstanding = 0;
  bool stopping = false;
};

// Sends the jobs to the collector one collection each, at most `window` outstanding, and passes
// each answer on to `to` as (episode_atom, position, EpisodeResult) or (ep_fail_atom, position,
// reason). On stop_atom it sends no more; once nothing is outstanding (all done, or stopped) it
// tells `to` (drained_atom) and quits — so an interrupted eval ends with every episode it started
// finished, and no request is left hanging when the actors shut down.
caf::behavior gatherer(caf::event_based_actor* self, caf::actor collector,
                       std::vector<EpisodeJob> jobs, int64_t window, caf::actor to) {
  auto st = std::make_shared<GatherState>();
  st->jobs = std::move(jobs);
  auto pump = std::make_shared<std::function<void()>>();
  std::function<void()>* again = pump.get();  // kept alive by the behaviour's captures
  *pump = [self, st, collector, window, to, again] {
    while (!st->stopping && st->next < st->jobs.size() &&
           static_cast<int64_t>(st->outstanding) < window) {
      auto at = static_cast<int64_t>(st->next);
      std::vector<EpisodeJob> one{std::move(st->jobs[st->next++])};
      ++st->outstanding;
      self->request(collector, caf::infinite, collect_atom::value, std::move(one))
          .then(
              [self, st, to, at, again](std::vector<EpisodeResult>& r) {
                --st->outstanding;
                if (!r.empty()) self->send(to, episode_atom::value, at, std::move(r[0]));
                (*again)();
              },
              [self, st, to, at, again](caf::error& e) {
                --st->outstanding;
                self->send(to, ep_fail_atom::value, at, self->system().render(e));
                (*again)();
              });
    }
    if (st->outstanding == 0 && (st->stopping || st->next == st->jobs.size())) {
      self->send(to, drained_atom::value);
      self->quit();
    }
  };
  self->attach_functor([pump] { *pump = nullptr; });  // break the self-reference on exit
  (*pump)();
  return {[st, pump](stop_atom) {
    st->stopping = true;
    (*pump)();
  }};
}

}  // namespace

std::vector<EpisodeResult> collect_each(caf::scoped_actor& self, const caf::actor& collector,
                                        std::vector<EpisodeJob> jobs, int64_t window,
                                        const std::function<void(const EpisodeResult&)>& on_result,
                                        const std::atomic<bool>* interrupt, bool* interrupted) {
  std::vector<EpisodeResult> out(jobs.size());
  for (EpisodeResult& r : out) r.index = -1;
  if (interrupted) *interrupted = false;
  if (jobs.empty()) return out;
  caf::actor g = self->spawn(gatherer, collector, std::move(jobs), std::max<int64_t>(1, window),
                             caf::actor_cast<caf::actor>(self));
  bool drained = false, asked_to_stop = false;
  std::string failure;
  auto check_interrupt = [&] {
    if (!asked_to_stop && interrupt && interrupt->load()) {
      asked_to_stop = true;
      if (interrupted) *interrupted = true;
      self->send(g, stop_atom::value);  // the episodes in flight finish, no new ones start
    }
  };
  self->receive_while([&] { return !drained; })(
      [&](episode_atom, int64_t at, EpisodeResult& r) {
        r.index = at;
        out[static_cast<size_t>(at)] = std::move(r);
        if (on_result) on_result(out[static_cast<size_t>(at)]);
        check_interrupt();
      },
      [&](ep_fail_atom, int64_t at, const std::string& why) {
        // The collector records failed rollouts itself; an error here means it is gone.
        if (failure.empty()) failure = fmt::format("episode {}: {}", at, why);
        if (!asked_to_stop) {
          asked_to_stop = true;
          self->send(g, stop_atom::value);
        }
      },
      [&](drained_atom) { drained = true; },
      caf::after(std::chrono::milliseconds(200)) >> [&] { check_interrupt(); });
  SHOAL_CHECK(failure.empty(), "eval: {}", failure);
  return out;
}

// ---- `shoal eval` ----

PromptSettings prompt_settings_for_model(const std::string& model_dir, std::string* found) {
  PromptSettings s;
  s.max_episode_tokens = 0;  // unset: the caller picks from the model
  if (found) found->clear();
  fs::path dir = fs::absolute(model_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();
  fs::path cfg = dir.parent_path().parent_path() / "config.json";
  if (dir.parent_path().filename() != "checkpoints" || !fs::is_regular_file(cfg)) return s;
  json j;
  try {
    j = load_config_file(cfg.string()).value;
  } catch (const std::exception&) {
    return s;  // not a run's config: the defaults
  }
  if (!j.is_object() || !j.contains("stages")) return s;
  auto str = [&j](const char* k) {
    return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : "";
  };
  s.system_prompt = str("system_prompt");
  if (j.contains("replace_system_prompt") && j["replace_system_prompt"].is_boolean())
    s.replace_system_prompt = j["replace_system_prompt"].get<bool>();
  if (j.contains("list_tools") && j["list_tools"].is_boolean())
    s.list_tools = j["list_tools"].get<bool>();
  s.max_episode_tokens = 512;  // the run config's default max_seq_len
  if (j.contains("max_seq_len") && j["max_seq_len"].is_number_integer())
    s.max_episode_tokens = j["max_seq_len"].get<int64_t>();
  if (found) *found = cfg.string();
  return s;
}

namespace {

std::string now_stamp(const char* format) {
  std::time_t now = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, format, std::localtime(&now));
  return buf;
}

// A name for a model directory: RUN-step_N for a run's checkpoint, else the directory's name.
std::string model_name(const std::string& model_dir) {
  fs::path dir = fs::absolute(model_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();
  if (dir.parent_path().filename() == "checkpoints")
    return dir.parent_path().parent_path().filename().string() + "-" + dir.filename().string();
  return dir.filename().string();
}

struct ModelSpec {
  std::string dir, tokenizer_file, label;
};

// Checks a model directory and its tokenizer before any work.
ModelSpec check_model(const std::string& dir, const std::string& tokenizer_file,
                      const std::string& flag, const std::string& label) {
  SHOAL_CHECK(!dir.empty(), "{}: give a model directory", flag);
  SHOAL_CHECK(fs::is_directory(dir), "{} {}: no such directory", flag, dir);
  SHOAL_CHECK(fs::is_regular_file(fs::path(dir) / "config.json"),
              "{} {}: not a model directory (no config.json)", flag, dir);
  ModelSpec m{dir, tokenizer_file, label};
  if (m.tokenizer_file.empty()) {
    m.tokenizer_file = (fs::path(dir) / "tokenizer.json").string();
    SHOAL_CHECK(fs::is_regular_file(m.tokenizer_file), "{} {} has no tokenizer.json: give {} FILE",
                flag, dir, label == "baseline" ? "--baseline-tokenizer" : "--tokenizer");
  } else {
    SHOAL_CHECK(fs::is_regular_file(m.tokenizer_file), "tokenizer {}: no such file",
                m.tokenizer_file);
  }
  return m;
}

struct ModelRun {
  json results, model;
  std::vector<EpisodeResult> episodes;
  bool interrupted = false;
};

ModelRun evaluate_model(const ModelSpec& m, const EvalSuiteSpec& suite, tasks::TaskStore& store,
                        const std::string& endpoint,
                        const std::shared_ptr<sandbox::Client>& env_client, const EvalOptions& o) {
  auto emit = [&o](json e) {
    if (o.on_event) o.on_event(e);
  };
  ModelRun run;
  std::string settings_from;
  PromptSettings ps = prompt_settings_for_model(m.dir, &settings_from);
  auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::load(m.tokenizer_file));
  std::unique_ptr<Backend> backend = open_backend(o.device, o.precision);  // outlives the model
  std::unique_ptr<Model> model = Model::from_pretrained(m.dir, *backend);
  const ModelConfig& mc = model->config();
  SHOAL_CHECK(mc.vocab_size >= tokenizer->vocab_size(),
              "{}: the model's vocab_size {} is smaller than the tokenizer's {} ({})", m.dir,
              mc.vocab_size, tokenizer->vocab_size(), m.tokenizer_file);
  if (ps.max_episode_tokens <= 0)
    ps.max_episode_tokens = std::min<int64_t>(4096, mc.max_position_embeddings);
  ps.max_episode_tokens = std::min(ps.max_episode_tokens, mc.max_position_embeddings);
  std::vector<EvalTask> tasks = eval_suite_tasks(store, suite, env_client.get(), ps);
  int64_t params = model->params().trainable_numel();
  run.model = {{"dir", m.dir},
               {"name", model_name(m.dir)},
               {"tokenizer", m.tokenizer_file},
               {"parameters", params},
               {"prompt_settings",
                {{"from", settings_from.empty() ? json(nullptr) : json(settings_from)},
                 {"system_prompt", ps.system_prompt},
                 {"replace_system_prompt", ps.replace_system_prompt},
                 {"list_tools", ps.list_tools},
                 {"max_episode_tokens", ps.max_episode_tokens}}}};
  emit({{"event", "model"},
        {"label", m.label},
        {"message",
         fmt::format(
             "{} {}: {} parameters, tokenizer {} ids{}", m.label, m.dir, params,
             tokenizer->vocab_size(),
             settings_from.empty() ? std::string() : "; prompt settings from " + settings_from)}});

  PolicyConfig pc;
  pc.max_sequences = std::max<int64_t>(1, std::min<int64_t>(64, o.rollouts));
  pc.max_batch_tokens = 1024;
  pc.cache_pages =
      std::max<int64_t>(1024, pc.max_sequences * (ps.max_episode_tokens / pc.page_tokens + 2));
  auto policy = std::make_shared<Policy>(std::move(model), pc);

  std::vector<EpisodeJob> jobs = eval_jobs(suite, tasks, "eval:" + suite.name, 0, o.seed, ps);
  const int64_t total = static_cast<int64_t>(jobs.size());
  {
    caf::actor_system_config sys_cfg;
    add_message_types(sys_cfg);
    sys_cfg.set("logger.console", caf::atom("none"));
    caf::actor_system sys{sys_cfg};
    caf::scoped_actor self{sys};
    engine_actor engine = spawn_engine_owner(sys, policy);
    RolloutDeps deps =
        sandbox_rollout_deps(sys, tokenizer, engine, endpoint, o.sandbox_workers, env_client);
    CollectorConfig cc;
    cc.max_in_flight = std::max<int64_t>(1, o.rollouts);
    caf::actor collector = sys.spawn(collector_actor, deps, cc, caf::actor{});
    auto stop_all = [&] {
      self->send_exit(collector, caf::exit_reason::user_shutdown);
      self->send_exit(deps.reward, caf::exit_reason::user_shutdown);
      for (auto& t : deps.tools) self->send_exit(t, caf::exit_reason::user_shutdown);
      // The engine last, waited for, and the policy released while the actor system still runs:
      // generations still in flight (an interrupted eval) end as cancelled when the policy's
      // scheduler stops, and their completion callbacks must find the actor system alive.
      self->monitor(engine);
      self->send_exit(engine, caf::exit_reason::user_shutdown);
      self->receive([](const caf::down_msg&) {}, caf::after(std::chrono::seconds(60)) >> [] {});
      policy.reset();
    };
    auto t0 = Clock::now();
    int64_t done = 0, passed = 0, generated = 0;
    try {
      run.episodes = collect_each(
          self, collector, std::move(jobs), cc.max_in_flight,
          [&](const EpisodeResult& r) {
            ++done;
            passed += episode_passed(r.record);
            generated += r.generated_tokens;
            emit({{"event", "progress"},
                  {"label", m.label},
                  {"done", done},
                  {"total", total},
                  {"passed", passed},
                  {"generated_tokens", generated},
                  {"elapsed", std::chrono::duration<double>(Clock::now() - t0).count()}});
          },
          o.interrupt, &run.interrupted);
    } catch (...) {
      stop_all();
      throw;
    }
    double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    stop_all();
    run.results = summarize_eval(run.episodes, tasks, suite.samples, seconds, true);
    run.results["throughput"] = {
        {"episodes", done},
        {"generated_tokens", generated},
        {"seconds", seconds},
        {"episodes_per_s", seconds > 0 ? static_cast<double>(done) / seconds : 0.0},
        {"generated_tokens_per_s", seconds > 0 ? static_cast<double>(generated) / seconds : 0.0}};
  }
  return run;
}

json compare(const json& model, const json& baseline) {
  // Pairs are tasks: each model's per-task pass fraction and mean reward.
  std::vector<double> pa, pb, ra, rb;
  const json& tb = baseline.at("per_task");
  const json& tm = model.at("per_task");
  SHOAL_CHECK(tb.size() == tm.size(), "internal: the models saw {} and {} tasks", tm.size(),
              tb.size());
  for (size_t i = 0; i < tm.size(); ++i) {
    if (tm[i]["n"].get<int64_t>() == 0 || tb[i]["n"].get<int64_t>() == 0) continue;
    pb.push_back(tb[i]["passed"].get<double>() / tb[i]["n"].get<double>());
    pa.push_back(tm[i]["passed"].get<double>() / tm[i]["n"].get<double>());
    rb.push_back(tb[i]["mean_reward"].get<double>());
    ra.push_back(tm[i]["mean_reward"].get<double>());
  }
  auto row = [](const std::vector<double>& base, const std::vector<double>& mod) {
    PairedDifference d = paired_bootstrap(base, mod);
    double mb = 0, mm = 0;
    for (double x : base) mb += x;
    for (double x : mod) mm += x;
    double n = std::max<double>(1.0, static_cast<double>(base.size()));
    return json{{"model", mm / n},         {"baseline", mb / n},  {"difference", d.mean},
                {"ci95_low", d.low},       {"ci95_high", d.high}, {"tasks", d.pairs},
                {"resamples", d.resamples}};
  };
  return {{"method",
           "difference = model - baseline over the tasks both ran; 95% CI from a paired "
           "bootstrap over tasks (10000 resamples, fixed seed), percentile interval"},
          {"pass_rate", row(pb, pa)},
          {"mean_reward", row(rb, ra)}};
}

}  // namespace

EvalOutcome run_eval(const EvalOptions& o) {
  auto emit = [&o](json e) {
    if (o.on_event) o.on_event(e);
  };
  auto info = [&emit](const std::string& m) { emit({{"event", "info"}, {"message", m}}); };
  // ---- everything checked before work ----
  ModelSpec model = check_model(o.model_dir, o.tokenizer_file, "--model", "model");
  std::optional<ModelSpec> baseline;
  if (!o.baseline_dir.empty())
    baseline = check_model(o.baseline_dir, o.baseline_tokenizer_file, "--baseline", "baseline");
  SHOAL_CHECK(!o.suite_file.empty(), "--suite: give an eval suite file (configs/eval/*.json)");
  SHOAL_CHECK(o.samples >= 0, "--samples must be at least 1 (got {})", o.samples);
  SHOAL_CHECK(o.temperature < 0 || o.temperature <= 100,
              "--temperature must be between 0 (greedy) and 100 (got {})", o.temperature);
  SHOAL_CHECK(o.rollouts >= 1, "--rollouts must be at least 1 (got {})", o.rollouts);
  EvalSuiteSpec suite = load_eval_suite(o.suite_file);
  for (size_t i = 0; i < suite.tasks.size(); ++i) {
    try {
      tasks::find_family(suite.tasks[i].family);
    } catch (const Error& e) {
      SHOAL_FAIL("config {}: tasks[{}].family: {}", o.suite_file, i, e.message());
    }
  }
  if (o.samples > 0) suite.samples = o.samples;
  if (o.temperature == 0) {
    suite.sampling.greedy = true;
  } else if (o.temperature > 0) {
    suite.sampling.greedy = false;
    suite.sampling.temperature = o.temperature;
  }
  if (suite.sampling.greedy && suite.samples > 1)
    emit({{"event", "warning"},
          {"message", fmt::format("greedy decoding with {} samples per task: the samples are "
                                  "identical, so pass@k = pass@1 (give --temperature T)",
                                  suite.samples)}});

  fs::path out = o.out_dir;
  if (out.empty())
    out = fs::path("evals") /
          fmt::format("{}-{}-{}", model_name(model.dir), suite.name, now_stamp("%Y%m%d-%H%M%S"));
  {
    std::error_code ec;
    fs::create_directories(out, ec);
    SHOAL_CHECK(!ec, "--out {}: cannot create it: {}", out.string(), ec.message());
    fs::path probe = out / ".write-test";
    std::ofstream f(probe);
    SHOAL_CHECK(f.good(), "--out {}: not writable", out.string());
    f.close();
    fs::remove(probe, ec);
  }

  // ---- the sandbox and the tasks ----
  std::unique_ptr<LocalSandbox> local;
  std::string endpoint = o.sandbox_endpoint;
  if (endpoint.empty()) {
    local = std::make_unique<LocalSandbox>(o.shoal_exe, local_sandbox_endpoint("eval"),
                                           o.sandbox_workers, [&emit](const std::string& m) {
                                             emit({{"event", "warning"}, {"message", m}});
                                           });
    endpoint = local->endpoint();
    info("sandbox server started at " + endpoint);
  }
  sandbox::ClientOptions sco;
  sco.endpoint = endpoint;
  auto env_client = std::make_shared<sandbox::Client>(sco);
  tasks::TaskStore store((out / "tasks.sqlite").string(), true);
  // Synthesize once, up front (each model then reads the same tasks with its prompt settings).
  std::vector<EvalTask> tasks =
      eval_suite_tasks(store, suite, env_client.get(), PromptSettings{}, info);
  info(fmt::format("suite {}: {} tasks x {} samples = {} episodes per model{}", suite.name,
                   tasks.size(), suite.samples, static_cast<int64_t>(tasks.size()) * suite.samples,
                   baseline ? " (and the baseline)" : ""));

  json suite_json = {{"name", suite.name},
                     {"file", o.suite_file},
                     {"samples", suite.samples},
                     {"sampling",
                      {{"greedy", suite.sampling.greedy},
                       {"temperature", suite.sampling.temperature},
                       {"top_k", suite.sampling.top_k},
                       {"top_p", suite.sampling.top_p},
                       {"min_p", suite.sampling.min_p}}},
                     {"max_turns", suite.max_turns},
                     {"max_new_tokens", suite.max_new_tokens},
                     {"tasks", json::array()}};
  for (const TaskSetSpec& t : suite.tasks)
    suite_json["tasks"].push_back(
        {{"family", t.family}, {"count", t.count}, {"difficulty", t.difficulty}});

  EvalOutcome outcome;
  outcome.out_dir = out.string();
  json& res = outcome.results;
  res = {{"created", now_stamp("%Y-%m-%dT%H:%M:%S%z")}, {"seed", o.seed}, {"suite", suite_json}};
  ModelRun a = evaluate_model(model, suite, store, endpoint, env_client, o);
  res["model"] = a.model;
  res["results"] = a.results;
  outcome.interrupted = a.interrupted;
  if (baseline && !a.interrupted) {
    ModelRun b = evaluate_model(*baseline, suite, store, endpoint, env_client, o);
    res["baseline"] = {{"model", b.model}, {"results", b.results}};
    outcome.interrupted = b.interrupted;
    res["comparison"] = compare(a.results, b.results);
  }
  res["interrupted"] = outcome.interrupted;
  write_json_atomic(res, (out / "results.json").string());
  return outcome;
}

}  // namespace shoal::actors
