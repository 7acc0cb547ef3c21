// The sandbox client (client.h): one I/O thread owns the DEALER socket and its monitor.
#include "sandbox/client.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "base/error.h"

namespace shoal::sandbox {

namespace {

using Clock = std::chrono::steady_clock;

struct Pending {
  std::promise<Reply> promise;
  Request request;
  Clock::time_point submitted, deadline;
  int attempts = 0;
};

}  // namespace

struct Client::Impl {
  ClientOptions opt;
  zmq::context_t ctx{1};
  zmq::socket_t dealer{ctx, zmq::socket_type::dealer};
  zmq::socket_t monitor{ctx, zmq::socket_type::pair};
  int wake_fd = -1;
  std::mutex mu;
  std::deque<Pending> incoming;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> next_id{0};
  std::string id_prefix;
  std::thread io;

  void send(Pending& p) {
    Request r = p.request;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(p.deadline - Clock::now());
    r.timeout_ms = std::max<int64_t>(1, left.count());
    std::string payload = dump(to_json(r));
    dealer.send(zmq::buffer(payload), zmq::send_flags::dontwait);
    ++p.attempts;
  }

  void finish(Pending& p, Reply reply) { p.promise.set_value(std::move(reply)); }

  void loop() {
    std::map<std::string, Pending> inflight;
    bool disconnected = false;
    while (!stop) {
      auto now = Clock::now();
      auto next = now + std::chrono::milliseconds(200);
      for (auto& [id, p] : inflight) next = std::min(next, p.deadline);
      int timeout = static_cast<int>(std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1));
      zmq::pollitem_t items[] = {{dealer.handle(), 0, ZMQ_POLLIN, 0},
                                 {monitor.handle(), 0, ZMQ_POLLIN, 0},
                                 {nullptr, wake_fd, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 3, std::chrono::milliseconds(timeout));
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) throw;
        continue;
      }
      if (items[2].revents & ZMQ_POLLIN) {
        uint64_t v;
        ssize_t ignored = read(wake_fd, &v, sizeof v);
        (void)ignored;
        std::deque<Pending> fresh;
        {
          std::lock_guard lock(mu);
          fresh.swap(incoming);
        }
        for (auto& p : fresh) {
          std::string id = p.request.id;
          auto [it, inserted] = inflight.try_emplace(id, std::move(p));
          if (!inserted) {
            p.promise.set_value(error_reply(id, error_kind::bad_request,
                                            "a call with this id is already in flight"));
            continue;
          }
          send(it->second);
        }
      }
      if (items[1].revents & ZMQ_POLLIN) {
        std::vector<zmq::message_t> ev;
        while (zmq::recv_multipart(monitor, std::back_inserter(ev), zmq::recv_flags::dontwait)) {
          uint16_t event = 0;
          if (!ev.empty() && ev[0].size() >= 2) std::memcpy(&event, ev[0].data(), 2);
          if (event == ZMQ_EVENT_DISCONNECTED) disconnected = true;
          if (event == ZMQ_EVENT_CONNECTED && disconnected) {
            // The server came back: what was in flight on the old connection is lost; send again.
            disconnected = false;
            for (auto it = inflight.begin(); it != inflight.end();) {
              if (it->second.attempts > opt.retries) {
                finish(it->second, error_reply(it->first, error_kind::client_timeout,
                                               fmt::format("connection to {} lost {} times",
                                                           opt.endpoint, it->second.attempts)));
                it = inflight.erase(it);
              } else {
                send(it->second);
                ++it;
              }
            }
          }
          ev.clear();
        }
      }
      if (items[0].revents & ZMQ_POLLIN) {
        for (;;) {
          zmq::message_t msg;
          auto got = dealer.recv(msg, zmq::recv_flags::dontwait);
          if (!got) break;
          json j = json::parse(msg.to_string_view(), nullptr, false);
          if (!j.is_object()) continue;
          Reply reply = reply_from_json(j);
          auto it = inflight.find(reply.id);
          if (it == inflight.end()) continue;  // a late duplicate after a resend, or timed out
          finish(it->second, std::move(reply));
          inflight.erase(it);
        }
      }
      now = Clock::now();
      for (auto it = inflight.begin(); it != inflight.end();) {
        if (now >= it->second.deadline) {
          double waited =
              std::chrono::duration<double, std::milli>(now - it->second.submitted).count();
          finish(it->second, error_reply(it->first, error_kind::client_timeout,
                                         fmt::format("no reply from {} within {:.0f} ms",
                                                     opt.endpoint, waited)));
          it = inflight.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& [id, p] : inflight)
      finish(p, error_reply(id, error_kind::client_timeout, "client closed"));
    std::lock_guard lock(mu);
    for (auto& p : incoming)
      finish(p, error_reply(p.request.id, error_kind::client_timeout, "client closed"));
    incoming.clear();
  }
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.opt = std::move(options);
  SHOAL_CHECK(!m.opt.endpoint.empty(), "client needs an endpoint");
  m.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  SHOAL_CHECK(m.wake_fd >= 0, "eventfd failed");
  m.id_prefix = fmt::format("c{}-{:x}-", getpid(), reinterpret_cast<uintptr_t>(this) & 0xffffff);
  m.dealer.set(zmq::sockopt::linger, 0);
  m.dealer.set(zmq::sockopt::reconnect_ivl, 50);
  m.dealer.set(zmq::sockopt::reconnect_ivl_max, 500);
  m.dealer.set(zmq::sockopt::sndhwm, 100000);
  m.dealer.set(zmq::sockopt::rcvhwm, 100000);
  std::string mon = fmt::format("inproc://shoal-client-monitor-{}", m.id_prefix);
  SHOAL_CHECK(zmq_socket_monitor(m.dealer.handle(), mon.c_str(),
                                 ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) == 0,
              "zmq_socket_monitor failed");
  m.monitor.connect(mon);
  try {
    m.dealer.connect(m.opt.endpoint);
  } catch (const zmq::error_t& e) {
    SHOAL_FAIL("cannot connect to {}: {}", m.opt.endpoint, e.what());
  }
  m.io = std::thread([&m] { m.loop(); });
}

Client::~Client() {
  Impl& m = *impl_;
  m.stop = true;
  uint64_t one = 1;
  ssize_t ignored = write(m.wake_fd, &one, sizeof one);
  (void)ignored;
  m.io.join();
  zmq_socket_monitor(m.dealer.handle(), nullptr, 0);
  m.monitor.close();
  m.dealer.close();
  close(m.wake_fd);
}

std::future<Reply> Client::submit(Request request) {
  Impl& m = *impl_;
  if (request.id.empty()) request.id = m.id_prefix + std::to_string(m.next_id++);
  Pending p;
  p.request = std::move(request);
  p.submitted = Clock::now();
  p.deadline =
      p.submitted +
      std::chrono::milliseconds(p.request.timeout_ms > 0 ? p.request.timeout_ms : m.opt.timeout_ms);
  auto future = p.promise.get_future();
  {
    std::lock_guard lock(m.mu);
    if (m.stop) {
      p.promise.set_value(error_reply(p.request.id, error_kind::client_timeout, "client closed"));
      return future;
    }
    m.incoming.push_back(std::move(p));
  }
  uint64_t one = 1;
  ssize_t ignored = write(m.wake_fd, &one, sizeof one);
  (void)ignored;
  return future;
}

Reply Client::call(const std::string& tool, json arguments, const std::string& session) {
  Request r;
  r.tool = tool;
  r.arguments = std::move(arguments);
  r.session = session;
  return call(std::move(r));
}

Reply Client::admin(const std::string& op, const std::string& session) {
  Request r;
  r.op = op;
  r.session = session;
  return call(std::move(r));
}

}  // namespace shoal::sandbox
