// The chat session (chat.h).
#include "actors/chat.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "actors/agent_loop.h"
#include "actors/local_sandbox.h"
#include "actors/tool_actor.h"
#include "base/error.h"
#include "engine/backend.h"
#include "engine/device.h"
#include "engine/generate/scheduler.h"
#include "engine/model/model.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/tokenizer.h"
#include "sandbox/client.h"
#include "sandbox/tools.h"

namespace shoal::actors {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> sandbox_tool_names() {
  std::vector<std::string> out;
  for (const json& t : sandbox::tool_schemas()) out.push_back(t["function"]["name"]);
  return out;
}

json sandbox_tool_descriptions(const std::vector<std::string>& names) {
  json out = json::array();
  for (const std::string& n : names) {
    const json* found = nullptr;
    for (const json& t : sandbox::tool_schemas())
      if (t["function"]["name"] == n) found = &t;
    if (!found) {
      std::string known;
      for (const std::string& k : sandbox_tool_names()) known += (known.empty() ? "" : ", ") + k;
      SHOAL_FAIL("unknown tool '{}' (the sandbox has: {})", n, known);
    }
    out.push_back(*found);
  }
  return out;
}

struct ChatSession::Impl {
  ChatOptions opt;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<Backend> backend;  // outlives the model and the scheduler
  std::unique_ptr<Model> model;
  std::unique_ptr<Scheduler> sched;
  std::unique_ptr<LocalSandbox> local;
  std::unique_ptr<sandbox::Client> client;
  json tools;
  json history = json::array();  // user/assistant/tool messages (no system message)
  std::string session;
  int64_t sessions = 0, replies = 0;
  int64_t context = 0;

  void new_session() {
    if (client && !session.empty()) client->admin("close_session", session);
    session = fmt::format("chat-{}-{}", getpid(), sessions++);
  }

  json prompt_messages() const {
    json m = json::array();
    if (!opt.system_prompt.empty())
      m.push_back({{"role", "system"}, {"content", opt.system_prompt}});
    for (const json& x : history) m.push_back(x);
    return m;
  }

