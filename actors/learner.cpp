// The learner (learner.h).
#include "actors/learner.h"

#include <map>

#include "base/error.h"
#include "rl/grpo.h"

namespace shoal::actors {

using nlohmann::json;

TrainRequest grpo_request(const GrpoBatch& batch, StepMetrics& stats) {
  json o = json::parse(batch.options);
  rl::AdvantageConfig ac;
  std::string mode = o.value("advantage", "mean_centred");
  ac.mode = mode == "mean_std" ? rl::AdvantageMode::mean_std
            : mode == "rloo"   ? rl::AdvantageMode::rloo
                               : rl::AdvantageMode::mean_centred;
  ac.filter_equal = o.value("filter_equal", false);
  std::vector<double> rewards;
  std::vector<int64_t> groups, lengths;
  std::map<int64_t, int64_t> group_size;
  for (const EpisodeRecord& e : batch.episodes) {
    rewards.push_back(e.reward);
    groups.push_back(e.group);
    ++group_size[e.group];
  }
  // A group left with one member (its siblings failed) has no baseline: it is not trained on.
  rl::Advantages adv = rl::compute_advantages(rewards, groups, lengths, ac);
  TrainRequest r;
  r.kind = "grpo";
  r.lr = batch.lr;
  r.options = batch.options;
  int64_t kept = 0, signal_groups = 0;
  std::map<int64_t, std::pair<double, double>> minmax;
  for (size_t i = 0; i < batch.episodes.size(); ++i) {
    const EpisodeRecord& e = batch.episodes[i];
    auto [it, fresh] = minmax.try_emplace(e.group, e.reward, e.reward);
    if (!fresh) {
      it->second.first = std::min(it->second.first, e.reward);
      it->second.second = std::max(it->second.second, e.reward);
    }
    bool usable = e.status != "failed" && !e.tokens.empty() && group_size[e.group] >= 2;
    bool keep = usable && adv.keep[i] != 0;
    kept += keep;
    r.samples.push_back({e.tokens, e.loss_mask});
    r.logprobs.push_back(e.logprobs);
    r.advantages.push_back(keep ? adv.values[i] : 0.0);
    r.keep.push_back(keep ? 1 : 0);
  }
  for (auto& [g, mm] : minmax) signal_groups += mm.first != mm.second;
  // Failed episodes have no tokens: give them a one-token placeholder that is never trained on.
  for (auto& s : r.samples)
    if (s.tokens.empty()) {
      s.tokens = {0, 0};
      s.loss_mask = {0, 0};
    }
  for (size_t i = 0; i < r.samples.size(); ++i)
    if (r.logprobs[i].size() != r.samples[i].tokens.size())
      r.logprobs[i].assign(r.samples[i].tokens.size(), 0.0f);
  stats.values["kept_samples"] = static_cast<double>(kept);
  stats.values["signal_groups"] = static_cast<double>(signal_groups);
  stats.values["groups"] = static_cast<double>(minmax.size());
  return r;
}

caf::behavior learner_actor(caf::event_based_actor* self, engine_actor engine) {
  return {
      [self, engine](train_atom, GrpoBatch& batch) -> caf::response_promise {
        auto promise = self->make_response_promise();
        StepMetrics stats;
        auto req = std::make_shared<TrainRequest>();
        try {
          *req = grpo_request(batch, stats);
        } catch (const std::exception& e) {
          promise.deliver(caf::make_error(caf::sec::runtime_error, std::string(e.what())));
          return promise;
        }
        if (stats.values["kept_samples"] == 0) {
          // No group has a learning signal: nothing to train; the weights stay as they are.
          stats.values["skipped"] = 1;
          promise.deliver(stats);
          return promise;
        }
        auto left = std::make_shared<int64_t>(std::max<int64_t>(batch.updates, 1));
        auto step = std::make_shared<std::function<void()>>();
        *step = [self, engine, req, left, stats, promise, step]() mutable {
          self->request(engine, caf::infinite, train_atom::value, *req)
              .then(
                  [step, left, stats, promise](StepMetrics& m) mutable {
                    if (--*left > 0) return (*step)();
                    for (auto& [k, v] : m.values) stats.values[k] = v;
                    promise.deliver(stats);
                    *step = nullptr;
                  },
                  [step, promise](caf::error& err) mutable {
                    promise.deliver(err);
                    *step = nullptr;
                  });
        };
        (*step)();
        return promise;
      },
  };
}

}  // namespace shoal::actors
