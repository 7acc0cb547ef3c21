// The run (runner.h).
#include "actors/runner.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "actors/collector.h"
#include "actors/demonstrations.h"
#include "actors/engine_owner.h"
#include "actors/eval.h"
#include "actors/learner.h"
#include "actors/local_sandbox.h"
#include "actors/policy.h"
#include "actors/reward_actor.h"
#include "actors/run_config.h"
#include "actors/run_store.h"
#include "actors/stage_driver.h"
#include "actors/store_writer.h"
#include "actors/tool_actor.h"
#include "base/error.h"
#include "base/log.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "engine/tokenizer/chat_format.h"
#include "rl/batch.h"
#include "sandbox/client.h"
#include "tasks/registry.h"
#include "tasks/store.h"
#include "tasks/synth.h"

namespace shoal::actors {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Run events from any thread: to the store writer once attached, else to the store directly.
class EventSink {
 public:
  explicit EventSink(std::shared_ptr<RunStore> store) : store_(std::move(store)) {}
  void attach(caf::actor writer) {
    std::lock_guard lock(mu_);
    writer_ = std::move(writer);
  }
  void detach() {
    std::lock_guard lock(mu_);
    writer_ = nullptr;
    detached_ = true;
  }
  void record(const std::string& kind, const std::string& message) {
    std::lock_guard lock(mu_);
    if (writer_)
      caf::anon_send(writer_, event_atom::value, kind, message, std::string("{}"));
    else if (!detached_)
      store_->event(kind, message);
  }

 private:
  std::shared_ptr<RunStore> store_;
  std::mutex mu_;
  caf::actor writer_;
  bool detached_ = false;
};

// ---- tasks ----

struct TaskSet {
  std::vector<tasks::StoredTask> tasks;
};

// Synthesises (or finds, on resume) `spec.count` tasks of the split; returns them in id order.
std::vector<tasks::StoredTask> task_set(tasks::TaskStore& store, const TaskSetSpec& spec,
                                        const std::string& split, sandbox::Client* sandbox,
                                        const TrainOptions& o) {
  tasks::TaskQuery q;
  q.family = spec.family;
  q.split = split;
  q.difficulty = static_cast<int>(spec.difficulty);
  int64_t have = store.count(q);
  if (have < spec.count) {
    if (o.on_event)
      o.on_event(
          {{"event", "info"},
           {"message", fmt::format("synthesizing {} {} tasks ({}, difficulty {})",
                                   spec.count - have, split, spec.family, spec.difficulty)}});
    tasks::SynthOptions so;
    so.family = spec.family;
    so.split = split;
    so.count = static_cast<int>(spec.count - have);
    so.difficulty = static_cast<int>(spec.difficulty);
    so.sandbox = sandbox;
    tasks::synthesize(store, so);
  }
  q.limit = spec.count;
  return store.list(q);
}

// The conversation a demonstration (or its perturbation) is: the prompt as rollouts see it
// (tools listed in the system message), then the episode's messages.
json conversation(const std::string& task_json, const tasks::Episode& ep, bool list_tools) {
  json t = json::parse(task_json);
  json c = agent_prompt(t["messages"], t["tools"], list_tools);
  for (const json& m : ep.messages) c.push_back(m);
  return c;
}

// ---- the run ----

std::string default_name(const std::string& config_file) {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::localtime(&now));
  return fs::path(config_file).stem().string() + "-" + buf;
}

void check_writable(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  SHOAL_CHECK(!ec, "cannot create the run directory {}: {}", dir.string(), ec.message());
  fs::path probe = dir / ".write-test";
  {
    std::ofstream f(probe);
    SHOAL_CHECK(f.good(), "the run directory {} is not writable", dir.string());
  }
  fs::remove(probe, ec);
}

}  // namespace

