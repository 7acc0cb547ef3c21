// The sandbox server (server.h): ROUTER socket, queue, workers, startup sweep, shutdown.
#include "sandbox/server.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "base/error.h"
#include "base/log.h"
#include "sandbox/tools.h"

namespace shoal::sandbox {

namespace fs = std::filesystem;

namespace {

std::string slug(const std::string& endpoint) {
  std::string s;
  for (char c : endpoint) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  if (s.size() > 80) s = s.substr(s.size() - 80);
  if (endpoint.find('*') != std::string::npos) s += "_" + std::to_string(getpid());
  return s + "_" + std::to_string(std::hash<std::string>{}(endpoint) % 100000);
}

struct Job {
  std::vector<zmq::message_t> envelope;  // routing frames to send the reply back
  Request request;
  Clock::time_point received;
};

}  // namespace

void load_limits_file(const std::string& path, ExecutorConfig& config) {
  std::ifstream f(path);
  SHOAL_CHECK(f, "cannot read limits file {}", path);
  json j = json::parse(f, nullptr, false, /*ignore_comments=*/true);
  SHOAL_CHECK(!j.is_discarded() && j.is_object(), "limits file {} is not a JSON object", path);
  for (auto it = j.begin(); it != j.end(); ++it) {
    SHOAL_CHECK(it.key() == "defaults" || it.key() == "max",
                "limits file {}: unknown key '{}' (expected defaults, max)", path, it.key());
    try {
      if (it.key() == "defaults") config.defaults = apply_limits_json(*it, config.defaults);
      if (it.key() == "max") config.max = apply_limits_json(*it, config.max);
    } catch (const Error& e) {
      SHOAL_FAIL("limits file {}: {}: {}", path, it.key(), e.message());
    }
  }
  config.defaults = clamp(config.defaults, config.max);
}

std::string default_state_dir(const std::string& endpoint) {
  return "/tmp/shoal-sandboxd/" + slug(endpoint);
}

struct Server::Impl {
  ServerOptions opt;
  std::string instance;
  IsolationEnv env;
  std::unique_ptr<Executor> executor;
  int lock_fd = -1;
  zmq::context_t ctx{1};
  zmq::socket_t router{ctx, zmq::socket_type::router};
  zmq::socket_t replies{ctx, zmq::socket_type::pull};
  std::string reply_endpoint;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> queue;
  std::atomic<bool> stopping{false};
  std::vector<std::thread> workers;
  std::atomic<uint64_t> served{0}, errors{0};
  std::atomic<int> busy{0};

  void send_reply(std::vector<zmq::message_t>& envelope, const std::string& payload) {
    for (auto& frame : envelope) router.send(frame, zmq::send_flags::sndmore);
    router.send(zmq::buffer(payload), zmq::send_flags::dontwait);
  }

  void reply_now(std::vector<zmq::message_t>& envelope, const Reply& reply) {
    if (reply.status != "ok") ++errors;
    send_reply(envelope, dump(to_json(reply)));
  }

