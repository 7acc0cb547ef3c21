// The engine owner (engine_owner.h).
#include "actors/engine_owner.h"

#include <deque>
#include <functional>
#include <map>

#include "base/error.h"
#include "base/log.h"

namespace shoal::actors {

namespace {

struct Running {
  std::shared_ptr<RequestHandle> handle;
  caf::typed_response_promise<GenOutput> promise;
};

struct Held {
  std::vector<int32_t> context;
  SamplingParams sampling;
  caf::typed_response_promise<GenOutput> promise;
};

struct OwnerState {
  std::shared_ptr<Policy> policy;
  std::map<int64_t, Running> running;
  std::deque<Held> held;                        // arrived while exclusive work was waiting
  std::deque<std::function<void()>> exclusive;  // training steps, save, load
  int64_t next_id = 0;
  static inline const char* name = "engine_owner";
};

using OwnerPtr = engine_actor::stateful_pointer<OwnerState>;

caf::error error_of(const std::exception& e) {
  return caf::make_error(caf::sec::runtime_error, std::string(e.what()));
}

void start_generation(OwnerPtr self, Held h) {
  auto& st = self->state;
  int64_t id = st.next_id++;
  caf::weak_actor_ptr weak = caf::actor_cast<caf::weak_actor_ptr>(self);
  try {
    auto handle = st.policy->submit(h.context, h.sampling, [weak, id] {
      if (auto strong = caf::actor_cast<caf::strong_actor_ptr>(weak))
        caf::anon_send(caf::actor_cast<engine_actor>(strong), gen_done_atom::value, id);
    });
    st.running.emplace(id, Running{std::move(handle), std::move(h.promise)});
  } catch (const std::exception& e) {
    h.promise.deliver(error_of(e));
  }
}

// Runs exclusive work once nothing is generating; then lets held generations in.
void drain(OwnerPtr self) {
  auto& st = self->state;
  if (!st.running.empty()) return;
  if (!st.exclusive.empty()) {
    st.policy->pause_generation();
    while (!st.exclusive.empty()) {
      auto work = std::move(st.exclusive.front());
      st.exclusive.pop_front();
      work();
    }
    st.policy->resume_generation();
  }
  while (!st.held.empty()) {
    Held h = std::move(st.held.front());
    st.held.pop_front();
    start_generation(self, std::move(h));
  }
}

StepMetrics train(Policy& policy, const TrainRequest& r) {
  nlohmann::json o = nlohmann::json::parse(r.options);
  Metrics m;
  if (r.kind == "sft") {
    m = policy.sft_step(r.samples, r.lr);
  } else if (r.kind == "dpo") {
    rl::DpoConfig c;
    c.beta = o.value("beta", c.beta);
    c.variant =
        o.value("variant", "sigmoid") == "ipo" ? rl::DpoVariant::ipo : rl::DpoVariant::sigmoid;
    c.label_smoothing = o.value("label_smoothing", 0.0);
    m = policy.dpo_step(r.samples, c, r.lr);
  } else if (r.kind == "grpo") {
    SHOAL_CHECK(r.logprobs.size() == r.samples.size() && r.advantages.size() == r.samples.size() &&
                    r.keep.size() == r.samples.size(),
                "grpo step: {} samples but {} log-prob rows, {} advantages, {} keep flags",
                r.samples.size(), r.logprobs.size(), r.advantages.size(), r.keep.size());
    std::vector<GrpoSample> samples;
    for (size_t i = 0; i < r.samples.size(); ++i)
      samples.push_back({r.samples[i], r.logprobs[i], r.advantages[i], r.keep[i] != 0});
    rl::GrpoConfig c;
    c.clip_low = o.value("clip_low", c.clip_low);
    c.clip_high = o.value("clip_high", c.clip_high);
    std::string agg = o.value("aggregation", "token_mean");
    c.aggregation = agg == "sequence_mean"     ? rl::Aggregation::sequence_mean
                    : agg == "length_unbiased" ? rl::Aggregation::length_unbiased
                                               : rl::Aggregation::token_mean;
    std::string kl = o.value("kl", "none");
    c.kl = kl == "k1"            ? rl::KlEstimator::k1
           : kl == "k2"          ? rl::KlEstimator::k2
           : kl == "k3"          ? rl::KlEstimator::k3
           : kl == "k3_unbiased" ? rl::KlEstimator::k3_unbiased
                                 : rl::KlEstimator::none;
    c.kl_coef = o.value("kl_coef", 0.0);
    m = policy.grpo_step(samples, c, r.lr, o.value("surrogate_gain", false));
  } else {
    SHOAL_FAIL("unknown training step kind '{}'", r.kind);
  }
  m["weight_version"] = static_cast<double>(policy.weight_version());
  return StepMetrics{std::move(m)};
}

}  // namespace

engine_actor spawn_engine_owner(caf::actor_system& sys, std::shared_ptr<Policy> policy) {
  // The policy goes in as a spawn argument, not a capture: CAF 0.17 dereferences a null argument
  // tuple for argument-less spawns (undefined behaviour that UBSan stops at).
  auto init = [](OwnerPtr self, std::shared_ptr<Policy> policy) -> engine_actor::behavior_type {
    self->state.policy = policy;
    // No exit functor clears running/held: CAF 0.17 destroys the state (dropping the handles and
    // promises) in on_exit, before attached functors run, so one touching the state would free it
    // twice (seen when an interrupted `shoal eval` stopped the owner with generations in flight).
    // The scheduler's completion callbacks hold only a weak reference to the actor.
    return {
        [self](generate_atom, std::vector<int32_t>& context,
               SamplingParams& sampling) -> caf::result<GenOutput> {
          auto promise = self->make_response_promise<GenOutput>();
          Held h{std::move(context), std::move(sampling), promise};
          if (self->state.exclusive.empty())
            start_generation(self, std::move(h));
          else
            self->state.held.push_back(std::move(h));
          return promise;
        },
        [self](gen_done_atom, int64_t id) {
          auto& st = self->state;
          auto it = st.running.find(id);
          if (it == st.running.end()) return;
          try {
            it->second.promise.deliver(st.policy->output(*it->second.handle));
          } catch (const std::exception& e) {
            it->second.promise.deliver(error_of(e));
          }
          st.running.erase(it);
          drain(self);
        },
        [self](train_atom, TrainRequest& r) -> caf::result<StepMetrics> {
          auto promise = self->make_response_promise<StepMetrics>();
          self->state.exclusive.push_back([self, promise, r = std::move(r)]() mutable {
            try {
              promise.deliver(train(*self->state.policy, r));
            } catch (const std::exception& e) {
              log::warn("training step failed: {}", e.what());
              promise.deliver(error_of(e));
            }
          });
          drain(self);
          return promise;
        },
        [self](save_atom, const std::string& dir) -> caf::result<int64_t> {
          auto promise = self->make_response_promise<int64_t>();
          self->state.exclusive.push_back([self, promise, dir]() mutable {
            try {
              self->state.policy->save(dir);
              promise.deliver(self->state.policy->weight_version());
            } catch (const std::exception& e) {
              promise.deliver(error_of(e));
            }
          });
          drain(self);
          return promise;
        },
        [self](reset_atom) -> caf::result<int64_t> {
          auto promise = self->make_response_promise<int64_t>();
          self->state.exclusive.push_back([self, promise]() mutable {
            self->state.policy->reset_optimizer();
            promise.deliver(self->state.policy->weight_version());
          });
          drain(self);
          return promise;
        },
        [self](load_atom, const std::string& dir) -> caf::result<int64_t> {
          auto promise = self->make_response_promise<int64_t>();
          self->state.exclusive.push_back([self, promise, dir]() mutable {
            try {
              self->state.policy->load(dir);
              promise.deliver(self->state.policy->weight_version());
            } catch (const std::exception& e) {
              promise.deliver(error_of(e));
            }
          });
          drain(self);
          return promise;
        },
    };
  };
  return sys.spawn<caf::detached>(init, std::move(policy));
}

}  // namespace shoal::actors