  // Generation of one turn, streamed: the content is shown as it comes, up to the tool calls.
  GenOutput generate(const std::vector<int32_t>& context_ids, const SamplingParams& sp,
                     const ChatEvents& ev, const std::atomic<bool>* cancel) {
    GenerationRequest req;
    req.prompt = context_ids;
    req.sampling = sp;
    auto h = sched->submit(req);
    StreamDecoder dec(*tok, false);
    std::string text;
    size_t shown = 0;
    GenOutput out;
    TokenRecord t;
    while (h->next(0, t)) {
      out.ids.push_back(t.id);
      out.logprobs.push_back(t.logprob);
      if (cancel && cancel->load() && !h->cancelled()) h->cancel();
      text += dec.push(t.id);
      // Content only: stop showing at the tool calls; markers never show.
      size_t end = text.find(chat_marker::kToolCallsBegin);
      if (end == std::string::npos) end = text.size();
      std::string visible = text.substr(0, end);
      for (std::string_view mk : chat_marker::kAll) {
        size_t at;
        while ((at = visible.find(mk)) != std::string::npos) visible.erase(at, mk.size());
      }
      if (visible.size() > shown) {
        if (ev.on_text) ev.on_text(visible.substr(shown));
        shown = visible.size();
      }
    }
    Completion c = h->wait()[0];
    SHOAL_CHECK(c.finish != FinishReason::error, "generation failed: {}", c.error);
    out.stopped = c.finish == FinishReason::stop_id;
    if (ev.on_turn_end) ev.on_turn_end();
    return out;
  }
};

ChatSession::ChatSession(const ChatOptions& o) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.opt = o;
  SHOAL_CHECK(!o.model_dir.empty(), "--model: give a model directory");
  SHOAL_CHECK(fs::is_directory(o.model_dir), "--model {}: no such directory", o.model_dir);
  SHOAL_CHECK(fs::is_regular_file(fs::path(o.model_dir) / "config.json"),
              "--model {}: not a model directory (no config.json)", o.model_dir);
  std::string tf = o.tokenizer_file;
  if (tf.empty()) {
    tf = (fs::path(o.model_dir) / "tokenizer.json").string();
    SHOAL_CHECK(fs::is_regular_file(tf), "--model {} has no tokenizer.json: give --tokenizer FILE",
                o.model_dir);
  } else {
    SHOAL_CHECK(fs::is_regular_file(tf), "--tokenizer {}: no such file", tf);
  }
  SHOAL_CHECK(o.max_tokens >= 1, "--max-tokens must be at least 1 (got {})", o.max_tokens);
  SHOAL_CHECK(o.max_turns >= 1, "--max-turns must be at least 1 (got {})", o.max_turns);
  SHOAL_CHECK(o.temperature >= 0 && o.temperature <= 100,
              "--temperature must be between 0 (greedy) and 100 (got {})", o.temperature);
  s.tools = sandbox_tool_descriptions(o.tools);
  s.tok = std::make_unique<Tokenizer>(Tokenizer::load(tf));
  SHOAL_CHECK(s.tok->token_to_id(chat_marker::kEos).has_value(),
              "the tokenizer {} has no {} token: it is not a chat tokenizer", tf,
              chat_marker::kEos);
  s.backend = open_backend(o.device, o.precision);
  s.model = Model::from_pretrained(o.model_dir, *s.backend);
  SHOAL_CHECK(s.model->config().vocab_size >= s.tok->vocab_size(),
              "{}: the model's vocab_size {} is smaller than the tokenizer's {}", o.model_dir,
              s.model->config().vocab_size, s.tok->vocab_size());
  s.context = s.model->config().max_position_embeddings;
  SchedulerConfig sc;
  sc.max_sequences = 1;
  sc.max_batch_tokens = 512;
  sc.cache.page_tokens = 16;
  sc.cache.pages = s.context / 16 + 2;
  s.sched = std::make_unique<Scheduler>(*s.model, sc);
  s.sched->start();
  if (!s.tools.empty()) {
    std::string endpoint = o.sandbox_endpoint;
    if (endpoint.empty()) {
      s.local = std::make_unique<LocalSandbox>(o.shoal_exe, local_sandbox_endpoint("chat"), 1,
                                               nullptr, /*quiet=*/true);
      endpoint = s.local->endpoint();
    }
    sandbox::ClientOptions co;
    co.endpoint = endpoint;
    co.timeout_ms = 60000;
    s.client = std::make_unique<sandbox::Client>(co);
  }
  s.new_session();
}

ChatSession::~ChatSession() {
  if (impl_->sched) impl_->sched->stop();
  if (impl_->client && !impl_->session.empty())
    impl_->client->admin("close_session", impl_->session);
}