  void worker(int slot) {
    zmq::socket_t push(ctx, zmq::socket_type::push);
    push.set(zmq::sockopt::linger, 0);
    push.connect(reply_endpoint);
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;
        job = std::move(queue.front());
        queue.pop_front();
      }
      ++busy;
      Reply reply;
      if (stopping) {
        reply =
            error_reply(job.request.id, error_kind::shutting_down, "the server is shutting down");
      } else if (job.request.op == "list_tools") {  // MCP servers may have to start first
        reply.id = job.request.id;
        reply.result = executor->tools();
      } else if (job.request.op == "close_session") {
        reply.id = job.request.id;
        reply.result = {{"closed", executor->close_session(job.request.session)}};
      } else {
        reply = executor->call(job.request, job.received, slot);
      }
      --busy;
      ++served;
      if (reply.status != "ok") ++errors;
      std::string payload = dump(to_json(reply));
      for (auto& frame : job.envelope) push.send(frame, zmq::send_flags::sndmore);
      push.send(zmq::buffer(payload), zmq::send_flags::none);
    }
  }

  void on_request(std::vector<zmq::message_t>& frames) {
    // ROUTER frames: identity, [empty delimiter from REQ clients], payload.
    zmq::message_t payload = std::move(frames.back());
    frames.pop_back();
    if (payload.size() > opt.max_request_bytes) {
      reply_now(frames, error_reply("", error_kind::too_large,
                                    fmt::format("request of {} bytes is over the limit of {} bytes",
                                                payload.size(), opt.max_request_bytes)));
      return;
    }
    Request request;
    try {
      request = parse_request(payload.to_string());
    } catch (const RequestError& e) {
      reply_now(frames, error_reply(e.id, e.kind, e.message));
      return;
    }
    Reply reply;
    reply.id = request.id;
    if (request.op == "ping") {
      reply.result = {{"pong", true}};
      reply_now(frames, reply);
      return;
    }
    if (request.op == "list_tools" && opt.exec.mcp_servers.empty()) {
      reply.result = tool_schemas();
      reply_now(frames, reply);
      return;
    }
    if (request.op == "stats") {
      reply.result = executor->stats();
      std::lock_guard lock(mu);
      reply.result["queued"] = queue.size();
      reply.result["busy_workers"] = busy.load();
      reply.result["workers"] = opt.workers;
      reply.result["served"] = served.load();
      reply.result["errors"] = errors.load();
      reply_now(frames, reply);
      return;
    }
    if (request.op == "close_session" && request.session.empty()) {
      reply_now(frames, error_reply(request.id, error_kind::bad_request,
                                    "close_session needs a 'session'"));
      return;
    }
    {
      std::lock_guard lock(mu);
      if (queue.size() < opt.max_queue) {
        queue.push_back(Job{std::move(frames), std::move(request), Clock::now()});
        cv.notify_one();
        return;
      }
    }
    reply_now(frames,
              error_reply(request.id, error_kind::busy,
                          fmt::format("the queue is full ({} requests waiting)", opt.max_queue)));
  }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.opt = std::move(options);
  SHOAL_CHECK(m.opt.endpoint.rfind("ipc://", 0) == 0 || m.opt.endpoint.rfind("tcp://", 0) == 0,
              "endpoint must be ipc://PATH or tcp://HOST:PORT, got '{}'", m.opt.endpoint);
  SHOAL_CHECK(m.opt.workers >= 1 && m.opt.workers <= 256, "workers must be 1..256, got {}",
              m.opt.workers);
  m.instance = slug(m.opt.endpoint);
  m.env.state_dir = m.opt.state_dir.empty() ? default_state_dir(m.opt.endpoint) : m.opt.state_dir;
  fs::create_directories(m.env.state_dir);
  // One live instance per state directory: the lock is released by the kernel if we crash.
  std::string lock_path = m.env.state_dir + "/lock";
  m.lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  SHOAL_CHECK(m.lock_fd >= 0, "cannot open {}", lock_path);
  if (flock(m.lock_fd, LOCK_EX | LOCK_NB) != 0) {
    close(m.lock_fd);
    m.lock_fd = -1;
    SHOAL_FAIL("another sandboxd is running with state directory {} (endpoint {})", m.env.state_dir,
               m.opt.endpoint);
  }
  m.env.prepare(m.instance, static_cast<size_t>(m.opt.workers) + 1);
  if (m.env.swept_cgroups + m.env.swept_workspaces > 0)
    log::info("sandboxd: swept {} cgroup(s) and {} workspace(s) left by an earlier instance",
              m.env.swept_cgroups, m.env.swept_workspaces);
  m.opt.exec.pool_slots = m.opt.workers;
  m.executor = std::make_unique<Executor>(m.env, m.opt.exec);

  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  SHOAL_CHECK(stop_fd_ >= 0, "eventfd failed");
  m.router.set(zmq::sockopt::linger, 0);
  // Far over max_request_bytes: a bigger message drops the connection instead of using memory;
  // anything up to it gets a too_large reply.
  m.router.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(m.opt.max_request_bytes) * 16);
  m.router.set(zmq::sockopt::sndhwm, 100000);
  if (m.opt.endpoint.rfind("ipc://", 0) == 0) {
    fs::path sock = m.opt.endpoint.substr(6);
    if (sock.has_parent_path()) fs::create_directories(sock.parent_path());
  }
  try {
    m.router.bind(m.opt.endpoint);
  } catch (const zmq::error_t& e) {
    SHOAL_FAIL("cannot bind {}: {}", m.opt.endpoint, e.what());
  }
  endpoint_ = m.router.get(zmq::sockopt::last_endpoint);
  m.reply_endpoint = "inproc://shoal-sandbox-replies";
  m.replies.bind(m.reply_endpoint);
  for (int i = 0; i < m.opt.workers; ++i) m.workers.emplace_back([&m, i] { m.worker(i); });
  log::info("sandboxd: listening on {} with {} workers; {}", endpoint_, m.opt.workers,
            m.env.describe());
}

