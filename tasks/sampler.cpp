// The difficulty-adapting sampler (sampler.h). Each draw uses a generator seeded from (seed, draw
// number), so the sequence depends only on the seed, the draws so far and the recorded results,
// and a sampler restored from JSON continues exactly where the saved one stopped.
#include "tasks/sampler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "base/error.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

constexpr const char* kStateKind = "shoal-difficulty-sampler/1";

const json& field(const json& j, const char* key, const std::string& where) {
  SHOAL_CHECK(j.is_object() && j.contains(key), "sampler state: {} has no field '{}'", where, key);
  return j[key];
}

double number(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  SHOAL_CHECK(v.is_number() && std::isfinite(v.get<double>()),
              "sampler state: {}.{} must be a number, found {}", where, key, v.dump());
  return v.get<double>();
}

int64_t count(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  SHOAL_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0,
              "sampler state: {}.{} must be a non-negative integer, found {}", where, key,
              v.dump());
  return v.get<int64_t>();
}

}  // namespace

DifficultySampler::DifficultySampler(std::vector<Bucket> buckets, uint64_t seed,
                                     SamplerOptions options)
    : seed_(seed), options_(options) {
  SHOAL_CHECK(!buckets.empty(), "sampler: no buckets to sample from");
  SHOAL_CHECK(options.decay > 0 && options.decay < 1, "sampler: decay {} is outside (0, 1)",
              options.decay);
  SHOAL_CHECK(options.explore >= 0 && options.explore <= 1, "sampler: explore {} is outside [0, 1]",
              options.explore);
  for (const Bucket& b : buckets) {
    find_family(b.family);  // throws naming the known families
    SHOAL_CHECK(b.difficulty >= kMinDifficulty && b.difficulty <= kMaxDifficulty,
                "sampler: difficulty {} of {} is outside [{}, {}]", b.difficulty, b.family,
                kMinDifficulty, kMaxDifficulty);
    for (const BucketStats& s : stats_)
      SHOAL_CHECK(!(s.bucket == b), "sampler: bucket {} d{} is listed twice", b.family,
                  b.difficulty);
    stats_.push_back({b});
  }
}

std::vector<Bucket> DifficultySampler::every_difficulty(const std::vector<std::string>& families) {
  std::vector<Bucket> out;
  for (const auto& f : families)
    for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d) out.push_back({f, d});
  return out;
}

std::vector<double> DifficultySampler::probabilities() const {
  double total = 0;
  for (const BucketStats& s : stats_) total += s.signal;
  double n = static_cast<double>(stats_.size());
  std::vector<double> p;
  for (const BucketStats& s : stats_)
    p.push_back(total > 0 ? options_.explore / n + (1 - options_.explore) * s.signal / total
                          : 1 / n);
  return p;
}

DifficultySampler::Draw DifficultySampler::next() {
  Rng rng(seed_ ^ (draws_ + 1) * 0x9e3779b97f4a7c15ULL);
  ++draws_;
  std::vector<double> p = probabilities();
  double r = rng.real();
  size_t i = 0;
  for (; i + 1 < p.size() && r >= p[i]; ++i) r -= p[i];
  BucketStats& s = stats_[i];
  return {s.bucket, i, static_cast<uint64_t>(s.draws++)};
}

size_t DifficultySampler::find(const Bucket& bucket) const {
  for (size_t i = 0; i < stats_.size(); ++i)
    if (stats_[i].bucket == bucket) return i;
  SHOAL_FAIL("sampler: no bucket {} d{}", bucket.family, bucket.difficulty);
}

void DifficultySampler::record(const Bucket& bucket, const std::vector<double>& rewards) {
  SHOAL_CHECK(!rewards.empty(), "sampler: an empty group for {} d{}", bucket.family,
              bucket.difficulty);
  BucketStats& s = stats_[find(bucket)];
  size_t solved = 0;
  for (double r : rewards) solved += r >= 1.0 ? 1 : 0;  // as Reward::solved()
  double rate = static_cast<double>(solved) / static_cast<double>(rewards.size());
  double mixed = solved > 0 && solved < rewards.size() ? 1.0 : 0.0;
  double d = options_.decay;
  s.pass_rate = s.groups == 0 ? rate : d * s.pass_rate + (1 - d) * rate;
  s.signal = d * s.signal + (1 - d) * mixed;
  ++s.groups;
}

json DifficultySampler::to_json() const {
  json buckets = json::array();
  for (const BucketStats& s : stats_)
    buckets.push_back({{"family", s.bucket.family},
                       {"difficulty", s.bucket.difficulty},
                       {"draws", s.draws},
                       {"groups", s.groups},
                       {"pass_rate", s.pass_rate},
                       {"signal", s.signal}});
  return {{"kind", kStateKind},
          {"seed", seed_},
          {"draws", draws_},
          {"options", {{"decay", options_.decay}, {"explore", options_.explore}}},
          {"buckets", buckets}};
}

DifficultySampler DifficultySampler::from_json(const json& j) {
  const json& kind = field(j, "kind", "the state");
  SHOAL_CHECK(kind == kStateKind, "sampler state: kind is {}, expected \"{}\"", kind.dump(),
              kStateKind);
  const json& seed = field(j, "seed", "the state");
  SHOAL_CHECK(seed.is_number_unsigned() || (seed.is_number_integer() && seed.get<int64_t>() >= 0),
              "sampler state: seed must be a non-negative integer, found {}", seed.dump());
  SamplerOptions o;
  const json& opt = field(j, "options", "the state");
  o.decay = number(opt, "decay", "options");
  o.explore = number(opt, "explore", "options");
  const json& list = field(j, "buckets", "the state");
  SHOAL_CHECK(list.is_array(), "sampler state: buckets must be a list");
  std::vector<Bucket> buckets;
  for (size_t i = 0; i < list.size(); ++i) {
    std::string where = fmt::format("buckets[{}]", i);
    const json& f = field(list[i], "family", where);
    SHOAL_CHECK(f.is_string(), "sampler state: {}.family must be a string", where);
    buckets.push_back(
        {f.get<std::string>(), static_cast<int>(count(list[i], "difficulty", where))});
  }
  DifficultySampler s(buckets, seed.get<uint64_t>(), o);
  s.draws_ = static_cast<uint64_t>(count(j, "draws", "the state"));
  for (size_t i = 0; i < list.size(); ++i) {
    std::string where = fmt::format("buckets[{}]", i);
    BucketStats& b = s.stats_[i];
    b.draws = count(list[i], "draws", where);
    b.groups = count(list[i], "groups", where);
    b.pass_rate = number(list[i], "pass_rate", where);
    b.signal = number(list[i], "signal", where);
    SHOAL_CHECK(b.pass_rate >= 0 && b.pass_rate <= 1 && b.signal >= 0 && b.signal <= 1,
                "sampler state: {} has a rate outside [0, 1]", where);
  }
  return s;
}

}  // namespace shoal::tasks
