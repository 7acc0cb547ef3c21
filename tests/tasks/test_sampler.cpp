// The difficulty-adapting sampler (tasks/sampler.h): buckets whose groups are all solved or all
// failed are drawn far less than a mixed one but never starve, draws are deterministic in the
// seed and the recorded results, the state survives a JSON round trip mid-run (the restored
// sampler continues with the same draws), and bad buckets, results or states are clear errors.
#include <gtest/gtest.h>

#include <map>

#include "base/error.h"
#include "tasks/sampler.h"

namespace shoal::tasks {
namespace {

const std::vector<Bucket> kBuckets = {{"countdown", 1}, {"arithmetic", 3}, {"zebra", 5}};

// A fake policy: countdown d1 always solved, arithmetic d3 half the time, zebra d5 never.
std::vector<double> group_for(const Bucket& b, int draw) {
  if (b.family == "countdown") return std::vector<double>(8, 1.0);
  if (b.family == "zebra") return std::vector<double>(8, 0.0);
  std::vector<double> g(8, 0.0);
  for (int i = 0; i < 3 + draw % 3; ++i) g[static_cast<size_t>(i)] = 1.0;
  return g;
}

std::vector<size_t> run(DifficultySampler& s, int draws, int first = 0) {
  std::vector<size_t> out;
  for (int i = 0; i < draws; ++i) {
    auto d = s.next();
    out.push_back(d.index);
    s.record(d.bucket, group_for(d.bucket, first + i));
  }
  return out;
}

TEST(TasksSampler, MixedBucketsAreFavouredAndNoneStarves) {
  DifficultySampler s(kBuckets, 42);
  run(s, 200);  // long enough for the moving averages to settle
  std::map<size_t, int> n;
  for (size_t i : run(s, 3000, 200)) ++n[i];
  EXPECT_GT(n[1], 4 * n[0]) << "mixed vs all-pass";
  EXPECT_GT(n[1], 4 * n[2]) << "mixed vs all-fail";
  // Exploration: each bucket gets at least about explore / buckets of the draws.
  EXPECT_GT(n[0], 3000 * 0.1 / 3 * 0.6);
  EXPECT_GT(n[2], 3000 * 0.1 / 3 * 0.6);
  const auto& st = s.stats();
  EXPECT_NEAR(st[0].pass_rate, 1.0, 1e-9);
  EXPECT_NEAR(st[2].pass_rate, 0.0, 1e-9);
  EXPECT_GT(st[1].pass_rate, 0.3);
  EXPECT_LT(st[1].pass_rate, 0.7);
  EXPECT_LT(st[0].signal, 0.01);
  EXPECT_GT(st[1].signal, 0.99);
  auto p = s.probabilities();
  EXPECT_NEAR(p[0] + p[1] + p[2], 1.0, 1e-12);
  EXPECT_GE(p[0], 0.1 / 3);
  // A bucket's draws give it fresh seeds.
  EXPECT_EQ(st[0].draws + st[1].draws + st[2].draws, 3200);
}

TEST(TasksSampler, UntriedBucketsStartEqualAndSeedsCountUp) {
  DifficultySampler s(DifficultySampler::every_difficulty({"countdown", "zebra"}), 1);
  EXPECT_EQ(s.stats().size(), 10u);
  for (double p : s.probabilities()) EXPECT_NEAR(p, 0.1, 1e-12);
  std::map<size_t, uint64_t> next_seed;
  for (int i = 0; i < 100; ++i) {
    auto d = s.next();
    EXPECT_EQ(d.seed, next_seed[d.index]++);
    EXPECT_EQ(d.bucket, s.stats()[d.index].bucket);
  }
}

TEST(TasksSampler, DeterministicInSeedAndResults) {
  DifficultySampler a(kBuckets, 7), b(kBuckets, 7), c(kBuckets, 8);
  auto ra = run(a, 500), rb = run(b, 500), rc = run(c, 500);
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
  EXPECT_EQ(a.to_json(), b.to_json());
}

TEST(TasksSampler, StateRoundTripsAndResumes) {
  DifficultySampler a(kBuckets, 99, {0.7, 0.2});
  run(a, 333);
  json saved = json::parse(a.to_json().dump());  // through text, as a resume would
  DifficultySampler b = DifficultySampler::from_json(saved);
  EXPECT_EQ(b.to_json(), a.to_json());
  EXPECT_EQ(b.options().decay, 0.7);
  EXPECT_EQ(run(a, 400, 333), run(b, 400, 333));
  EXPECT_EQ(a.to_json(), b.to_json());
}

TEST(TasksSampler, BadInputsAreClearErrors) {
  EXPECT_THROW(DifficultySampler({}, 1), Error);
  EXPECT_THROW(DifficultySampler({{"chess", 1}}, 1), Error);
  EXPECT_THROW(DifficultySampler({{"zebra", 0}}, 1), Error);
  EXPECT_THROW(DifficultySampler({{"zebra", 2}, {"zebra", 2}}, 1), Error);
  EXPECT_THROW(DifficultySampler(kBuckets, 1, {1.0, 0.1}), Error);
  EXPECT_THROW(DifficultySampler(kBuckets, 1, {0.5, -0.1}), Error);
  DifficultySampler s(kBuckets, 1);
  EXPECT_THROW(s.record({"zebra", 1}, {1.0}), Error);
  EXPECT_THROW(s.record({"zebra", 5}, {}), Error);
  json good = s.to_json();
  auto broken = [&](const std::string& pointer, json value) {
    json j = good;
    j[json::json_pointer(pointer)] = std::move(value);
    return j;
  };
  EXPECT_THROW(DifficultySampler::from_json(json::object()), Error);
  EXPECT_THROW(DifficultySampler::from_json(broken("/kind", "other/1")), Error);
  EXPECT_THROW(DifficultySampler::from_json(broken("/draws", -1)), Error);
  EXPECT_THROW(DifficultySampler::from_json(broken("/buckets/0/signal", 2.0)), Error);
  EXPECT_THROW(DifficultySampler::from_json(broken("/buckets/1/family", "chess")), Error);
  EXPECT_THROW(DifficultySampler::from_json(broken("/buckets/1/pass_rate", "high")), Error);
  EXPECT_THROW(DifficultySampler::from_json(broken("/options/decay", 0)), Error);
  try {
    json j = good;
    j["buckets"][2].erase("groups");
    DifficultySampler::from_json(j);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("buckets[2]"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("groups"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace shoal::tasks
