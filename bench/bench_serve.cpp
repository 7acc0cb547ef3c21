// bench_serve: requests/s, tokens/s and time to first token of `shoal serve`'s chat completions
// (streamed, over HTTP on localhost) under 1, 8 and 32 concurrent clients, for continuous batching
// (many samples decoding at once) against a baseline measured in the same run: the same server
// serving one request at a time (max_sequences 1, requests queue).
//   bench_serve --model DIR [--requests N] [--max-tokens N] [--clients 1,8,32]
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "serve/server.h"

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Result {
  double seconds = 0, req_per_s = 0, tok_per_s = 0, ttft_p50_ms = 0, ttft_p90_ms = 0;
  int64_t tokens = 0, failed = 0;
};

// One streamed request; returns (ms to the first generated chunk, completion tokens), or -1 ms on
// failure.
std::pair<double, int64_t> one_request(int port, int i, int max_tokens) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(600, 0);
  json body = {
      {"model", "bench"},
      {"messages", json::array({{{"role", "user"},
                                 {"content", "Question " + std::to_string(i) + ": what is " +
                                                 std::to_string(i) + " plus " +
                                                 std::to_string(i * 7) + "?"}}})},
      {"max_tokens", max_tokens},
      {"temperature", 1.0},
      {"seed", i},
      {"stream", true},
      {"stream_options", {{"include_usage", true}}}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();
  auto t0 = Clock::now();
  double ttft = -1;
  int events = 0;
  std::string buf;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buf.append(data, n);
    size_t count = 0;
    for (size_t at = buf.find("data: "); at != std::string::npos; at = buf.find("data: ", at + 1))
      ++count;
    // Event 1 is the role; event 2 the first generated text.
    if (ttft < 0 && count >= 2)
      ttft = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    events = int(count);
    return true;
  };
  auto res = c.send(req);
  if (!res || res->status != 200) {
    static std::atomic<int> reported{0};
    if (reported++ < 3)
      std::fprintf(stderr, "bench_serve: request %d failed: %s\n", i,
                   res ? ("HTTP " + std::to_string(res->status)).c_str()
                       : httplib::to_string(res.error()).c_str());
    return {-1, 0};
  }
  int64_t tokens = 0;
  size_t at = buf.rfind("\"usage\":{");
  if (at != std::string::npos) {
    size_t start = buf.rfind("data: ", at);
    size_t end = buf.find("\n", at);
    json j = json::parse(buf.substr(start + 6, end - start - 6), nullptr, false);
    if (!j.is_discarded() && j["usage"].is_object()) tokens = j["usage"]["completion_tokens"];
  }
  if (ttft < 0) ttft = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  (void)events;
  return {ttft, tokens};
}

Result run(int port, int clients, int requests, int max_tokens) {
  std::atomic<int> next{0};
  std::vector<double> ttft(size_t(requests), -1);
  std::vector<int64_t> toks(size_t(requests), 0);
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t)
    threads.emplace_back([&] {
      for (int i = next++; i < requests; i = next++) {
        auto [ms, n] = one_request(port, i, max_tokens);
        ttft[size_t(i)] = ms;
        toks[size_t(i)] = n;
      }
    });
  for (auto& th : threads) th.join();
  Result r;
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> ok;
  for (int i = 0; i < requests; ++i) {
    if (ttft[size_t(i)] < 0) {
      ++r.failed;
      continue;
    }
    ok.push_back(ttft[size_t(i)]);
    r.tokens += toks[size_t(i)];
  }
  std::sort(ok.begin(), ok.end());
  if (!ok.empty()) {
    r.ttft_p50_ms = ok[ok.size() / 2];
    r.ttft_p90_ms = ok[std::min(ok.size() - 1, ok.size() * 9 / 10)];
  }
  r.req_per_s = double(ok.size()) / r.seconds;
  r.tok_per_s = double(r.tokens) / r.seconds;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model;
  int requests = 64, max_tokens = 32;
  std::vector<int> client_counts = {1, 8, 32};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_serve: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") {
      model = value();
    } else if (a == "--requests") {
      requests = std::stoi(value());
    } else if (a == "--max-tokens") {
      max_tokens = std::stoi(value());
    } else if (a == "--clients") {
      client_counts.clear();
      std::stringstream ss(value());
      std::string item;
      while (std::getline(ss, item, ',')) client_counts.push_back(std::stoi(item));
    } else {
      std::fprintf(stderr,
                   "usage: bench_serve --model DIR [--requests N] [--max-tokens N] "
                   "[--clients 1,8,32]\n");
      return 2;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "bench_serve: give --model DIR (a checkpoint with tokenizer.json)\n");
    return 2;
  }
  std::printf(
      "bench_serve: %s, %d streamed requests per point, max_tokens %d, %u hardware threads\n",
      model.c_str(), requests, max_tokens, std::thread::hardware_concurrency());
  std::printf("%-12s %8s %9s %9s %11s %11s %7s\n", "mode", "clients", "req/s", "tok/s",
              "ttft_p50ms", "ttft_p90ms", "failed");
  std::vector<std::pair<int, Result>> base, batched;
  for (int mode = 0; mode < 2; ++mode) {
    shoal::serve::ServerConfig cfg;
    cfg.model_dir = model;
    cfg.model_name = "bench";
    cfg.port = 0;
    cfg.max_sequences = mode == 0 ? 1 : 64;
    cfg.log = [](const std::string&) {};
    shoal::serve::Server server(cfg);
    int port = server.bind();
    std::thread listener([&] { server.listen(); });
    one_request(port, 9999, 4);  // warm-up
    for (int clients : client_counts) {
      Result r = run(port, clients, std::max(requests, clients), max_tokens);
      const char* name = mode == 0 ? "one-at-time" : "batched";
      std::printf("%-12s %8d %9.2f %9.1f %11.1f %11.1f %7lld\n", name, clients, r.req_per_s,
                  r.tok_per_s, r.ttft_p50_ms, r.ttft_p90_ms, static_cast<long long>(r.failed));
      std::fflush(stdout);
      (mode == 0 ? base : batched).push_back({clients, r});
    }
    server.stop();
    listener.join();
  }
  std::printf("ratio (continuous batching / one request at a time):\n");
  for (size_t i = 0; i < base.size(); ++i)
    std::printf("  %2d clients: req/s x%.2f, tok/s x%.2f, ttft_p50 x%.2f\n", base[i].first,
                batched[i].second.req_per_s / base[i].second.req_per_s,
                batched[i].second.tok_per_s / std::max(1e-9, base[i].second.tok_per_s),
                batched[i].second.ttft_p50_ms / std::max(1e-9, base[i].second.ttft_p50_ms));
  return 0;
}
