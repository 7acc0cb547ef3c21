// `shoal serve`'s HTTP server (server.h).
#include "serve/server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>

#include "base/error.h"
#include "engine/device.h"
#include "engine/generate/scheduler.h"
#include "engine/model/model.h"
#include "engine/tokenizer/tokenizer.h"
#include "serve/openai.h"

namespace shoal::serve {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// What the access log says about the request this worker thread is serving (cpp-httplib runs a
// request's routing, handler, content provider and logger on one thread).
struct RequestStats {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::string note;     // "stream", "cancelled", an error code
  bool logged = false;  // the handler wrote the line itself (a stream the client left)
};
thread_local RequestStats t_stats;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(dump(e.body()), "application/json");
  t_stats.note = e.code().empty() ? e.type() : e.code();
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Tokens and completion of a streamed request, handed from the engine thread to the worker.
struct StreamQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int64_t, TokenRecord>> tokens;
  bool done = false;
};

}  // namespace

struct Server::Impl {
  ServerConfig cfg;
  std::unique_ptr<Backend> backend;  // outlives the model and the scheduler
  std::unique_ptr<Model> model;
  std::optional<Tokenizer> tok;
  std::unique_ptr<Scheduler> sched;
  httplib::Server http;
  int64_t context = 0;
  int64_t created = unix_now();
  int listen_socket = -1;  // the server socket (set_socket_options sees it)
  std::mutex log_mu;
  // Requests between their first token and their end, and the most there have been at once
  // (GET /health reports both: evidence that concurrent requests share the batch).
  std::atomic<int64_t> generating{0}, peak_generating{0};

  // Counts the request in `generating` from its first token to its end (wrapping its callbacks).
  void track(GenerationRequest& g) {
    auto started = std::make_shared<std::atomic<bool>>(false);
    auto on_token = std::move(g.on_token);
    auto on_done = std::move(g.on_done);
    g.on_token = [this, started, on_token](int64_t sample, const TokenRecord& t) {
      if (!started->exchange(true)) {
        int64_t now = ++generating;
        int64_t peak = peak_generating.load();
        while (now > peak && !peak_generating.compare_exchange_weak(peak, now)) {
        }
      }
      if (on_token) on_token(sample, t);
    };
    g.on_done = [this, started, on_done] {
      if (started->load()) --generating;
      if (on_done) on_done();
    };
  }

  void log_line(const std::string& line) {
    if (cfg.log) {
      cfg.log(line);
      return;
    }
    std::lock_guard lock(log_mu);
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }

