// shoal tool list | run: the sandbox's tools from the command line. `list` prints the OpenAI
// function descriptions; `run NAME ARGS_JSON` prints the server's JSON reply, starting a private
// local server for the one call when no --endpoint is given.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "base/error.h"
#include "base/log.h"
#include "cli/commands.h"
#include "sandbox/client.h"
#include "sandbox/server.h"
#include "sandbox/tools.h"

namespace shoal::cli {

Run add_tool(CLI::App& app) {
  struct Opts {
    std::string endpoint, name, args = "{}", session, mode = "auto", limits;
    int64_t timeout_ms = 60000;
  };
  auto o = std::make_shared<Opts>();
  app.require_subcommand(1);
  CLI::App* list = app.add_subcommand("list", "Print the tools as a JSON array (OpenAI form)");
  list->add_option("--endpoint", o->endpoint, "ask this server instead of the built-in list");
  CLI::App* run = app.add_subcommand("run", "Run one tool call and print the JSON reply");
  run->add_option("name", o->name, "tool name (see shoal tool list)")->required();
  run->add_option("args", o->args, "arguments as a JSON object")->capture_default_str();
  run->add_option("--session", o->session, "session id (state and workspace persist)");
  run->add_option("--endpoint", o->endpoint,
                  "server (ipc://PATH or tcp://HOST:PORT); default: start a local one");
  run->add_option("--mode", o->mode, "auto, session, fork or fresh")
      ->check(CLI::IsMember({"auto", "session", "fork", "fresh"}))
      ->capture_default_str();
  run->add_option("--limits", o->limits, "per-call limits as a JSON object");
  run->add_option("--timeout-ms", o->timeout_ms, "client timeout")->capture_default_str();
  return [o, list]() {
    if (list->parsed()) {
      if (o->endpoint.empty()) {
        std::printf("%s\n", sandbox::tool_schemas().dump(2).c_str());
        return 0;
      }
      sandbox::Client client({o->endpoint, o->timeout_ms, 3});
      sandbox::Reply r = client.admin("list_tools");
      SHOAL_CHECK(r.status == "ok", "{}: {}", r.error_kind, r.error_message);
      std::printf("%s\n", r.result.dump(2).c_str());
      return 0;
    }
    sandbox::json request = {{"tool", o->name}, {"mode", o->mode}};
    sandbox::json args = sandbox::json::parse(o->args, nullptr, false);
    SHOAL_CHECK(!args.is_discarded() && args.is_object(), "ARGS_JSON must be a JSON object: {}",
                o->args);
    request["arguments"] = args;
    if (!o->session.empty()) request["session"] = o->session;
    if (!o->limits.empty()) {
      sandbox::json lim = sandbox::json::parse(o->limits, nullptr, false);
      SHOAL_CHECK(!lim.is_discarded() && lim.is_object(), "--limits must be a JSON object");
      request["limits"] = lim;
    }
    sandbox::Request req;
    try {
      req = sandbox::parse_request(request.dump());
    } catch (const sandbox::RequestError& e) {
      SHOAL_FAIL("{}", e.message);
    }
    std::unique_ptr<sandbox::Server> local;
    std::thread serving;
    std::string endpoint = o->endpoint;
    if (endpoint.empty()) {
      // The private server's startup lines would mix with the JSON on stdout.
      if (spdlog::get_level() == spdlog::level::info) log::set_level("warn");
      sandbox::ServerOptions opt;
      std::string dir = "/tmp/shoal-sandboxd/tool-" + std::to_string(getpid());
      opt.endpoint = "ipc://" + dir + "/sock";
      opt.state_dir = dir;
      opt.workers = 1;
      local = std::make_unique<sandbox::Server>(opt);
      endpoint = local->endpoint();
      serving = std::thread([&] { local->run(); });
    }
    sandbox::Reply reply;
    {
      sandbox::Client client({endpoint, o->timeout_ms, 3});
      reply = client.call(req);
    }
    if (local) {
      local->stop();
      serving.join();
      local.reset();
      std::error_code ec;
      std::filesystem::remove_all("/tmp/shoal-sandboxd/tool-" + std::to_string(getpid()), ec);
    }
    std::printf("%s\n", sandbox::dump(sandbox::to_json(reply)).c_str());
    return reply.status == "ok" ? 0 : 1;
  };
}

}  // namespace shoal::cli
