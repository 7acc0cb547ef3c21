// `shoal serve`'s server: an OpenAI-compatible HTTP API (GET /v1/models, POST
// /v1/chat/completions, streamed over SSE or not) in front of one model and its continuous-batching
// scheduler. Every request thread submits to the one scheduler, so concurrent requests share the
// batch; a streaming client that goes away cancels its request. Errors are OpenAI's JSON error
// form with the HTTP status they mean; one access-log line per request. The HTTP is cpp-httplib,
// the API translation serve/openai.h. Not here: the CLI (cli/serve.cpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace shoal::serve {

struct ServerConfig {
  std::string model_dir;           // an HF checkpoint directory with a tokenizer.json
  std::string device = "cpu";      // open_backend (engine/device.h): cpu, cuda, cuda:N
  std::string precision = "bf16";  // on a GPU: bf16 or f32 GEMMs and attention
  std::string model_name;          // the id clients send; empty = the directory's name
  std::string host = "127.0.0.1";
  int port = 8000;      // 0 = any free port (Server::port() says which)
  std::string api_key;  // non-empty: requests need "Authorization: Bearer KEY"
  size_t max_body_bytes = size_t(8) << 20;
  int threads = 64;                // HTTP worker threads (open connections served at once)
  int64_t max_sequences = 64;      // scheduler: samples decoding at once
  int64_t max_batch_tokens = 512;  // scheduler: new tokens per forward
  int64_t cache_tokens = 0;        // KV cache pool in tokens; 0 = max_sequences x the context,
                                   // at most 2^18
  // Access-log sink (one line per request); default: stderr.
  std::function<void(const std::string&)> log;
};

class Server {
 public:
  // Loads the model and its tokenizer; throws shoal::Error naming what is missing.
  explicit Server(ServerConfig config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port (throws when it cannot) and returns the port.
  int bind();
  // Serves until stop() (from any thread, e.g. a signal handler thread). Needs bind() first.
  void listen();
  void stop();
  int port() const { return port_; }
  const std::string& model_name() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace shoal::serve