  void access_log(const httplib::Request& req, int status) {
    RequestStats& s = t_stats;
    double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s.start)
            .count();
    log_line(fmt::format("serve: {} {} {} prompt_tokens={} completion_tokens={} ms={:.1f}{}{}",
                         req.method, req.path, status, s.prompt_tokens, s.completion_tokens, ms,
                         s.note.empty() ? "" : " ", s.note));
  }

  json model_json() const {
    return {
        {"id", cfg.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "shoal"}};
  }

  GenerationRequest generation(const ChatRequest& r, const Prompt& p) const {
    const int64_t P = int64_t(p.ids.size());
    if (P >= context)
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, your "
                                 "messages resulted in {} tokens. Please reduce the length of the "
                                 "messages.",
                                 context, P),
                     "messages", "context_length_exceeded");
    const int64_t max_tokens = r.max_tokens.value_or(context - P);
    if (P + max_tokens > context)
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, you "
                                 "requested {} tokens ({} in the messages, {} in the completion). "
                                 "Please reduce the length of the messages or completion.",
                                 context, P + max_tokens, P, max_tokens),
                     "max_tokens", "context_length_exceeded");
    if (r.n > cfg.max_sequences)
      throw ApiError(400,
                     fmt::format("Invalid value for 'n': this server runs at most {} samples at "
                                 "once.",
                                 cfg.max_sequences),
                     "n", "invalid_value");
    GenerationRequest g;
    g.prompt = p.ids;
    g.samples = r.n;
    g.sampling.greedy = r.temperature == 0.0;
    g.sampling.temperature = r.temperature == 0.0 ? 1.0f : float(r.temperature);
    g.sampling.top_p = float(r.top_p);
    g.sampling.top_k = r.top_k;
    g.sampling.min_p = float(r.min_p);
    g.sampling.seed = r.seed ? *r.seed : std::random_device{}();
    g.sampling.max_tokens = max_tokens;
    g.sampling.stop_ids = p.stop_ids;
    g.stop_strings = r.stop;
    g.top_logprobs = r.logprobs ? r.top_logprobs : -1;
    return g;
  }

  // A request the scheduler refused at once (e.g. more cache pages than the pool has).
  static void check_refused(RequestHandle& h) {
    if (!h.done()) return;
    std::vector<Completion> c = h.wait();
    if (!c.empty() && c[0].finish == FinishReason::error)
      throw ApiError(400, "The request cannot run on this server: " + c[0].error, "",
                     "invalid_value");
  }

  void chat(const httplib::Request& req, httplib::Response& res) {
    ChatRequest r = parse_chat_request(req.body);
    if (r.model != cfg.model_name)
      throw ApiError(404,
                     fmt::format("The model '{}' does not exist (this server serves '{}').",
                                 r.model, cfg.model_name),
                     "model", "model_not_found");
    auto p = std::make_shared<Prompt>(build_prompt(*tok, r));
    GenerationRequest g = generation(r, *p);
    t_stats.prompt_tokens = int64_t(p->ids.size());
    const std::string id = random_id("chatcmpl-");
    const int64_t created_at = unix_now();
    if (!r.stream) {
      track(g);
      auto handle = sched->submit(std::move(g));
      check_refused(*handle);
      std::vector<Completion> c = handle->wait();
      for (const Completion& s : c) {
        SHOAL_CHECK(s.finish != FinishReason::error, "generation failed: {}", s.error);
        t_stats.completion_tokens += int64_t(s.tokens.size());
      }
      res.set_content(dump(chat_completion_json(*tok, r, *p, c, id, created_at, cfg.model_name)),
                      "application/json");
      return;
    }
    auto q = std::make_shared<StreamQueue>();
    g.on_token = [q](int64_t sample, const TokenRecord& t) {
      std::lock_guard lock(q->mu);
      q->tokens.emplace_back(sample, t);
      q->cv.notify_one();
    };
    g.on_done = [q] {
      std::lock_guard lock(q->mu);
      q->done = true;
      q->cv.notify_one();
    };
    track(g);
    std::shared_ptr<RequestHandle> handle = sched->submit(std::move(g));
    check_refused(*handle);
    t_stats.note = "stream";
    auto request = std::make_shared<ChatRequest>(std::move(r));
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, q, handle, request, p, id, created_at, &req](size_t, httplib::DataSink& sink) {
          try {
            if (stream(*request, *p, id, created_at, *q, *handle, sink)) {
              sink.done();
              return true;
            }
          } catch (const std::exception& e) {
            log_line(fmt::format("serve: error while streaming {}: {}", id, e.what()));
          }
          handle->cancel();  // the client went away (or the stream failed): free its batch slot
          t_stats.note = "stream cancelled";
          access_log(req, 200);
          t_stats.logged = true;
          return false;
        },
        [handle](bool) { handle->cancel(); });  // a no-op once the request has finished
  }

  // Writes the whole SSE stream; false when a write fails (the client is gone).
  bool stream(const ChatRequest& r, const Prompt& p, const std::string& id, int64_t created_at,
              StreamQueue& q, RequestHandle& handle, httplib::DataSink& sink) {
    json envelope = {{"id", id},
                     {"object", "chat.completion.chunk"},
                     {"created", created_at},
                     {"model", cfg.model_name},
                     {"system_fingerprint", nullptr}};
    auto send = [&](const json& payload) {
      std::string s = "data: " + dump(payload) + "\n\n";
      return sink.write(s.data(), s.size());
    };
    auto send_choices = [&](const std::vector<json>& choices) {
      for (const json& c : choices) {
        json chunk = envelope;
        chunk["choices"] = json::array({c});
        if (r.include_usage) chunk["usage"] = nullptr;
        if (!send(chunk)) return false;
      }
      return true;
    };
    std::vector<ChoiceStreamer> streamers;
    for (int64_t i = 0; i < r.n; ++i) streamers.emplace_back(*tok, r, p, i);
    for (auto& s : streamers)
      if (!send_choices(s.start())) return false;
    int64_t completion_tokens = 0;
    for (;;) {
      std::deque<std::pair<int64_t, TokenRecord>> batch;
      bool done = false;
      {
        std::unique_lock lock(q.mu);
        q.cv.wait_for(lock, std::chrono::milliseconds(200),
                      [&] { return q.done || !q.tokens.empty(); });
        batch.swap(q.tokens);
        done = q.done;
      }
      for (auto& [sample, t] : batch) {
        t_stats.completion_tokens = ++completion_tokens;  // (logged even if the client leaves)
        if (!send_choices(streamers[size_t(sample)].on_token(t))) return false;
      }
      if (done) break;
    }
    std::vector<Completion> c = handle.wait();
    for (size_t i = 0; i < c.size(); ++i) {
      SHOAL_CHECK(c[i].finish != FinishReason::error, "generation failed: {}", c[i].error);
      if (!send_choices(streamers[i].finish(c[i]))) return false;
    }
    t_stats.completion_tokens = completion_tokens;
    if (r.include_usage) {
      json chunk = envelope;
      chunk["choices"] = json::array();
      chunk["usage"] = usage_json(int64_t(p.ids.size()), completion_tokens);
      if (!send(chunk)) return false;
    }
    static const char done_line[] = "data: [DONE]\n\n";
    return sink.write(done_line, sizeof(done_line) - 1);
  }

  void routes() {
    auto guarded = [this](auto fn) {
      return [this, fn](const httplib::Request& req, httplib::Response& res) {
        try {
          fn(req, res);
        } catch (const ApiError& e) {
          send_error(res, e);
        } catch (const Error& e) {
          log_line(
              fmt::format("serve: internal error on {} {}: {}", req.method, req.path, e.message()));
          send_error(
              res,
              ApiError(500, "The server had an error while processing your request: " + e.message(),
                       "", "internal_error"));
        }
      };
    };
    auto not_allowed = [this](const char* allow) {
      return [this, allow](const httplib::Request& req, httplib::Response& res) {
        res.set_header("Allow", allow);
        send_error(res, ApiError(405,
                                 fmt::format("Method {} is not allowed on {} (use {}).", req.method,
                                             req.path, allow),
                                 "", "method_not_allowed"));
      };
    };
    http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
               res.set_content(dump({{"object", "list"}, {"data", json::array({model_json()})}}),
                               "application/json");
             }));
    http.Get("/v1/models/(.+)",
             guarded([this](const httplib::Request& req, httplib::Response& res) {
               std::string name = req.matches[1];
               if (name != cfg.model_name)
                 throw ApiError(404, fmt::format("The model '{}' does not exist.", name), "model",
                                "model_not_found");
               res.set_content(dump(model_json()), "application/json");
             }));
    http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req,
                                                     httplib::Response& res) { chat(req, res); }));
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dump({{"status", "ok"},
                            {"generating", generating.load()},
                            {"peak_generating", peak_generating.load()}}),
                      "application/json");
    });
    for (const char* path : {"/v1/models", "/v1/models/(.+)"}) {
      http.Post(path, not_allowed("GET"));
      http.Put(path, not_allowed("GET"));
      http.Patch(path, not_allowed("GET"));
      http.Delete(path, not_allowed("GET"));
    }
    const char* chat_path = "/v1/chat/completions";
    http.Get(chat_path, not_allowed("POST"));
    http.Put(chat_path, not_allowed("POST"));
    http.Patch(chat_path, not_allowed("POST"));
    http.Delete(chat_path, not_allowed("POST"));

    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      t_stats = RequestStats{};
      if (cfg.api_key.empty() || req.path == "/health")
        return httplib::Server::HandlerResponse::Unhandled;
      const std::string auth = req.get_header_value("Authorization");
      const std::string want = "Bearer " + cfg.api_key;
      if (auth.empty()) {
        send_error(res, ApiError(401,
                                 "You didn't provide an API key. Send it in the Authorization "
                                 "header as 'Bearer KEY'.",
                                 "", "missing_api_key"));
        return httplib::Server::HandlerResponse::Handled;
      }
      // Compare in time independent of where the key differs.
      bool same = auth.size() == want.size();
      unsigned char diff = 0;
      for (size_t i = 0; i < auth.size() && i < want.size(); ++i)
        diff |= static_cast<unsigned char>(auth[i] ^ want[i]);
      if (!same || diff != 0) {
        send_error(res, ApiError(401, "Incorrect API key provided.", "", "invalid_api_key"));
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                       httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      switch (res.status) {
        case 404:
          send_error(res,
                     ApiError(404, fmt::format("Unknown request URL: {} {}.", req.method, req.path),
                              "", "unknown_url"));
          break;
        case 413:
          send_error(res, ApiError(413,
                                   fmt::format("The request body is too large (at most {} bytes).",
                                               cfg.max_body_bytes),
                                   "", "request_too_large"));
          break;
        default:
          send_error(res, ApiError(res.status, fmt::format("HTTP error {}.", res.status), "",
                                   res.status >= 500 ? "internal_error" : "invalid_request"));
      }
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler(
        [this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown exception";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          log_line(fmt::format("serve: internal error on {} {}: {}", req.method, req.path, what));
          send_error(res, ApiError(500, "The server had an error while processing your request.",
                                   "", "internal_error"));
        });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (!t_stats.logged) access_log(req, res.status);
      t_stats = RequestStats{};
    });
  }
};

