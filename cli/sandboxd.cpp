// shoal sandboxd: runs the sandbox server (sandbox/server.h) on an ipc:// or tcp:// endpoint until
// SIGTERM or SIGINT, then shuts down cleanly (running sandboxes killed, workspaces removed).
// Optionally with MCP servers (sandbox/mcp.h) whose tools join the built-in ones.
#include <signal.h>

#include <cstdio>

#include "base/log.h"
#include "cli/commands.h"
#include "sandbox/server.h"

namespace shoal::cli {

namespace {
sandbox::Server* g_server = nullptr;
void on_signal(int) {
  if (g_server) g_server->stop();  // async-signal-safe (an eventfd write)
}
}  // namespace

Run add_sandboxd(CLI::App& app) {
  struct Opts {
    std::string bind, limits, state_dir, mcp;
    int workers = 2;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--bind", o->bind, "ipc://PATH or tcp://HOST:PORT")->required();
  app.add_option("--workers", o->workers, "calls run at once")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--limits", o->limits,
                 "JSON file {\"defaults\": {...}, \"max\": {...}} (keys: wall_ms, cpu_ms, "
                 "memory_mb, pids, file_mb, disk_mb, nofile, output_bytes)")
      ->check(CLI::ExistingFile);
  app.add_option("--mcp-config", o->mcp,
                 "JSON file {\"servers\": {\"NAME\": {\"command\": [...], \"files\": {...}}}}: "
                 "MCP servers run in sandboxes, their tools offered as NAME__TOOL")
      ->check(CLI::ExistingFile);
  app.add_option("--state-dir", o->state_dir,
                 "workspaces and lock (default /tmp/shoal-sandboxd/<endpoint>)");
  return [o]() {
    sandbox::ServerOptions opt;
    opt.endpoint = o->bind;
    opt.workers = o->workers;
    opt.state_dir = o->state_dir;
    if (!o->limits.empty()) sandbox::load_limits_file(o->limits, opt.exec);
    if (!o->mcp.empty()) opt.exec.mcp_servers = sandbox::load_mcp_config(o->mcp);
    sandbox::Server server(opt);
    g_server = &server;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    std::fprintf(stderr, "sandboxd: listening on %s (%s)\n", server.endpoint().c_str(),
                 server.describe().c_str());
    server.run();
    g_server = nullptr;
    return 0;
  };
}

}  // namespace shoal::cli
