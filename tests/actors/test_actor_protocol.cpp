// Deterministic tests of the run's actors under CAF's test coordinator (one thread, every message
// delivered when the test says): the GRPO step protocol through the real stage driver,
// collector, rollouts, learner and store writer, with a scripted engine and reward; the staleness
// bound (what may run while a training step is pending); supervision (a failing reward is retried,
// then recorded as a dropped episode; a tool that never answers times out into an error the model
// reads).
#include <gtest/gtest.h>
#include <unistd.h>

#include <caf/scheduler/test_coordinator.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "actors/collector.h"
#include "actors/learner.h"
#include "actors/stage_driver.h"
#include "actors/store_writer.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "engine/tokenizer/chat_format.h"
#include "tasks/registry.h"

namespace shoal::actors {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const Tokenizer& tokenizer() {
  static Tokenizer tok = [] {
    BpeTrainer t;
    for (int i = 0; i < 20; ++i)
      t.add_text("A warehouse holds 12 crates. calculator expression ANSWER: 1 ANSWER: 0");
    fs::path p = fs::temp_directory_path() / ("shoal-protocol-tok-" + std::to_string(::getpid()));
    fs::create_directories(p);
    write_json_atomic(t.train({.vocab_size = 300}), (p / "tokenizer.json").string());
    return Tokenizer::load((p / "tokenizer.json").string());
  }();
  return tok;
}

// The scripted engine: the first turn of an episode calls the calculator when `call_tool`, and
// answers "ANSWER: 1" (odd sampling seed) or "ANSWER: 0" otherwise. Training steps bump the
// weight version; with `hold_training` their replies wait until the test releases them.
struct EngineScript {
  bool call_tool = false;
  bool hold_training = false;
  int64_t version = 0;
  int64_t generated = 0;  // generation requests answered
  std::vector<TrainRequest> trained;
  std::vector<int64_t> generated_during_training;  // per training step: requests meanwhile
  std::vector<caf::typed_response_promise<StepMetrics>> held;
};

engine_actor::behavior_type fake_engine(engine_actor::pointer self,
                                        std::shared_ptr<EngineScript> s) {
  return {
      [s](generate_atom, const std::vector<int32_t>& context, const SamplingParams& p) {
        ++s->generated;
        if (!s->held.empty()) ++s->generated_during_training.back();
        const Tokenizer& tok = tokenizer();
        std::string seen = tok.decode(context, false);
        ChatMessage m;
        m.role = ChatRole::assistant;
        if (s->call_tool && seen.find(chat_marker::kToolOutputsBegin) == std::string::npos)
          m.tool_calls.push_back({"function", "calculator", R"({"expression": "1 + 1"})"});
        else
          m.content = p.seed % 2 ? "ANSWER: 1" : "ANSWER: 0";
        GenOutput out;
        out.ids = tok.encode(render_assistant_turn(m).substr(
            0, render_assistant_turn(m).size() - chat_marker::kEos.size()));
        out.ids.push_back(*tok.token_to_id(chat_marker::kEos));
        out.logprobs.assign(out.ids.size(), -0.5f);
        out.stopped = true;
        out.weight_version = s->version;
        return out;
      },
      [self, s](train_atom, TrainRequest& r) -> caf::result<StepMetrics> {
        s->trained.push_back(r);
        if (s->hold_training) {
          auto promise = self->make_response_promise<StepMetrics>();
          s->held.push_back(promise);
          s->generated_during_training.push_back(0);
          return promise;
        }
        ++s->version;
        return StepMetrics{{{"loss", 0.5}, {"weight_version", double(s->version)}}};
      },
      [s](save_atom, const std::string& dir) -> int64_t {
        fs::create_directories(dir);
        std::ofstream(fs::path(dir) / "config.json") << "{}";
        return s->version;
      },
      [](load_atom, const std::string&) -> int64_t { return 0; },
      [s](reset_atom) -> int64_t { return s->version; },
      // The test's "release" signal (the real owner gets gen_done from its scheduler): the oldest
      // held training step finishes, inside this actor.
      [s](gen_done_atom, int64_t) {
        if (s->held.empty()) return;
        auto promise = s->held.front();
        s->held.erase(s->held.begin());
        ++s->version;
        promise.deliver(StepMetrics{{{"weight_version", double(s->version)}}});
      },
  };
}

// Reward 1 for "ANSWER: 1"; `fail_first` makes the first verification of every task fail (the
// reward actor answers with an error), `always_fail_task` fails every one of that task.
struct RewardScript {
  std::map<std::string, int> seen;
  bool fail_first = false;
  std::string always_fail_task;
  std::string always_pass_task;  // tasks whose JSON contains this are always solved
};

reward_actor::behavior_type fake_reward(reward_actor::pointer, std::shared_ptr<RewardScript> s) {
  return {
      [s](verify_atom, const VerifyRequest& r) -> caf::result<RewardMsg> {
        int n = s->seen[r.task]++;
        bool always =
            !s->always_fail_task.empty() && r.task.find(s->always_fail_task) != std::string::npos;
        if (always || (s->fail_first && n == 0))
          return caf::make_error(caf::sec::runtime_error, std::string("scripted reward failure"));
        RewardMsg m;
        m.value = r.messages.find("ANSWER: 1") != std::string::npos ? 1.0 : 0.0;
        if (!s->always_pass_task.empty() && r.task.find(s->always_pass_task) != std::string::npos)
          m.value = 1.0;
        return m;
      },
  };
}

// A tool actor that never answers (it keeps the promises it will not keep).
using Unanswered = std::vector<caf::typed_response_promise<std::string>>;
tool_actor::behavior_type silent_tool(tool_actor::pointer self, std::shared_ptr<Unanswered> keep) {
  return {
      [self, keep](tool_atom, const ToolCallMsg&) -> caf::result<std::string> {
        keep->push_back(self->make_response_promise<std::string>());
        return keep->back();
      },
  };
}

struct Listener {
  std::vector<json> progress;
  bool done = false, ok = false;
  std::string text;
};

caf::behavior listener(caf::event_based_actor*, std::shared_ptr<Listener> l) {
  return {
      [l](progress_atom, const std::string& t) { l->progress.push_back(json::parse(t)); },
      [l](done_atom, bool ok, const std::string& text) {
        l->done = true;
        l->ok = ok;
        l->text = text;
      },
  };
}

caf::actor_system_config& test_config(caf::actor_system_config& cfg) {
  add_message_types(cfg);
  cfg.set("scheduler.policy", caf::atom("testing"));
  cfg.set("logger.console", caf::atom("none"));
  cfg.set("logger.file-verbosity", caf::atom("quiet"));
  return cfg;
}

class ActorProtocol : public ::testing::Test {
 protected:
  ActorProtocol()
      : sys(test_config(cfg)),
        sched(dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler())) {
    dir = fs::temp_directory_path() /
          ("shoal-protocol-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
    store = RunStore::create((dir / "run.sqlite").string(), "t", json::object());
    engine_script = std::make_shared<EngineScript>();
    reward_script = std::make_shared<RewardScript>();
    heard = std::make_shared<Listener>();
  }
  ~ActorProtocol() override {
    // The actor system waits for every actor at destruction: stop them, and let them stop.
    for (const caf::actor& a : spawned) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    sched.run();
    fs::remove_all(dir);
  }

  template <class Handle>
  Handle keep(Handle h) {
    spawned.push_back(caf::actor_cast<caf::actor>(h));
    return h;
  }

  // A grpo stage of `steps` steps over 4 arithmetic tasks, `prompts` × `group` episodes a step.
  std::shared_ptr<StageContext> grpo_stage(int64_t steps, int64_t prompts, int64_t group,
                                           int64_t staleness) {
    auto c = std::make_shared<StageContext>();
    c->spec.type = "grpo";
    c->spec.name = "grpo";
    c->spec.steps = steps;
    c->spec.prompts_per_step = prompts;
    c->spec.group_size = group;
    c->spec.max_turns = 3;
    c->spec.max_new_tokens = 64;
    c->spec.max_episode_tokens = 16384;
    c->spec.lr = 1e-3;
    c->staleness = staleness;
    c->run_dir = dir.string();
    c->checkpoint_every = 0;
    const tasks::Family& f = tasks::find_family("arithmetic");
    for (uint64_t seed = 1; seed <= 4; ++seed)
      c->pool.push_back(
          {"task-" + std::to_string(seed), to_json(f.generate(seed, 1)).dump(), "arithmetic", 1});
    return c;
  }

  // The same with the adaptive sampler and 4 countdown tasks more, `prompts` × 4 episodes a step.
  std::shared_ptr<StageContext> adaptive_stage(int64_t steps, int64_t prompts, int64_t staleness) {
    auto c = grpo_stage(steps, prompts, 4, staleness);
    c->spec.sampler = "adaptive";
    c->spec.sampler_decay = 0.5;
    c->spec.sampler_explore = 0.1;
    const tasks::Family& f = tasks::find_family("countdown");
    for (uint64_t seed = 1; seed <= 4; ++seed)
      c->pool.push_back({"countdown-" + std::to_string(seed), to_json(f.generate(seed, 1)).dump(),
                         "countdown", 1});
    return c;
  }

  // gstep -> group -> the group's task id, from the store.
  std::map<int64_t, std::map<int64_t, std::string>> prompts_by_step() {
    std::map<int64_t, std::map<int64_t, std::string>> out;
    for (const EpisodeRecord& e : store->episodes()) out[e.gstep][e.group] = e.task_id;
    return out;
  }

  // Lets the oldest held training step finish (the weights move on one version).
  void release() {
    ASSERT_FALSE(engine_script->held.empty());
    caf::anon_send(engine, gen_done_atom::value, int64_t{-1});
    sched.run();
  }

  void start(std::shared_ptr<StageContext> ctx, bool silent_tools = false,
             int64_t max_in_flight = 3) {
    engine = keep(sys.spawn(fake_engine, engine_script));
    RolloutDeps deps;
    deps.tokenizer = std::shared_ptr<const Tokenizer>(&tokenizer(), [](const Tokenizer*) {});
    deps.engine = engine;
    deps.reward = keep(sys.spawn(fake_reward, reward_script));
    if (silent_tools) deps.tools.push_back(keep(sys.spawn(silent_tool, unanswered)));
    deps.tool_timeout_ms = 1000;
    writer = keep(sys.spawn(store_writer_actor, store));
    CollectorConfig cc;
    cc.max_in_flight = max_in_flight;
    cc.max_attempts = 2;
    collector = keep(sys.spawn(collector_actor, deps, cc, writer));
    learner = keep(sys.spawn(learner_actor, engine));
    caf::actor l = keep(sys.spawn(listener, heard));
    caf::actor driver = sys.spawn(stage_driver, std::shared_ptr<const StageContext>(ctx),
                                  StageActors{engine, collector, learner, writer, l});
    caf::anon_send(driver, run_atom::value);
    sched.run();
  }

  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scheduler::test_coordinator& sched;
  fs::path dir;
  std::shared_ptr<RunStore> store;
  std::shared_ptr<EngineScript> engine_script;
  std::shared_ptr<RewardScript> reward_script;
  std::shared_ptr<Listener> heard;
  std::shared_ptr<Unanswered> unanswered = std::make_shared<Unanswered>();
  engine_actor engine;
  caf::actor writer, collector, learner;
  std::vector<caf::actor> spawned;
};

TEST_F(ActorProtocol, GrpoStepsFlowThroughRolloutLearnerAndStore) {
  start(grpo_stage(3, 2, 4, 0));
  ASSERT_TRUE(heard->done);
  EXPECT_TRUE(heard->ok) << heard->text;
  ASSERT_EQ(engine_script->trained.size(), 3u);
  for (const TrainRequest& r : engine_script->trained) {
    EXPECT_EQ(r.kind, "grpo");
    ASSERT_EQ(r.samples.size(), 8u);  // 2 prompts x group of 4
    // Advantages are centred within each group of 4 (same task).
    for (size_t g = 0; g < 2; ++g) {
      double sum = 0;
      for (size_t k = 0; k < 4; ++k) sum += r.advantages[g * 4 + k];
      EXPECT_NEAR(sum, 0.0, 1e-9);
    }
    for (size_t i = 0; i < r.samples.size(); ++i) {
      EXPECT_EQ(r.samples[i].tokens.size(), r.logprobs[i].size());
      EXPECT_EQ(r.samples[i].tokens.size(), r.samples[i].loss_mask.size());
    }
  }
  EXPECT_EQ(engine_script->generated, 24);
  // The store holds 3 steps with their 8 episodes each, all on-policy.
  EXPECT_EQ(store->episode_count(), 24);
  auto eps = store->episodes();
  std::map<int64_t, std::map<int64_t, std::set<std::string>>> tasks_of;  // gstep -> group -> ids
  for (const EpisodeRecord& e : eps) {
    EXPECT_EQ(e.weight_version, e.gstep - 1) << "on-policy: step n samples with version n-1";
    tasks_of[e.gstep][e.group].insert(e.task_id);
    EXPECT_TRUE(e.reward == 0.0 || e.reward == 1.0);
  }
  ASSERT_EQ(tasks_of.size(), 3u);
  for (auto& [g, groups] : tasks_of)
    for (auto& [gi, ids] : groups) EXPECT_EQ(ids.size(), 1u) << "a group is one task";
  ASSERT_EQ(heard->progress.size(), 3u);
  EXPECT_EQ(heard->progress[2]["gstep"], 3);
  EXPECT_EQ(heard->progress[2]["metrics"]["episodes"], 8);
}

TEST_F(ActorProtocol, StalenessZeroRunsNothingWhileAStepTrains) {
  engine_script->hold_training = true;
  start(grpo_stage(3, 2, 4, 0));
  ASSERT_EQ(engine_script->trained.size(), 1u);
  EXPECT_EQ(engine_script->generated, 8);  // step 1's episodes only
  for (int step = 0; step < 3; ++step) release();
  EXPECT_TRUE(heard->ok) << heard->text;
  for (int64_t n : engine_script->generated_during_training) EXPECT_EQ(n, 0);
  for (const EpisodeRecord& e : store->episodes()) EXPECT_EQ(e.weight_version, e.gstep - 1);
}

TEST_F(ActorProtocol, StalenessOneOverlapsTheNextStepButNoFurther) {
  engine_script->hold_training = true;
  start(grpo_stage(3, 2, 4, 1));
  // Step 1 trains (held); step 2's rollouts ran meanwhile; step 3 has not started.
  ASSERT_EQ(engine_script->trained.size(), 1u);
  EXPECT_EQ(engine_script->generated, 16);                    // steps 1 and 2, nothing of step 3
  EXPECT_GT(engine_script->generated_during_training[0], 0);  // overlapping the training step
  for (int i = 0; i < 3; ++i) release();
  EXPECT_TRUE(heard->ok) << heard->text;
  EXPECT_EQ(engine_script->generated, 24);
  // Step 2 trained on episodes one version old: inside the bound, so kept.
  for (const EpisodeRecord& e : store->episodes())
    if (e.gstep == 2) {
      EXPECT_EQ(e.weight_version, 0);
    }
  bool saw_lag = false;
  for (const auto& m : store->metrics())
    if (m.name == "version_lag" && m.value == 1) saw_lag = true;
  EXPECT_TRUE(saw_lag);
  for (const auto& m : store->metrics())
    if (m.name == "stale_dropped") {
      EXPECT_EQ(m.value, 0);
    }
}

TEST_F(ActorProtocol, AFailedRolloutIsRetriedThenRecordedAsDropped) {
  reward_script->fail_first = true;
  reward_script->always_fail_task = "\"seed\":2,";
  start(grpo_stage(1, 4, 2, 0));
  ASSERT_TRUE(heard->done);
  EXPECT_TRUE(heard->ok) << heard->text;
  int failed = 0, ok = 0;
  for (const EpisodeRecord& e : store->episodes()) {
    if (e.status == "failed") {
      ++failed;
      EXPECT_NE(e.reason.find("scripted reward failure"), std::string::npos) << e.reason;
    } else {
      ++ok;
    }
  }
  EXPECT_EQ(failed, 2);  // the task whose reward always fails: both samples dropped
  EXPECT_EQ(ok, 6);      // the others failed once and succeeded on the retry
  json events = store->events();
  int retries = 0, drops = 0;
  for (const json& e : events) {
    retries += e["kind"] == "rollout_retry";
    drops += e["kind"] == "episode_dropped";
  }
  EXPECT_EQ(retries, 5);  // the first verification of each task, and both of the bad task's
  EXPECT_EQ(drops, 2);
  // Dropped episodes are never trained on.
  ASSERT_EQ(engine_script->trained.size(), 1u);
  const TrainRequest& r = engine_script->trained[0];
  int kept = 0;
  for (uint8_t k : r.keep) kept += k;
  EXPECT_LE(kept, 6);
}

TEST_F(ActorProtocol, TheAdaptiveSamplerFavoursTaskSetsWithALearningSignal) {
  // Countdown groups are always all solved (no signal); arithmetic groups are mixed (the scripted
  // engine answers right for odd sampling seeds).
  reward_script->always_pass_task = "\"family\":\"countdown\"";
  start(adaptive_stage(12, 4, 0));
  ASSERT_TRUE(heard->done);
  EXPECT_TRUE(heard->ok) << heard->text;
  int early_countdown = 0, late_arithmetic = 0, late = 0;
  for (const auto& [gstep, groups] : prompts_by_step())
    for (const auto& [g, id] : groups) {
      bool countdown = id.rfind("countdown-", 0) == 0;
      if (gstep <= 2) early_countdown += countdown;
      if (gstep > 6) {
        ++late;
        late_arithmetic += !countdown;
      }
    }
  EXPECT_GT(early_countdown, 0) << "both task sets are tried at first";
  EXPECT_EQ(late, 24);
  EXPECT_GE(late_arithmetic, 20) << "later steps favour the task set with a signal";
  double p_countdown = -1;
  for (const auto& m : store->metrics())
    if (m.gstep == 12 && m.name == "sampler_p_countdown_d1") p_countdown = m.value;
  EXPECT_GE(p_countdown, 0.05);  // the explore share: never starved
  EXPECT_LT(p_countdown, 0.15);
}

TEST_F(ActorProtocol, AResumedStageDrawsTheSamePromptsAsAnUninterruptedOne) {
  reward_script->always_pass_task = "\"family\":\"countdown\"";
  start(adaptive_stage(6, 3, 1));
  ASSERT_TRUE(heard->ok) << heard->text;
  auto uninterrupted = prompts_by_step();
  ASSERT_EQ(uninterrupted.size(), 6u);
  // The resume state written with step 3: the sampler and the prompts of step 4, already drawn
  // (staleness 1 launched its rollouts while step 3 trained).
  json state;
  {
    auto q = store->db().prepare("SELECT state FROM steps WHERE gstep = 3");
    ASSERT_TRUE(q.step());
    state = json::parse(q.text(0));
  }
  ASSERT_TRUE(state.contains("sampler")) << state.dump();
  EXPECT_FALSE(state["sampler"]["drawn"].empty()) << state.dump();

  store = RunStore::create((dir / "resumed.sqlite").string(), "t", json::object());
  heard = std::make_shared<Listener>();
  reward_script->seen.clear();
  auto ctx = adaptive_stage(6, 3, 1);
  ctx->start_step = 3;
  ctx->weight_version = state["weight_version"].get<int64_t>();
  ctx->sampler_state = state["sampler"];
  start(ctx);
  ASSERT_TRUE(heard->ok) << heard->text;
  auto resumed = prompts_by_step();
  ASSERT_EQ(resumed.size(), 3u);
  for (int64_t g = 4; g <= 6; ++g) EXPECT_EQ(resumed[g], uninterrupted[g]) << "step " << g;
}

TEST_F(ActorProtocol, AToolThatNeverAnswersBecomesAnErrorTheModelReads) {
  engine_script->call_tool = true;
  start(grpo_stage(1, 1, 2, 0), /*silent_tools=*/true);
  EXPECT_FALSE(heard->done);  // waiting on the tool
  EXPECT_TRUE(sched.has_pending_timeout());
  sched.trigger_timeouts();
  sched.run();
  ASSERT_TRUE(heard->done);
  EXPECT_TRUE(heard->ok) << heard->text;
  auto eps = store->episodes();
  ASSERT_EQ(eps.size(), 2u);
  for (const EpisodeRecord& e : eps) {
    EXPECT_EQ(e.tool_calls, 1);
    std::string text = e.messages.dump();
    EXPECT_NE(text.find("the tool did not answer"), std::string::npos) << text;
    EXPECT_EQ(e.status, "ok");
  }
}

}  // namespace
}  // namespace shoal::actors