Server::Server(ServerConfig config) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.cfg = std::move(config);
  ServerConfig& c = m.cfg;
  SHOAL_CHECK(fs::is_directory(c.model_dir), "{} is not a directory", c.model_dir);
  SHOAL_CHECK(fs::exists(fs::path(c.model_dir) / "tokenizer.json"),
              "{} has no tokenizer.json (shoal serve needs the model's tokenizer)", c.model_dir);
  SHOAL_CHECK(c.threads >= 2, "--threads must be at least 2, got {}", c.threads);
  SHOAL_CHECK(c.max_sequences >= 1 && c.max_batch_tokens >= 1,
              "max_sequences and max_batch_tokens must be positive");
  if (c.model_name.empty()) {
    fs::path p = fs::weakly_canonical(fs::path(c.model_dir));
    c.model_name = p.filename().string();
    if (c.model_name.empty()) c.model_name = p.parent_path().filename().string();
  }
  m.tok = Tokenizer::load(c.model_dir);
  m.backend = open_backend(c.device, c.precision);
  m.model = Model::from_pretrained(c.model_dir, *m.backend);
  m.context = m.model->config().max_position_embeddings;
  SchedulerConfig sc;
  sc.max_sequences = c.max_sequences;
  sc.max_batch_tokens = c.max_batch_tokens;
  sc.cache.page_tokens = 16;
  int64_t tokens =
      c.cache_tokens > 0 ? c.cache_tokens : std::min<int64_t>(c.max_sequences * m.context, 1 << 18);
  sc.cache.pages = (tokens + sc.cache.page_tokens - 1) / sc.cache.page_tokens;
  const Tokenizer* tok = &*m.tok;
  sc.detokenize = [tok](std::span<const int32_t> ids) { return tok->decode(ids); };
  m.sched = std::make_unique<Scheduler>(*m.model, sc);
  m.sched->start();
  const int threads = c.threads;
  m.http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  m.http.set_payload_max_length(c.max_body_bytes);
  // cpp-httplib 0.11 listens with a backlog of 5: under many simultaneous connects the kernel
  // drops SYNs and clients stall a second or more. Keep the listening socket to enlarge it.
  m.http.set_socket_options([&m](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    m.listen_socket = sock;
  });
  m.routes();
}

Server::~Server() {
  impl_->http.stop();
  impl_->sched->stop();
}

int Server::bind() {
  Impl& m = *impl_;
  if (m.cfg.port == 0) {
    port_ = m.http.bind_to_any_port(m.cfg.host);
    SHOAL_CHECK(port_ > 0, "cannot bind {} on a free port", m.cfg.host);
  } else {
    SHOAL_CHECK(m.http.bind_to_port(m.cfg.host, m.cfg.port), "cannot bind {}:{}", m.cfg.host,
                m.cfg.port);
    port_ = m.cfg.port;
  }
  if (m.listen_socket >= 0) ::listen(m.listen_socket, 1024);
  return port_;
}

void Server::listen() {
  SHOAL_CHECK(port_ > 0, "Server::listen() needs bind() first");
  impl_->http.listen_after_bind();
}

void Server::stop() {
  impl_->http.stop();
}

const std::string& Server::model_name() const {
  return impl_->cfg.model_name;
}

}  // namespace shoal::serve