std::string ChatSession::send(const std::string& user, const ChatEvents& ev,
                              const std::atomic<bool>* cancel) {
  Impl& s = *impl_;
  json msgs = s.prompt_messages();
  msgs.push_back({{"role", "user"}, {"content", user}});
  SamplingParams sp;
  sp.greedy = s.opt.temperature == 0;
  sp.temperature = s.opt.temperature > 0 ? s.opt.temperature : 1.0f;
  sp.seed = s.opt.seed + static_cast<uint64_t>(s.replies++) * 1000;
  AgentLimits lim;
  lim.max_turns = s.opt.max_turns;
  lim.max_new_tokens = s.opt.max_tokens;
  lim.max_episode_tokens = s.context;
  lim.list_tools = s.opt.list_tools;
  std::unique_ptr<AgentSession> a;
  try {
    a = std::make_unique<AgentSession>(*s.tok, msgs, s.tools, sp, lim);
  } catch (const Error& e) {
    SHOAL_FAIL("{} (the model's context is {} tokens): /reset starts over", e.message(), s.context);
  }
  size_t seen = 0;  // episode messages already reported
  bool cancelled = false;
  std::vector<std::string> call_names;  // of the last assistant turn, for its tool outputs
  size_t outputs = 0;
  auto report_new = [&] {
    const json& m = a->episode().messages;
    for (; seen < m.size(); ++seen) {
      const json& x = m[seen];
      std::string role = x.value("role", "");
      if (role == "assistant" && x.contains("tool_calls") && x["tool_calls"].is_array()) {
        call_names.clear();
        outputs = 0;
        for (const json& c : x["tool_calls"]) {
          const json& f = c.at("function");
          std::string name = f.value("name", "");
          const json& args = f.contains("arguments") ? f["arguments"] : json();
          call_names.push_back(name);
          if (ev.on_tool_call)
            ev.on_tool_call(name, args.is_string() ? args.get<std::string>() : args.dump());
        }
      } else if (role == "tool") {
        std::string name = outputs < call_names.size() ? call_names[outputs] : "";
        ++outputs;
        if (ev.on_tool_result) ev.on_tool_result(name, x.value("content", ""));
      } else if (role == "user") {
        if (ev.on_notice) ev.on_notice(x.value("content", ""));
      }
    }
  };
  while (a->need() != AgentSession::Need::done) {
    if (a->need() == AgentSession::Need::generate) {
      GenOutput g = s.generate(a->context(), a->sampling(), ev, cancel);
      if (cancel && cancel->load()) cancelled = true;
      a->on_generated(g);
      report_new();
      if (cancelled) {
        // The turn ended before the stop took effect: its calls are answered, not run.
        if (a->need() == AgentSession::Need::tools) {
          std::vector<json> none(a->pending().size(), json{{"error", "cancelled by the user"}});
          a->on_tool_results(none);
          report_new();
        }
        break;
      }
    } else {
      std::vector<json> results;
      for (const PendingCall& c : a->pending()) {
        json r;
        if (cancel && cancel->load()) {
          r = json{{"error", "cancelled by the user"}};
        } else {
          sandbox::Reply reply = s.client->call(c.name, c.args, s.session);
          std::string text = tool_reply_text(reply);
          try {
            r = json::parse(text);
          } catch (const std::exception&) {
            r = text;
          }
        }
        results.push_back(r);
      }
      a->on_tool_results(results);
      report_new();
    }
  }
  std::string status = cancelled ? "cancelled" : a->episode().status;
  AgentEpisode ep = a->take();
  s.history.push_back(msgs.back());  // the user's message, then what followed it
  for (const json& m : ep.messages) s.history.push_back(m);
  if (!cancelled && ev.on_notice) {
    if (status == "turn_limit")
      ev.on_notice(fmt::format("(stopped: {} turns without an answer)", s.opt.max_turns));
    else if (status == "truncated")
      ev.on_notice("(stopped: out of tokens)");
  }
  return status;
}

void ChatSession::reset() {
  impl_->history = json::array();
  impl_->new_session();
}
void ChatSession::set_system_prompt(const std::string& text) {
  impl_->opt.system_prompt = text;
}
void ChatSession::set_temperature(float t) {
  SHOAL_CHECK(t >= 0 && t <= 100, "temperature must be between 0 (greedy) and 100 (got {})", t);
  impl_->opt.temperature = t;
}
float ChatSession::temperature() const {
  return impl_->opt.temperature;
}
const std::string& ChatSession::system_prompt() const {
  return impl_->opt.system_prompt;
}
const json& ChatSession::tools() const {
  return impl_->tools;
}
json ChatSession::messages() const {
  return impl_->prompt_messages();
}
json ChatSession::to_openai_json() const {
  json j = {{"model", impl_->opt.model_dir}, {"messages", messages()}};
  if (!impl_->tools.empty()) j["tools"] = impl_->tools;
  return j;
}
const std::string& ChatSession::sandbox_session() const {
  return impl_->session;
}
int64_t ChatSession::context_tokens() const {
  return impl_->context;
}

}  // namespace shoal::actors
