// Sweeps over consecutive seeds of every family at every difficulty, as `shoal tasks synth`
// meets them: every seed must generate, its demonstration must pass its verifier and its
// perturbation must fail (tasks::check_family; `shoal tasks check` runs the same over larger
// ranges by hand, docs/TASKS.md). The sandbox families (one or more sandbox calls per episode)
// are generated over the same range but demonstrated on fewer seeds, and skip that part where the
// sandbox cannot run code.
#include <gtest/gtest.h>

#include <sstream>

#include "base/error.h"
#include "tasks/registry.h"
#include "tasks/synth.h"
#include "tests/tasks/sandbox_probe.h"

namespace shoal::tasks {
namespace {

constexpr int kSeeds = 200;       // per family and difficulty, full check (in-process families)
constexpr int kSandboxSeeds = 3;  // per family and difficulty, full check (sandbox families)

// Runs `o` at every difficulty for family `f`; every seed must pass.
void expect_every_seed_passes(const Family& f, CheckOptions o) {
  o.family = f.name();
  for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d) {
    o.difficulty = d;
    CheckReport r = check_family(o);
    EXPECT_EQ(r.tried, o.seeds);
    std::ostringstream failures;
    for (const auto& x : r.failures)
      failures << "\n  seed " << x.seed << " (" << x.stage << "): " << x.message;
    EXPECT_EQ(r.failed, 0) << f.name() << " d" << d << ":" << failures.str();
  }
}

TEST(TasksSweep, EverySeedOfTheInProcessFamiliesPassesItsChecks) {
  CheckOptions o;
  o.seeds = kSeeds;
  for (const Family* f : families())
    if (!f->needs_sandbox()) expect_every_seed_passes(*f, o);
}

TEST(TasksSweep, EverySeedOfTheSandboxFamiliesGenerates) {
  CheckOptions o;
  o.seeds = kSeeds;
  o.generate_only = true;
  for (const Family* f : families())
    if (f->needs_sandbox()) expect_every_seed_passes(*f, o);
}

TEST(TasksSweep, SandboxFamiliesPassTheirChecks) {
  test_support::SandboxForTests sandbox = test_support::start_sandbox_for_tests();
  if (!sandbox.unusable.empty()) GTEST_SKIP() << sandbox.unusable;
  CheckOptions o;
  o.first_seed = 1000;
  o.seeds = kSandboxSeeds;
  o.sandbox = sandbox.client.get();
  for (const Family* f : families())
    if (f->needs_sandbox()) expect_every_seed_passes(*f, o);
}

// Seeds whose first bank world fitted no goal ("no bank goal fits the generated world" stopped
// synthesis there): they now draw another world, deterministically.
TEST(TasksSweep, ApiWorldSeedsWithoutAFittingGoalDrawAnotherWorld) {
  const Family& f = find_family("api_world");
  for (uint64_t seed : {6993u, 13841u}) {
    Task t = f.generate(seed, 1);
    EXPECT_EQ(to_json(t), to_json(f.generate(seed, 1))) << seed;
    EXPECT_FALSE(t.verifier["plan"].empty()) << seed;
    EXPECT_GE(t.metadata.value("world_draws", 1), 2) << seed;  // the first world fitted nothing
    Episode demo = f.demonstrate(t);
    Reward good = f.verify(t, demo);
    EXPECT_TRUE(good.solved()) << seed << ": " << good.reason;
    EXPECT_FALSE(f.verify(t, f.perturb(t, demo, seed)).solved()) << seed;
  }
  // A seed whose first world fits keeps it: no redraw is recorded.
  EXPECT_FALSE(f.generate(6992, 1).metadata.contains("world_draws"));
}

TEST(TasksSweep, FailuresAreCountedNotThrown) {
  // A sandbox nobody serves: every demonstration fails, each seed is recorded with its stage and
  // message, and the sweep goes on to the end.
  sandbox::Client nowhere({"ipc:///tmp/shoal-tasks-sweep-no-sandbox-here.sock", 200, 0});
  CheckOptions o;
  o.family = "program_synthesis";
  o.difficulty = 2;
  o.first_seed = 40;
  o.seeds = 3;
  o.keep = 2;
  o.sandbox = &nowhere;
  CheckReport r = check_family(o);
  EXPECT_EQ(r.tried, 3);
  EXPECT_EQ(r.failed, 3);
  ASSERT_EQ(r.failures.size(), 2u);
  EXPECT_EQ(r.failures[0].seed, 40u);
  EXPECT_EQ(r.failures[1].seed, 41u);
  EXPECT_EQ(r.failures[0].stage, "demonstrate");
  EXPECT_FALSE(r.failures[0].message.empty());

  // Bad options are errors, before any seed: a sandbox family without a sandbox, a difficulty
  // out of range, no seeds, an unknown family.
  o.sandbox = nullptr;
  EXPECT_THROW(check_family(o), Error);
  o.family = "arithmetic";
  o.difficulty = 6;
  EXPECT_THROW(check_family(o), Error);
  o.difficulty = 1;
  o.seeds = 0;
  EXPECT_THROW(check_family(o), Error);
  o.family = "no_such_family";
  o.seeds = 1;
  EXPECT_THROW(check_family(o), Error);
}

}  // namespace
}  // namespace shoal::tasks