Server::~Server() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.stopping = true;
  }
  m.cv.notify_all();
  if (m.executor) m.executor->cancel_all();
  for (auto& t : m.workers)
    if (t.joinable()) t.join();
  m.executor.reset();
  m.env.armory.reset();
  if (m.env.cgroups) m.env.cgroups->remove_parent();
  m.router.close();
  m.replies.close();
  if (m.opt.endpoint.rfind("ipc://", 0) == 0) unlink(m.opt.endpoint.substr(6).c_str());
  if (stop_fd_ >= 0) close(stop_fd_);
  if (m.lock_fd >= 0) close(m.lock_fd);
}

void Server::stop() {
  uint64_t one = 1;
  ssize_t ignored = write(stop_fd_, &one, sizeof one);
  (void)ignored;
}

std::string Server::describe() const {
  return impl_->env.describe();
}

void Server::run() {
  Impl& m = *impl_;
  auto last_sweep = Clock::now();
  for (;;) {
    zmq::pollitem_t items[] = {{m.router.handle(), 0, ZMQ_POLLIN, 0},
                               {m.replies.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, stop_fd_, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 3, std::chrono::milliseconds(1000));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;  // a signal (SIGTERM's handler has written stop_fd_)
      continue;
    }
    if (items[2].revents & ZMQ_POLLIN) break;
    if (items[1].revents & ZMQ_POLLIN) {
      // Replies from workers: forward every one that is ready.
      for (;;) {
        std::vector<zmq::message_t> frames;
        auto n =
            zmq::recv_multipart(m.replies, std::back_inserter(frames), zmq::recv_flags::dontwait);
        if (!n) break;
        zmq::message_t payload = std::move(frames.back());
        frames.pop_back();
        for (auto& f : frames) m.router.send(f, zmq::send_flags::sndmore);
        m.router.send(payload, zmq::send_flags::dontwait);
      }
    }
    if (items[0].revents & ZMQ_POLLIN) {
      for (int i = 0; i < 256; ++i) {
        std::vector<zmq::message_t> frames;
        auto n =
            zmq::recv_multipart(m.router, std::back_inserter(frames), zmq::recv_flags::dontwait);
        if (!n) break;
        if (frames.size() < 2) continue;
        try {
          m.on_request(frames);
        } catch (const std::exception& e) {
          log::error("sandboxd: request handling failed: {}", e.what());
        }
      }
    }
    if (Clock::now() - last_sweep > std::chrono::seconds(10)) {
      m.executor->close_idle_sessions();
      last_sweep = Clock::now();
    }
  }
  log::info("sandboxd: stopping ({} requests served)", m.served.load());
  {
    std::lock_guard lock(m.mu);
    m.stopping = true;
    // Queued calls get a shutting_down reply from the workers.
  }
  m.cv.notify_all();
  m.executor->cancel_all();
  for (auto& t : m.workers) t.join();
  m.workers.clear();
  for (;;) {
    std::vector<zmq::message_t> frames;
    auto n = zmq::recv_multipart(m.replies, std::back_inserter(frames), zmq::recv_flags::dontwait);
    if (!n) break;
    zmq::message_t payload = std::move(frames.back());
    frames.pop_back();
    for (auto& f : frames) m.router.send(f, zmq::send_flags::sndmore);
    m.router.send(payload, zmq::send_flags::dontwait);
  }
}

}  // namespace shoal::sandbox
