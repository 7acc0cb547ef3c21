// The run store: steps with their episodes are written whole or not at all, read back exactly,
// and truncated on resume so no step is duplicated.
#include <gtest/gtest.h>

#include <filesystem>

#include "actors/run_store.h"
#include "base/error.h"

namespace shoal::actors {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class RunStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("shoal-run-store-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "run.sqlite").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  static EpisodeRecord episode(int64_t gstep, int i) {
    EpisodeRecord e;
    e.gstep = gstep;
    e.stage = "grpo";
    e.task_id = "arith-" + std::to_string(i);
    e.family = "arithmetic";
    e.difficulty = 2;
    e.group = i / 2;
    e.sample = i % 2;
    e.weight_version = gstep - 1;
    e.tokens = {1, 2, 3, 4 + i};
    e.loss_mask = {0, 0, 1, 1};
    e.logprobs = {0, 0, -0.25f, -1.5f};
    e.messages = json::array({{{"role", "assistant"}, {"content", "ANSWER: 4"}}});
    e.reward = i % 2;
    e.components = {{"correct", i % 2}};
    e.reason = "checked";
    e.turns = 1;
    return e;
  }
  fs::path dir_;
  std::string path_;
};

TEST_F(RunStoreTest, StepsAndEpisodesRoundTrip) {
  {
    auto s = RunStore::create(path_, "r1", json{{"seed", 3}});
    StepRecord st;
    st.gstep = 1;
    st.stage = "grpo";
    st.stage_step = 1;
    st.metrics = {{"reward", 0.5}, {"loss", -0.1}, {"kl", std::nan("")}};
    st.episodes = {episode(1, 0), episode(1, 1)};
    st.state = {{"rng", "123"}};
    s->write_step(st);
    s->write_checkpoint({1, "grpo", 1, "runs/r1/checkpoints/step_1", {{"rng", "123"}}});
    s->event("note", "hello");
  }
  auto s = RunStore::open(path_, /*read_only=*/true);
  EXPECT_EQ(s->name(), "r1");
  EXPECT_EQ(s->config()["seed"], 3);
  auto eps = s->episodes();
  ASSERT_EQ(eps.size(), 2u);
  EXPECT_EQ(eps[1].tokens, std::vector<int32_t>({1, 2, 3, 5}));
  EXPECT_EQ(eps[1].loss_mask, std::vector<uint8_t>({0, 0, 1, 1}));
  EXPECT_EQ(eps[1].logprobs, std::vector<float>({0, 0, -0.25f, -1.5f}));
  EXPECT_EQ(eps[1].messages[0]["content"], "ANSWER: 4");
  EXPECT_EQ(eps[1].reward, 1);
  EXPECT_EQ(eps[1].weight_version, 0);
  auto m = s->metrics();
  ASSERT_EQ(m.size(), 3u);
  EXPECT_TRUE(std::isnan(m[0].value));  // "kl": non-finite is stored as NULL
  EXPECT_EQ(m[2].name, "reward");
  EXPECT_EQ(m[2].value, 0.5);
  auto ck = s->last_checkpoint();
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->state["rng"], "123");
  EXPECT_EQ(s->summary()["episodes"], 2);
}

TEST_F(RunStoreTest, AFailedStepLeavesNothingBehind) {
  auto s = RunStore::create(path_, "r", json::object());
  StepRecord st;
  st.gstep = 1;
  st.stage = "grpo";
  st.metrics = {{"reward", 1}};
  st.episodes = {episode(1, 0), episode(1, 1)};
  st.episodes[1].logprobs.pop_back();  // malformed: the write must fail as a whole
  EXPECT_THROW(s->write_step(st), Error);
  EXPECT_EQ(s->episode_count(), 0);
  EXPECT_TRUE(s->metrics().empty());
  // Writing the same step twice is refused (no duplicated steps).
  st.episodes[1] = episode(1, 1);
  s->write_step(st);
  EXPECT_THROW(s->write_step(st), Error);
  EXPECT_EQ(s->episode_count(), 2);
}

