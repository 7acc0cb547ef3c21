// The rollout actor (rollout.h).
#include "actors/rollout.h"

#include <chrono>

#include "actors/reward_actor.h"
#include "actors/tool_actor.h"
#include "base/error.h"
#include "tasks/registry.h"

namespace shoal::actors {

RolloutDeps sandbox_rollout_deps(caf::actor_system& sys, std::shared_ptr<const Tokenizer> tokenizer,
                                 engine_actor engine, const std::string& endpoint,
                                 int64_t tool_actors,
                                 std::shared_ptr<sandbox::Client> environment) {
  RolloutDeps deps;
  deps.tokenizer = std::move(tokenizer);
  deps.engine = std::move(engine);
  for (int64_t i = 0; i < tool_actors; ++i)
    deps.tools.push_back(spawn_tool_actor(sys, endpoint, 30000));
  deps.reward = spawn_reward_actor(sys, endpoint);
  deps.environment_sandbox = std::move(environment);
  return deps;
}

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Episode {
  RolloutDeps deps;
  EpisodeJob job;
  tasks::Task task;
  const tasks::Family* family = nullptr;
  std::unique_ptr<AgentSession> session;
  std::unique_ptr<tasks::Environment> env;
  caf::response_promise promise;
  std::vector<json> results;
  size_t outstanding = 0;
  EpisodeResult out;
};

void advance(caf::event_based_actor* self, const std::shared_ptr<Episode>& e);

void finish_tools(caf::event_based_actor* self, const std::shared_ptr<Episode>& e,
                  Clock::time_point t0) {
  e->out.seconds_tools += since(t0);
  e->session->on_tool_results(e->results);
  advance(self, e);
}

json parse_result(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const std::exception&) {
    return text;  // plain text output is what the model reads
  }
}

void run_tools(caf::event_based_actor* self, const std::shared_ptr<Episode>& e) {
  auto t0 = Clock::now();
  const std::vector<PendingCall>& calls = e->session->pending();
  e->results.assign(calls.size(), nullptr);
  e->outstanding = calls.size();
  for (size_t i = 0; i < calls.size(); ++i) {
    const PendingCall& c = calls[i];
    if (!e->deps.tools.empty() && e->family->runs_in_sandbox(c.name)) {
      const tool_actor& t =
          e->deps.tools[static_cast<size_t>(e->job.index + static_cast<int64_t>(i)) %
                        e->deps.tools.size()];
      self->request(t, std::chrono::milliseconds(e->deps.tool_timeout_ms), tool_atom::value,
                    ToolCallMsg{c.name, c.args.dump(), ""})
          .then(
              [self, e, i, t0](std::string& text) {
                e->results[i] = parse_result(text);
                if (--e->outstanding == 0) finish_tools(self, e, t0);
              },
              [self, e, i, t0](caf::error& err) {
                e->results[i] =
                    json{{"error", "the tool did not answer: " + self->system().render(err)}};
                if (--e->outstanding == 0) finish_tools(self, e, t0);
              });
    } else {
      e->results[i] = e->env->call(c.name, c.args);  // never throws for a bad call
      --e->outstanding;
    }
  }
  if (e->outstanding == 0) finish_tools(self, e, t0);
}

void score(caf::event_based_actor* self, const std::shared_ptr<Episode>& e) {
  AgentEpisode ep = e->session->take();
  EpisodeRecord& r = e->out.record;
  r.gstep = e->job.gstep;
  r.stage = e->job.stage;
  r.task_id = e->job.task_id;
  r.family = e->task.family;
  r.difficulty = e->task.difficulty;
  r.group = e->job.group;
  r.sample = e->job.sample;
  r.weight_version = ep.min_weight_version;
  r.tokens = std::move(ep.tokens);
  r.loss_mask = std::move(ep.loss_mask);
  r.logprobs = std::move(ep.logprobs);
  r.status = ep.status;
  r.turns = ep.turns;
  r.tool_calls = ep.tool_calls;
  r.invalid_tool_calls = ep.invalid_tool_calls;
  json conversation = ep.prompt;
  for (const json& m : ep.messages) conversation.push_back(m);
  r.messages = conversation;
  e->out.index = e->job.index;
  e->out.prompt_tokens = ep.prompt_tokens;
  int64_t generated = 0;
  for (uint8_t m : r.loss_mask) generated += m;
  e->out.generated_tokens = generated;
  auto t0 = Clock::now();
  self->request(e->deps.reward, caf::infinite, verify_atom::value,
                VerifyRequest{e->job.task, ep.messages.dump()})
      .then(
          [self, e, t0](RewardMsg& m) {
            e->out.seconds_reward = since(t0);
            EpisodeRecord& r = e->out.record;
            r.reward = m.value;
            r.components = json::parse(m.components);
            r.reason = m.reason;
            if (m.verifier_failed) r.components["verifier_failed"] = true;
            e->promise.deliver(std::move(e->out));
            self->quit();
          },
          [self, e](caf::error& err) {
            e->promise.deliver(err);
            self->quit(err);
          });
}

void advance(caf::event_based_actor* self, const std::shared_ptr<Episode>& e) {
  switch (e->session->need()) {
    case AgentSession::Need::generate: {
      auto t0 = Clock::now();
      self->request(e->deps.engine, caf::infinite, generate_atom::value, e->session->context(),
                    e->session->sampling())
          .then(
              [self, e, t0](GenOutput& out) {
                e->out.seconds_generate += since(t0);
                e->session->on_generated(out);
                advance(self, e);
              },
              [self, e](caf::error& err) {
                e->promise.deliver(err);
                self->quit(err);
              });
      return;
    }
    case AgentSession::Need::tools:
      run_tools(self, e);
      return;
    case AgentSession::Need::done:
      score(self, e);
      return;
  }
}

}  // namespace

caf::behavior rollout_actor(caf::event_based_actor* self, RolloutDeps deps) {
  return {
      [self, deps](run_atom, EpisodeJob& job) -> caf::response_promise {
        auto e = std::make_shared<Episode>();
        e->deps = deps;
        e->job = std::move(job);
        e->task = tasks::task_from_json(json::parse(e->job.task));
        e->family = &tasks::find_family(e->task.family);
        e->session = std::make_unique<AgentSession>(*deps.tokenizer, e->task.messages,
                                                    e->task.tools, e->job.sampling, e->job.limits);
        e->env = std::make_unique<tasks::Environment>(*e->family, e->task,
                                                      deps.environment_sandbox.get());
        e->promise = self->make_response_promise();
        advance(self, e);
        return e->promise;
      },
  };
}

}  // namespace shoal::actors
