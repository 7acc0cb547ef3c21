// shoal serve: an OpenAI-compatible HTTP API over one checkpoint (serve/server.h does the work).
// Prints "shoal serve: listening on http://HOST:PORT (model NAME)" on stdout once it accepts
// connections, an access-log line per request on stderr; SIGINT/SIGTERM stop it.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <thread>

#include "cli/commands.h"
#include "engine/device.h"
#include "serve/server.h"

namespace shoal::cli {

Run add_serve(CLI::App& app) {
  auto c = std::make_shared<serve::ServerConfig>();
  app.add_option("--model", c->model_dir,
                 "checkpoint directory (config.json, safetensors, "
                 "tokenizer.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--device", c->device, kDeviceHelp)->capture_default_str();
  app.add_option("--precision", c->precision, kPrecisionHelp)->capture_default_str();
  app.add_option("--host", c->host, "address to listen on")->capture_default_str();
  app.add_option("--port", c->port, "port (0 = any free port)")->capture_default_str();
  app.add_option("--api-key", c->api_key, "require 'Authorization: Bearer KEY'");
  app.add_option("--name", c->model_name, "model id clients send (default: the directory's name)");
  app.add_option("--max-sequences", c->max_sequences, "samples decoding at once")
      ->capture_default_str();
  app.add_option("--max-batch-tokens", c->max_batch_tokens, "new tokens per forward")
      ->capture_default_str();
  app.add_option("--kv-cache-tokens", c->cache_tokens,
                 "KV cache pool in tokens (0 = max-sequences x context, at most 262144)")
      ->capture_default_str();
  app.add_option("--threads", c->threads, "HTTP worker threads (connections served at once)")
      ->capture_default_str();
  app.add_option("--max-body-bytes", c->max_body_bytes, "larger request bodies get 413")
      ->capture_default_str();
  return [c]() {
    // Signals go to one waiting thread, never to the HTTP or engine threads (blocked before any
    // thread starts; those threads inherit the mask). A closed client socket is an error, not a
    // signal.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    signal(SIGPIPE, SIG_IGN);
    serve::Server server(*c);
    int port = server.bind();
    std::atomic<bool> finished{false};
    std::thread waiter([&] {
      timespec tick = {0, 200 * 1000 * 1000};
      while (!finished) {
        int sig = sigtimedwait(&set, nullptr, &tick);
        if (sig > 0) {
          std::fprintf(stderr, "shoal serve: stopping (signal %d)\n", sig);
          server.stop();
          return;
        }
      }
    });
    std::printf("shoal serve: listening on http://%s:%d (model %s)\n", c->host.c_str(), port,
                server.model_name().c_str());
    std::fflush(stdout);
    server.listen();
    finished = true;  // listen() also returns when the server fails
    waiter.join();
    return 0;
  };
}

}  // namespace shoal::cli