TEST_F(RunStoreTest, TruncateAfterDropsLaterStepsForResume) {
  auto s = RunStore::create(path_, "r", json::object());
  for (int64_t g = 1; g <= 4; ++g) {
    StepRecord st;
    st.gstep = g;
    st.stage = "grpo";
    st.stage_step = g;
    st.metrics = {{"reward", double(g)}};
    st.episodes = {episode(g, 0)};
    s->write_step(st);
    if (g == 2) s->write_checkpoint({2, "grpo", 2, "p2", json::object()});
    if (g == 3) s->write_eval("heldout", "after grpo", 3, {{"pass@1", 0.5}});
  }
  s->truncate_after(2);
  EXPECT_EQ(s->episode_count(), 2);
  EXPECT_EQ(s->metrics().size(), 2u);
  EXPECT_TRUE(s->evals().empty());
  EXPECT_EQ(s->last_checkpoint()->gstep, 2);
  EXPECT_EQ(s->events().back()["kind"], "resume");
  // The redone step 3 can be written again.
  StepRecord st;
  st.gstep = 3;
  st.stage = "grpo";
  s->write_step(st);
}

// The reads behind `shoal runs` and the report: per-stage step ranges and episode means, the
// episodes of a stage's last step from best to worst, and one episode's summary.
TEST_F(RunStoreTest, StageAggregatesAndEpisodeSummaries) {
  {
    auto s = RunStore::create(path_, "r1", json::object());
    for (int64_t g = 1; g <= 3; ++g) {
      StepRecord st;
      st.gstep = g;
      st.stage = g == 1 ? "sft" : "grpo";
      st.stage_step = g == 1 ? 1 : g - 1;
      st.metrics = {{"loss", 1.0}};
      if (g > 1) st.episodes = {episode(g, 0), episode(g, 1), episode(g, 2)};
      s->write_step(st);
    }
    EpisodeRecord e = episode(3, 4);
    e.stage = "eval:arith@end";
    e.status = "truncated";
    e.invalid_tool_calls = 2;
    s->write_episodes({e});
  }
  auto s = RunStore::open(path_, /*read_only=*/true);
  EXPECT_EQ(s->meta_value("name"), "r1");
  EXPECT_EQ(s->meta_value("no such key"), "");

  auto steps = s->stage_steps();
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].stage, "sft");
  EXPECT_EQ(steps[0].steps, 1);
  EXPECT_EQ(steps[1].stage, "grpo");
  EXPECT_EQ(steps[1].steps, 2);
  EXPECT_EQ(steps[1].first_gstep, 2);
  EXPECT_EQ(steps[1].last_gstep, 3);
  EXPECT_LE(steps[0].first_time, steps[1].last_time);

  auto eps = s->stage_episodes();
  ASSERT_EQ(eps.size(), 2u);
  EXPECT_EQ(eps[0].stage, "grpo");
  EXPECT_EQ(eps[0].count, 6);
  EXPECT_DOUBLE_EQ(eps[0].mean_reward, 1.0 / 3);  // rewards 0, 1, 0 per step
  EXPECT_DOUBLE_EQ(eps[0].mean_tokens, 4);
  EXPECT_EQ(eps[0].not_ok, 0);
  EXPECT_EQ(eps[1].stage, "eval:arith@end");
  EXPECT_EQ(eps[1].not_ok, 1);
  EXPECT_EQ(eps[1].invalid_tool_calls, 2);

  // Step 3's episodes (ids 4, 5, 6), the rewarded one first, then by id.
  auto ids = s->last_step_episode_ids("grpo");
  ASSERT_EQ(ids.size(), 3u);
  EpisodeSummary best = s->episode_summary(ids[0]);
  EXPECT_EQ(best.gstep, 3);
  EXPECT_EQ(best.reward, 1);
  EXPECT_EQ(best.task_id, "arith-1");
  EXPECT_EQ(best.tokens, 4);
  EXPECT_EQ(best.generated_tokens, 2);
  EXPECT_EQ(best.messages[0]["content"], "ANSWER: 4");
  EXPECT_EQ(best.components["correct"], 1);
  EXPECT_LT(ids[1], ids[2]);
  EXPECT_EQ(s->episode_summary(ids[1]).task_id, "arith-0");
  EXPECT_TRUE(s->last_step_episode_ids("no such stage").empty());
  EXPECT_THROW(s->episode_summary(9999), Error);
}

TEST_F(RunStoreTest, BadPathsAreClearErrors) {
  RunStore::create(path_, "r", json::object());
  EXPECT_THROW(RunStore::create(path_, "r", json::object()), Error);  // exists
  EXPECT_THROW(RunStore::open((dir_ / "none.sqlite").string()), Error);
  std::string junk = (dir_ / "junk.sqlite").string();
  { SqliteDb db(junk); }
  try {
    RunStore::open(junk);
    FAIL() << "opened a database that is not a run store";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("not a shoal run store"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace shoal::actors