TrainResult run_training(const TrainOptions& o) {
  auto emit = [&o](json e) {
    if (o.on_event) o.on_event(e);
  };
  auto info = [&emit](const std::string& m) { emit({{"event", "info"}, {"message", m}}); };

  // ---- the run directory, config and store ----
  RunConfig cfg;
  fs::path dir;
  std::shared_ptr<RunStore> store;
  bool resuming = !o.resume_dir.empty();
  if (resuming) {
    dir = o.resume_dir;
    SHOAL_CHECK(fs::exists(dir / "run.sqlite"), "{} is not a run directory (no run.sqlite)",
                dir.string());
    cfg = parse_run_config(load_config_file((dir / "config.json").string()));
    check_writable(dir);
    store = RunStore::open((dir / "run.sqlite").string());
  } else {
    cfg = load_run_config(o.config_file, o.overrides);
    std::string name = o.name.empty() ? default_name(o.config_file) : o.name;
    dir = fs::path(o.runs_dir) / name;
    SHOAL_CHECK(!fs::exists(dir / "run.sqlite"),
                "{} already holds a run: resume it with `shoal train --resume {}` or choose "
                "another --name",
                dir.string(), dir.string());
    check_writable(dir);
    {
      std::ofstream f(dir / "config.json");
      f << cfg.resolved.dump(2) << "\n";
      SHOAL_CHECK(f.good(), "cannot write {}", (dir / "config.json").string());
    }
    store = RunStore::create((dir / "run.sqlite").string(), name, cfg.resolved);
  }
  store->set_status("running");

  // Where to resume from: the last checkpoint (none: from the start).
  std::optional<CheckpointRecord> ck = store->last_checkpoint();
  if (resuming) {
    if (ck && !fs::exists(fs::path(ck->path) / "config.json")) {
      SHOAL_FAIL("the checkpoint of step {} ({}) is missing; the run cannot resume", ck->gstep,
                 ck->path);
    }
    store->truncate_after(ck ? ck->gstep : -1);
    info(ck ? fmt::format("resuming {} from the checkpoint of step {} ({})", dir.string(),
                          ck->gstep, ck->stage)
            : fmt::format("resuming {}: no checkpoint yet, starting over", dir.string()));
    store->event("resume", ck ? fmt::format("resumed from step {}", ck->gstep)
                              : std::string("resumed from the start"));
  }

  // Events from threads outside the actors (the sandbox watcher) go to the store writer once it
  // runs (before that, straight to the store: nothing else writes it yet).
  auto events = std::make_shared<EventSink>(store);

  // ---- the sandbox ----
  std::unique_ptr<LocalSandbox> sandbox_proc;
  std::string endpoint = cfg.sandbox_endpoint;
  if (endpoint.empty()) {
    SHOAL_CHECK(!o.shoal_exe.empty(), "no sandbox endpoint and no shoal binary to start one");
    endpoint = fmt::format("ipc:///tmp/shoal-run-{}-{}.sock", getpid(),
                           std::hash<std::string>{}(fs::absolute(dir).string()) % 1000000);
    sandbox_proc = std::make_unique<LocalSandbox>(o.shoal_exe, endpoint, cfg.sandbox_workers,
                                                  [&emit, events](const std::string& m) {
                                                    emit({{"event", "warning"}, {"message", m}});
                                                    events->record("sandbox_restart", m);
                                                  });
    info("sandbox server started at " + endpoint);
  }
  sandbox::ClientOptions sco;
  sco.endpoint = endpoint;
  auto sandbox_client = std::make_shared<sandbox::Client>(sco);

  // ---- tasks ----
  tasks::TaskStore task_store((dir / "tasks.sqlite").string(), true);
  std::vector<std::vector<tasks::StoredTask>> stage_tasks(cfg.stages.size());
  for (size_t i = 0; i < cfg.stages.size(); ++i)
    for (const TaskSetSpec& ts : cfg.stages[i].tasks) {
      auto got = task_set(task_store, ts, "train", sandbox_client.get(), o);
      stage_tasks[i].insert(stage_tasks[i].end(), got.begin(), got.end());
    }
  std::vector<std::vector<EvalTask>> eval_tasks(cfg.evals.size());
  for (size_t i = 0; i < cfg.evals.size(); ++i)
    eval_tasks[i] = eval_suite_tasks(task_store, cfg.evals[i], sandbox_client.get(),
                                     prompt_settings(cfg), info);

  // ---- the tokenizer ----
  std::string tokenizer_path = cfg.tokenizer_file;
  if (cfg.train_tokenizer) {
    tokenizer_path = (dir / "tokenizer.json").string();
    if (!fs::exists(tokenizer_path)) {
      BpeTrainer trainer(cfg.tokenizer_split_digits);
      for (size_t i = 0; i < cfg.stages.size(); ++i)
        for (const tasks::StoredTask& t : stage_tasks[i]) {
          std::string tj = task_prompt(t.task, prompt_settings(cfg));
          tasks::Episode demo = t.demonstration.value_or(tasks::Episode{});
          trainer.add_text(render_chat(conversation(tj, demo, cfg.list_tools)));
        }
      SHOAL_CHECK(trainer.total_words() > 0,
                  "tokenizer.train needs a task corpus: give the stages task sets");
      BpeTrainOptions bo;
      bo.vocab_size = static_cast<int32_t>(cfg.tokenizer_vocab);
      write_json_atomic(trainer.train(bo), tokenizer_path);
      info(fmt::format("trained a {}-token tokenizer on {} words of the task corpus",
                       cfg.tokenizer_vocab, trainer.total_words()));
    }
  }
  auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::load(tokenizer_path));

  // ---- the model and its policy ----
  std::unique_ptr<Model> model;
  {
    ModelConfig mc;
    if (!cfg.model_checkpoint.empty()) {
      mc = ModelConfig::load(cfg.model_checkpoint);
    } else {
      std::string file = cfg.model_config_file;
      if (file.empty()) {
        file = (fs::path(o.presets_dir) / (cfg.model_preset + ".json")).string();
        SHOAL_CHECK(fs::exists(file), "model.preset {}: no such preset ({})", cfg.model_preset,
                    file);
      }
      std::ifstream f(file);
      json j = json::parse(f, nullptr, true, true);
      j["vocab_size"] = tokenizer->vocab_size();
      for (auto& [k, v] : cfg.model_overrides.items()) j[k] = v;
      mc = ModelConfig::from_json(j, file);
    }
    SHOAL_CHECK(mc.vocab_size >= tokenizer->vocab_size(),
                "the model's vocab_size {} is smaller than the tokenizer's {}", mc.vocab_size,
                tokenizer->vocab_size());
    model = std::make_unique<Model>(mc, cpu_backend());
    if (!cfg.model_checkpoint.empty())
      model->load_weights(cfg.model_checkpoint);
    else
      model->init_random(cfg.seed, static_cast<float>(cfg.init_std));
  }
  PolicyConfig pc;
  pc.max_sequences = 64;
  pc.max_batch_tokens = 1024;
  pc.cache_pages = std::max<int64_t>(1024, 64 * (cfg.max_seq_len / pc.page_tokens + 2));
  auto policy = std::make_shared<Policy>(std::move(model), pc);
  if (ck) {
    policy->load(ck->path);
    info(fmt::format("loaded the checkpoint of step {} (weight version {})", ck->gstep,
                     policy->weight_version()));
  }
  info(fmt::format("model: {} parameters; tokenizer: {} ids",
                   policy->model().params().trainable_numel(), tokenizer->vocab_size()));

  // ---- the actors ----
  caf::actor_system_config sys_cfg;
  add_message_types(sys_cfg);
  sys_cfg.set("logger.console", caf::atom("none"));
  caf::actor_system sys{sys_cfg};
  caf::scoped_actor self{sys};

  engine_actor engine = spawn_engine_owner(sys, policy);
  caf::actor writer = spawn_store_writer(sys, store);
  events->attach(writer);
  RolloutDeps deps =
      sandbox_rollout_deps(sys, tokenizer, engine, endpoint, cfg.sandbox_workers, sandbox_client);
  CollectorConfig cc;
  cc.max_in_flight = o.threads > 0 ? o.threads : 64;
  caf::actor collector = sys.spawn(collector_actor, deps, cc, writer);
  caf::actor learner = sys.spawn(learner_actor, engine);

  caf::actor current_driver;  // the stage driver while a stage runs
  auto stop_all = [&] {
    events->detach();
    if (current_driver) self->send_exit(current_driver, caf::exit_reason::user_shutdown);
    for (const caf::actor& a : {collector, learner, writer})
      self->send_exit(a, caf::exit_reason::user_shutdown);
    self->send_exit(engine, caf::exit_reason::user_shutdown);
    self->send_exit(deps.reward, caf::exit_reason::user_shutdown);
    for (auto& t : deps.tools) self->send_exit(t, caf::exit_reason::user_shutdown);
  };

  TrainResult result;
  result.run_dir = dir.string();
  int64_t weight_version = policy->weight_version();
  try {
    // ---- evals ----
    auto run_evals = [&](const std::string& label, int64_t gstep) {
      for (size_t si = 0; si < cfg.evals.size(); ++si) {
        const EvalSuiteSpec& suite = cfg.evals[si];
        std::vector<EpisodeJob> jobs =
            eval_jobs(suite, eval_tasks[si], "eval:" + suite.name + "@" + label, gstep, cfg.seed,
                      prompt_settings(cfg));
        emit({{"event", "info"},
              {"message",
               fmt::format("eval {} ({}): {} episodes", suite.name, label, jobs.size())}});
        auto t0 = Clock::now();
        std::vector<EpisodeResult> got;
        self->request(collector, caf::infinite, collect_atom::value, std::move(jobs))
            .receive([&](std::vector<EpisodeResult>& r) { got = std::move(r); },
                     [&](caf::error& e) { SHOAL_FAIL("eval {}: {}", suite.name, sys.render(e)); });
        double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        json res = summarize_eval(got, eval_tasks[si], suite.samples, seconds);
        std::vector<EpisodeRecord> records;
        for (EpisodeResult& r : got) records.push_back(std::move(r.record));
        self->request(writer, caf::infinite, eval_atom::value, suite.name, label, gstep, res.dump(),
                      records)
            .receive([](bool) {},
                     [&](caf::error& e) { SHOAL_FAIL("recording an eval: {}", sys.render(e)); });
        emit({{"event", "eval"},
              {"suite", suite.name},
              {"label", label},
              {"gstep", gstep},
              {"results", res}});
      }
    };

    // ---- the stages ----
    int64_t gstep0 = 0;
    size_t first_stage = 0;
    int64_t start_step = 0;
    if (ck) {
      first_stage = static_cast<size_t>(ck->state.at("stage_index").get<int64_t>());
      start_step = ck->stage_step;
      for (size_t i = 0; i < first_stage; ++i) gstep0 += cfg.stages[i].steps;
    }
    if (!ck && cfg.eval_before) run_evals("before", 0);
    for (size_t si = first_stage; si < cfg.stages.size(); ++si) {
      const StageSpec& spec = cfg.stages[si];
      int64_t from = si == first_stage ? start_step : 0;
      if (from < spec.steps) {
        auto ctx = std::make_shared<StageContext>();
        ctx->spec = spec;
        ctx->stage_index = static_cast<int64_t>(si);
        ctx->gstep0 = gstep0;
        ctx->start_step = from;
        ctx->weight_version = weight_version;
        ctx->seed = cfg.seed + si;
        ctx->staleness = cfg.staleness;
        ctx->run_dir = dir.string();
        ctx->checkpoint_every = cfg.checkpoint_every;
        ctx->keep_checkpoints = cfg.keep_checkpoints;
        ctx->tokenizer_file = tokenizer_path;
        ctx->list_tools = cfg.list_tools;
        if (spec.type == "grpo") {
          for (const tasks::StoredTask& t : stage_tasks[si])
            ctx->pool.push_back({std::to_string(t.id), task_prompt(t.task, prompt_settings(cfg)),
                                 t.task.family, t.task.difficulty});
          if (ck && si == first_stage && ck->state.contains("sampler"))
            ctx->sampler_state = ck->state["sampler"];
        } else {
          // Demonstrations (sft) or [demonstration, perturbation] pairs (dpo), as samples.
          std::vector<std::vector<rl::Sample>> units;
          int64_t too_long = 0;
          std::mt19937_64 pick(cfg.seed * 104729 + si);
          std::uniform_real_distribution<double> unit(0.0, 1.0);
          for (const tasks::StoredTask& t : stage_tasks[si]) {
            if (!t.demonstration) continue;
            std::string tj = task_prompt(t.task, prompt_settings(cfg));
            // An imperfect teacher's variants (sft only; one draw per demonstration).
            tasks::Episode demo = *t.demonstration;
            if (spec.type == "sft") {
              double u = unit(pick);
              if (u < spec.tool_free_demos)
                demo = final_answer_only(demo);
              else if (u < spec.tool_free_demos + spec.unformatted_demos)
                demo = without_answer_line(demo);
            }
            rl::Sample chosen = rl::sample_from_chat(
                *tokenizer, chat_messages_from_json(conversation(tj, demo, cfg.list_tools)));
            if (static_cast<int64_t>(chosen.tokens.size()) > cfg.max_seq_len) {
              ++too_long;
              continue;
            }
            if (spec.type == "sft") {
              units.push_back({std::move(chosen)});
            } else if (t.rejected) {
              rl::Sample rejected = rl::sample_from_chat(
                  *tokenizer,
                  chat_messages_from_json(conversation(tj, *t.rejected, cfg.list_tools)));
              if (static_cast<int64_t>(rejected.tokens.size()) > cfg.max_seq_len) {
                ++too_long;
                continue;
              }
              units.push_back({std::move(chosen), std::move(rejected)});
            }
          }
          if (!spec.jsonl.empty()) {
            std::ifstream f(spec.jsonl);
            std::string line;
            int64_t lineno = 0;
            while (std::getline(f, line)) {
              ++lineno;
              if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
              json j;
              try {
                j = json::parse(line);
              } catch (const std::exception& e) {
                SHOAL_FAIL("{}:{}: not JSON: {}", spec.jsonl, lineno, e.what());
              }
              try {
                if (spec.type == "sft") {
                  units.push_back({rl::sample_from_chat(
                      *tokenizer, chat_messages_from_json(j.at("messages")))});
                } else {
                  json chosen = j.at("prompt"), rejected = j.at("prompt");
                  for (const json& m : j.at("chosen")) chosen.push_back(m);
                  for (const json& m : j.at("rejected")) rejected.push_back(m);
                  units.push_back(
                      {rl::sample_from_chat(*tokenizer, chat_messages_from_json(chosen)),
                       rl::sample_from_chat(*tokenizer, chat_messages_from_json(rejected))});
                }
              } catch (const std::exception& e) {
                SHOAL_FAIL("{}:{}: {}", spec.jsonl, lineno, e.what());
              }
            }
          }
          if (too_long > 0)
            emit({{"event", "warning"},
                  {"message", fmt::format("stage {}: {} examples are longer than max_seq_len ({} "
                                          "tokens) and were left out",
                                          spec.name, too_long, cfg.max_seq_len)}});
          SHOAL_CHECK(!units.empty(), "stage {}: no training examples (demonstrations{}){}",
                      spec.name, spec.type == "dpo" ? " with perturbations" : "",
                      too_long ? fmt::format(": all {} are longer than max_seq_len {}", too_long,
                                             cfg.max_seq_len)
                               : "");
          // Batches of about batch_tokens tokens, in a per-epoch shuffled order, for every step.
          std::mt19937_64 rng(cfg.seed * 7919 + si);
          std::vector<size_t> order(units.size());
          std::iota(order.begin(), order.end(), size_t{0});
          std::vector<rl::Sample> cur;
          int64_t cur_tokens = 0;
          while (static_cast<int64_t>(ctx->batches.size()) < spec.steps) {
            std::shuffle(order.begin(), order.end(), rng);
            for (size_t k : order) {
              int64_t n = 0;
              for (const rl::Sample& s : units[k]) n += static_cast<int64_t>(s.tokens.size());
              if (!cur.empty() && cur_tokens + n > spec.batch_tokens) {
                ctx->batches.push_back(std::move(cur));
                cur.clear();
                cur_tokens = 0;
                if (static_cast<int64_t>(ctx->batches.size()) == spec.steps) break;
              }
              for (const rl::Sample& s : units[k]) cur.push_back(s);
              cur_tokens += n;
            }
          }
        }
        emit({{"event", "stage"},
              {"stage", spec.name},
              {"type", spec.type},
              {"steps", spec.steps},
              {"from", from},
              {"gstep0", gstep0}});
        StageActors sa{engine, collector, learner, writer, caf::actor_cast<caf::actor>(self)};
        caf::actor driver = sys.spawn(stage_driver, ctx, sa);
        current_driver = driver;
        self->monitor(driver);
        self->send(driver, run_atom::value);
        bool done = false;
        std::string failure;
        bool asked_to_stop = false;
        self->receive_while([&] { return !done; })(
            [&](progress_atom, const std::string& text) {
              json p = json::parse(text);
              if (p.contains("warning")) {
                emit({{"event", "warning"}, {"message", p["warning"]}});
                return;
              }
              p["event"] = "step";
              if (p.contains("metrics") && p["metrics"].contains("weight_version"))
                weight_version = p["metrics"]["weight_version"].get<int64_t>();
              emit(p);
            },
            [&](done_atom, bool ok, const std::string& text) {
              done = true;
              if (!ok) failure = text;
            },
            [&](caf::down_msg& m) {
              if (!done && m.source == driver.address()) {
                done = true;
                failure = "the stage driver stopped: " + sys.render(m.reason);
              }
            },
            caf::after(std::chrono::milliseconds(200)) >>
                [&] {
                  if (o.interrupt && o.interrupt->load() && !asked_to_stop) {
                    asked_to_stop = true;
                    info("interrupted: stopping after the current step with a checkpoint");
                    self->send(driver, stop_atom::value);
                  }
                });
        if (failure == "interrupted") {
          result.interrupted = true;
          break;
        }
        SHOAL_CHECK(failure.empty(), "stage {}: {}", spec.name, failure);
      }
      gstep0 += spec.steps;
      if (cfg.eval_after_stage) run_evals("after-" + spec.name, gstep0);
    }
    result.evals = store->evals();
    if (result.interrupted) {
      store->set_status("interrupted");
      store->event("interrupted", "the run was interrupted; resume continues from the checkpoint");
    } else {
      store->set_status("finished");
      store->event("finished", "the run finished");
    }
  } catch (...) {
    stop_all();
    store->set_status("failed");
    throw;
  }
  stop_all();
  return result;
}

}  // namespace shoal::actors
