// The collector (collector.h).
#include "actors/collector.h"

#include <deque>
#include <map>

#include "base/log.h"
#include "tasks/task.h"

namespace shoal::actors {

using nlohmann::json;

EpisodeResult failed_episode(const EpisodeJob& job, const std::string& reason) {
  EpisodeResult r;
  r.index = job.index;
  EpisodeRecord& e = r.record;
  e.gstep = job.gstep;
  e.stage = job.stage;
  e.task_id = job.task_id;
  e.group = job.group;
  e.sample = job.sample;
  e.status = "failed";
  e.reason = reason;
  e.messages = json::array();
  try {
    tasks::Task t = tasks::task_from_json(json::parse(job.task));
    e.family = t.family;
    e.difficulty = t.difficulty;
    e.messages = t.messages;
  } catch (const std::exception&) {
  }
  return r;
}

namespace {

struct Collection {
  caf::response_promise promise;
  std::vector<EpisodeResult> results;
  size_t remaining = 0;
};

struct CollectorState {
  std::map<int64_t, Collection> collections;
  std::deque<std::pair<int64_t, EpisodeJob>> queue;
  std::map<caf::actor_addr, std::pair<int64_t, EpisodeJob>> running;
  int64_t next_id = 0;
};

}  // namespace

caf::behavior collector_actor(caf::event_based_actor* self, RolloutDeps deps,
                              CollectorConfig config, caf::actor events) {
  auto st = std::make_shared<CollectorState>();
  auto record_event = [self, events](const std::string& kind, const std::string& message,
                                     const json& data) {
    log::warn("{}", message);
    if (events) self->send(events, event_atom::value, kind, message, data.dump());
  };
  auto deliver = std::make_shared<std::function<void(int64_t, EpisodeResult)>>();
  auto dispatch = std::make_shared<std::function<void()>>();
  // A rollout ended without a result: retry or record the failure.
  auto crashed = [st, deliver, dispatch, record_event, config](int64_t cid, EpisodeJob job,
                                                               const std::string& why) {
    json data = {{"task_id", job.task_id}, {"stage", job.stage},   {"gstep", job.gstep},
                 {"group", job.group},     {"sample", job.sample}, {"attempt", job.attempt + 1}};
    if (job.attempt + 1 < config.max_attempts) {
      record_event("rollout_retry",
                   fmt::format("rollout of task {} failed ({}); retrying", job.task_id, why), data);
      ++job.attempt;
      st->queue.emplace_front(cid, std::move(job));
    } else {
      record_event("episode_dropped",
                   fmt::format("rollout of task {} failed {} times ({}); recorded as failed",
                               job.task_id, job.attempt + 1, why),
                   data);
      (*deliver)(cid, failed_episode(job, "rollout failed: " + why));
    }
    (*dispatch)();
  };
  *deliver = [st](int64_t cid, EpisodeResult r) {
    auto it = st->collections.find(cid);
    if (it == st->collections.end()) return;
    Collection& c = it->second;
    size_t at = static_cast<size_t>(r.index);
    c.results[at] = std::move(r);
    if (--c.remaining == 0) {
      c.promise.deliver(std::move(c.results));
      st->collections.erase(it);
    }
  };
  std::function<void()>* again = dispatch.get();  // kept alive by the behaviour's captures
  *dispatch = [self, st, deps, config, deliver, crashed, again] {
    while (static_cast<int64_t>(st->running.size()) < config.max_in_flight && !st->queue.empty()) {
      auto [cid, job] = std::move(st->queue.front());
      st->queue.pop_front();
      caf::actor r = self->spawn<caf::monitored>(rollout_actor, deps);
      st->running.emplace(r.address(), std::make_pair(cid, job));
      self->request(r, caf::infinite, run_atom::value, job)
          .then(
              [st, deliver, again, r, cid](EpisodeResult& result) {
                st->running.erase(r.address());
                (*deliver)(cid, std::move(result));
                (*again)();
              },
              [self, st, crashed, r](caf::error& err) {
                auto it = st->running.find(r.address());
                if (it == st->running.end()) return;
                auto [cid, job] = std::move(it->second);
                st->running.erase(it);
                crashed(cid, std::move(job), self->system().render(err));
              });
    }
  };
  self->attach_functor([deliver, dispatch] {
    *deliver = nullptr;  // the closures refer to each other: break the cycle on exit
    *dispatch = nullptr;
  });
  self->set_down_handler([self, st, crashed](caf::down_msg& m) {
    auto it = st->running.find(m.source);
    if (it == st->running.end()) return;  // finished normally, result already taken
    auto [cid, job] = std::move(it->second);
    st->running.erase(it);
    crashed(
        cid, std::move(job),
        m.reason ? self->system().render(m.reason) : std::string("it stopped without a result"));
  });
  return {
      [self, st, dispatch](collect_atom, std::vector<EpisodeJob>& jobs) -> caf::response_promise {
        auto promise = self->make_response_promise();
        if (jobs.empty()) {
          promise.deliver(std::vector<EpisodeResult>{});
          return promise;
        }
        int64_t cid = st->next_id++;
        Collection& c = st->collections[cid];
        c.promise = promise;
        c.results.resize(jobs.size());
        c.remaining = jobs.size();
        for (size_t i = 0; i < jobs.size(); ++i) {
          jobs[i].index = static_cast<int64_t>(i);
          st->queue.emplace_back(cid, std::move(jobs[i]));
        }
        (*dispatch)();
        return promise;
      },
  };
}

}  // namespace shoal::actors
