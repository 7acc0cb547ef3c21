// Tool execution (executor.h): modes, sessions, the fork-server pool, and outcome → Reply.
#include "sandbox/executor.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "base/error.h"
#include "base/log.h"
#include "sandbox/calculator.h"
#include "sandbox/files.h"
#include "sandbox/tools.h"

namespace shoal::sandbox {

namespace fs = std::filesystem;

struct Executor::Box {
  std::mutex mu;
  std::string name;  // session name, "pool-N" or "tmp-N"
  bool is_session = false;
  Limits limits;  // sandbox-level limits, fixed when the box is made
  std::unique_ptr<UidLease> uid;
  std::unique_ptr<Workspace> ws;
  std::unique_ptr<SandboxProcess> driver;
  Clock::time_point last_used = Clock::now();
  uint64_t runs = 0;
};

namespace {

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

void fill_output(Reply& reply, Capture& cap) {
  reply.stdout_text = std::move(cap.out);
  reply.stderr_text = std::move(cap.err);
  reply.stdout_truncated = cap.out_truncated;
  reply.stderr_truncated = cap.err_truncated;
}

void set_error(Reply& reply, const char* kind, std::string message) {
  reply.status = "error";
  reply.error_kind = kind;
  reply.error_message = std::move(message);
}

std::string get_arg(const json& args, const char* key, const char* fallback = "") {
  return args.contains(key) ? args[key].get<std::string>() : fallback;
}

constexpr const char* kDefaultTestCommand = "python3 -m unittest discover -v";

}  // namespace

Executor::Executor(IsolationEnv& env, ExecutorConfig config) : env_(env), config_(config) {
  for (const auto& m : config_.mcp_servers)
    mcp_.push_back(std::make_unique<McpConnection>(env_, m, config_.defaults));
  for (int i = 0; i < std::max(1, config_.pool_slots); ++i) {
    auto box = std::make_shared<Box>();
    box->name = "pool-" + std::to_string(i);
    box->limits = config_.defaults;
    pool_.push_back(box);
  }
}

Executor::~Executor() {
  cancel_all();
  mcp_.clear();
  std::lock_guard lock(sessions_mu_);
  for (auto& box : pool_) {
    std::lock_guard b(box->mu);
    stop_driver(*box);
    box->ws.reset();
  }
  for (auto& [name, box] : sessions_) {
    std::lock_guard b(box->mu);
    stop_driver(*box);
    box->ws.reset();
  }
  sessions_.clear();
}

std::unique_ptr<SandboxProcess> Executor::launch(Box& box, const LaunchSpec& spec) {
  auto p = SandboxProcess::launch(env_, *box.ws, spec);
  std::lock_guard lock(live_mu_);
  live_[p.get()] = box.name;
  return p;
}

void Executor::retire(std::unique_ptr<SandboxProcess>& process) {
  if (!process) return;
  {
    std::lock_guard lock(live_mu_);
    live_.erase(process.get());
  }
  process.reset();  // kills whatever is left, reaps, removes the cgroup
}

void Executor::cancel_all() {
  cancelled_ = true;
  std::lock_guard lock(live_mu_);
  for (auto& [p, name] : live_) p->kill_all();
}

void Executor::ensure_workspace(Box& box) {
  if (box.ws) return;
  if (!box.uid) box.uid = env_.lease_uid();
  std::string dir = (box.is_session ? "s-" : "") + box.name;
  box.ws = std::make_unique<Workspace>(env_, dir, box.uid->uid(), box.limits.disk_mb);
}

void Executor::start_driver(Box& box) {
  ensure_workspace(box);
  LaunchSpec spec;
  spec.command = {env_.python, "-I", "-B", "/.shoal/driver.py"};
  spec.driver = true;
  spec.limits = box.limits;
  box.driver = launch(box, spec);
  Capture cap(4096);
  std::string line;
  auto end = pump(*box.driver, "", cap, line, Clock::now() + std::chrono::seconds(15), true);
  json ready = end == PumpEnd::line ? json::parse(line, nullptr, false) : json();
  if (!ready.is_object() || !ready.value("ready", false)) {
    retire(box.driver);
    SHOAL_FAIL("the sandbox's interpreter did not start ({}): {}",
               end == PumpEnd::deadline ? "no answer in 15 s" : "it exited", cap.err);
  }
}

void Executor::stop_driver(Box& box) {
  retire(box.driver);
}

std::shared_ptr<Executor::Box> Executor::session_box(const std::string& name,
                                                     const Limits& limits) {
  std::vector<std::shared_ptr<Box>> evicted;
  std::shared_ptr<Box> box;
  {
    std::lock_guard lock(sessions_mu_);
    auto it = sessions_.find(name);
    if (it != sessions_.end()) return it->second;
    while (static_cast<int>(sessions_.size()) >= config_.max_sessions) {
      // Evict the least recently used idle session.
      auto oldest = sessions_.end();
      for (auto i = sessions_.begin(); i != sessions_.end(); ++i)
        if (i->second.use_count() == 1 &&
            (oldest == sessions_.end() || i->second->last_used < oldest->second->last_used))
          oldest = i;
      if (oldest == sessions_.end()) break;  // all busy: go over the cap rather than fail
      evicted.push_back(oldest->second);
      sessions_.erase(oldest);
    }
    box = std::make_shared<Box>();
    box->name = name;
    box->is_session = true;
    box->limits = limits;
    sessions_[name] = box;
  }
  for (auto& e : evicted) {
    std::lock_guard b(e->mu);
    log::info("sandbox: closing least recently used session {}", e->name);
    stop_driver(*e);
    e->ws.reset();
  }
  return box;
}

bool Executor::close_session(const std::string& name) {
  std::shared_ptr<Box> box;
  {
    std::lock_guard lock(sessions_mu_);
    auto it = sessions_.find(name);
    if (it == sessions_.end()) return false;
    box = it->second;
    sessions_.erase(it);
  }
  std::lock_guard b(box->mu);
  stop_driver(*box);
  box->ws.reset();
  return true;
}

void Executor::close_idle_sessions() {
  std::vector<std::shared_ptr<Box>> idle;
  {
    std::lock_guard lock(sessions_mu_);
    auto cutoff = Clock::now() - std::chrono::milliseconds(config_.session_idle_ms);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second.use_count() == 1 && it->second->last_used < cutoff) {
        idle.push_back(it->second);
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& box : idle) {
    std::lock_guard b(box->mu);
    stop_driver(*box);
    box->ws.reset();
  }
}

void Executor::driver_op(Box& box, json op, const Limits& limits, Clock::time_point deadline,
                         Reply& reply) {
  if (!box.driver) start_driver(box);
  discard_pending(*box.driver);
  int64_t cpu_s = (limits.cpu_ms + 999) / 1000;
  op["cpu_s"] = cpu_s;
  op["memory_bytes"] = box.limits.memory_mb << 22;
  int64_t oom_before = box.driver->oom_kills();
  Capture cap(static_cast<size_t>(limits.output_bytes));
  std::string line;
  PumpEnd end = pump(*box.driver, op.dump() + "\n", cap, line, deadline, true);
  ++box.runs;
  if (end == PumpEnd::deadline) {
    box.driver->kill_all();
    // What the sandbox printed before it was killed is still worth showing.
    Capture rest(cap.cap);
    std::string ignored;
    pump(*box.driver, "", rest, ignored, Clock::now() + std::chrono::milliseconds(200), true);
    cap.out += rest.out.substr(0, cap.cap - std::min(cap.cap, cap.out.size()));
    cap.err += rest.err.substr(0, cap.cap - std::min(cap.cap, cap.err.size()));
  }
  fill_output(reply, cap);
  if (end == PumpEnd::line) {
    json r = json::parse(line, nullptr, false);
    if (r.is_object() && r.contains("exit") && r["exit"].is_number_integer()) {
      reply.exit_code = r["exit"].get<int>();
      reply.cpu_ms = r.value("cpu_ms", 0.0);
      bool oom = box.driver->oom_kills() > oom_before;
      std::string note =
          r.contains("note") && r["note"].is_string() ? r["note"].get<std::string>() : "";
      if (oom)
        set_error(reply, error_kind::memory_limit,
                  fmt::format("killed: memory limit of {} MiB exceeded", box.limits.memory_mb));
      else if (note == "cpu_limit")
        set_error(reply, error_kind::cpu_limit,
                  fmt::format("CPU time limit of {} s exceeded", cpu_s));
      return;
    }
    // The code wrote on the control pipe itself: the session cannot be trusted to answer again.
    end = PumpEnd::eof;
  }
  bool oom = box.driver->oom_kills() > oom_before;
  stop_driver(box);
  reply.exit_code = -1;
  reply.session_reset = box.is_session;
  std::string lost = box.is_session ? " (the session's interpreter state is lost)" : "";
  if (end == PumpEnd::deadline)
    set_error(
        reply, error_kind::timeout,
        fmt::format("wall-clock limit of {} ms reached: sandbox killed{}", limits.wall_ms, lost));
  else if (oom)
    set_error(reply, error_kind::memory_limit,
              fmt::format("sandbox killed: memory limit of {} MiB exceeded{}", box.limits.memory_mb,
                          lost));
  else
    set_error(reply, error_kind::sandbox_died,
              "the sandbox process exited or was killed during the call" + lost);
}

void Executor::fresh_run(const std::vector<std::string>& command, Box* session,
                         const Limits& limits, Clock::time_point deadline, Reply& reply) {
  Box tmp;
  Box& box = session ? *session : tmp;
  if (!session) {
    tmp.name = "tmp-" + std::to_string(counter_++);
    tmp.limits = limits;
  }
  ensure_workspace(box);
  LaunchSpec spec;
  spec.command = command;
  spec.cpu_rlimit = true;
  spec.limits = box.limits;
  spec.limits.cpu_ms = limits.cpu_ms;
  auto p = launch(box, spec);
  Capture cap(static_cast<size_t>(limits.output_bytes));
  std::string line;
  PumpEnd end = pump(*p, "", cap, line, deadline, false);
  if (end == PumpEnd::deadline) p->kill_all();
  struct rusage ru {};
  int64_t oom = p->oom_kills();
  int status = p->wait(&ru);
  if (end == PumpEnd::deadline) {
    std::string ignored;
    Capture rest(cap.cap);
    pump(*p, "", rest, ignored, Clock::now() + std::chrono::milliseconds(200), false);
  }
  fill_output(reply, cap);
  retire(p);
  reply.cpu_ms = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                 (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
  reply.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (end == PumpEnd::deadline)
    set_error(reply, error_kind::timeout,
              fmt::format("wall-clock limit of {} ms reached: sandbox killed", limits.wall_ms));
  else if (oom > 0)
    set_error(reply, error_kind::memory_limit,
              fmt::format("killed: memory limit of {} MiB exceeded", box.limits.memory_mb));
  // SIGXCPU comes only from the soft CPU limit (rusage can read a little under it on a busy
  // machine); SIGKILL is the hard limit only when the time says so.
  else if (reply.exit_code == 128 + SIGXCPU ||
           (reply.exit_code == 128 + SIGKILL &&
            reply.cpu_ms >= static_cast<double>((limits.cpu_ms + 999) / 1000 * 1000) - 50))
    set_error(reply, error_kind::cpu_limit,
              fmt::format("CPU time limit of {} s exceeded", (limits.cpu_ms + 999) / 1000));
  else if (WIFSIGNALED(status))
    set_error(reply, error_kind::sandbox_died, "the sandbox was killed during the call");
}

void Executor::run_code(const Request& request, const Limits& limits, Clock::time_point deadline,
                        int slot, Reply& reply) {
  const std::string& tool = request.tool;
  const json& args = request.arguments;
  Mode mode = request.mode;
  if (mode == Mode::automatic) mode = request.session.empty() ? Mode::fork : Mode::session;
  if (mode == Mode::session && request.session.empty())
    throw ToolError{error_kind::invalid_arguments, "mode 'session' needs a session id"};
  reply.mode = mode_name(mode);

  std::shared_ptr<Box> box;
  if (!request.session.empty())
    box = session_box(request.session, limits);
  else if (mode == Mode::fork)
    box = pool_[static_cast<size_t>(slot) % pool_.size()];
  std::unique_lock<std::mutex> lock;
  if (box) lock = std::unique_lock<std::mutex>(box->mu);
  if (box) box->last_used = Clock::now();

  // run_tests: files first, then the command (as the shell tool would run it).
  std::string command = tool == "shell" ? get_arg(args, "command") : "";
  std::string cwd = "/work";
  std::string scratch;  // pool runs: a directory of the pool's workspace, removed afterwards
  if (box && !box->is_session) {
    ensure_workspace(*box);
    scratch = "run-" + std::to_string(counter_++);
    std::string dir = box->ws->path() + "/" + scratch;
    SHOAL_CHECK(mkdir(dir.c_str(), 0700) == 0, "mkdir {} failed", dir);
    if (env_.root) SHOAL_CHECK(chown(dir.c_str(), box->uid->uid(), box->uid->uid()) == 0, "chown");
    cwd += "/" + scratch;
  }
  struct ScratchCleanup {
    std::string path;
    ~ScratchCleanup() {
      std::error_code ec;
      if (!path.empty()) fs::remove_all(path, ec);
    }
  } cleanup{scratch.empty() ? "" : box->ws->path() + "/" + scratch};

  if (tool == "run_tests") command = get_arg(args, "command", kDefaultTestCommand);

  if (mode == Mode::fresh) {
    std::vector<std::string> cmd =
        tool == "python"
            ? std::vector<std::string>{env_.python, "-I", "-S", "-B", "-c", get_arg(args, "code")}
            : std::vector<std::string>{"/bin/sh", "-c", command};
    if (tool == "run_tests" && args.contains("files")) {
      // The files and the run need one workspace: a session's, or one made for this call.
      Box tmp;
      Box* target = box.get();
      if (!target) {
        tmp.name = "tmp-" + std::to_string(counter_++);
        tmp.limits = limits;
        target = &tmp;
      }
      ensure_workspace(*target);
      for (auto& [path, content] : args["files"].items())
        write_workspace_file(target->ws->path(), target->uid->uid(), path,
                             content.get<std::string>());
      fresh_run(cmd, target, limits, deadline, reply);
      return;
    }
    if (box) ensure_workspace(*box);
    fresh_run(cmd, box.get(), limits, deadline, reply);
    return;
  }

  ensure_workspace(*box);
  if (tool == "run_tests" && args.contains("files")) {
    std::string prefix = scratch.empty() ? "" : scratch + "/";
    for (auto& [path, content] : args["files"].items()) {
      if (path.empty() || path[0] == '/')
        throw ToolError{error_kind::tool_error,
                        "path '" + path + "' is absolute: paths are relative to the workspace"};
      write_workspace_file(box->ws->path(), box->uid->uid(), prefix + path,
                           content.get<std::string>());
    }
  }
  json op;
  if (tool == "python")
    op = {{"op", mode == Mode::session ? "exec" : "fork"}, {"code", get_arg(args, "code")}};
  else
    op = {{"op", "shell"}, {"command", command}};
  op["cwd"] = cwd;
  driver_op(*box, op, limits, deadline, reply);
}

Reply Executor::call(const Request& request, Clock::time_point received, int slot) {
  auto start = Clock::now();
  Reply reply;
  reply.id = request.id;
  try {
    if (cancelled_) {
      reply = error_reply(request.id, error_kind::shutting_down, "the server is shutting down");
      return reply;
    }
    McpConnection* mcp = nullptr;
    if (auto sep = request.tool.find("__"); sep != std::string::npos)
      for (auto& m : mcp_)
        if (m->name() == request.tool.substr(0, sep)) mcp = m.get();
    if (mcp) {
      Limits limits;
      try {
        limits = clamp(apply_limits_json(request.limits, config_.defaults), config_.max);
      } catch (const Error& e) {
        return error_reply(request.id, error_kind::invalid_arguments, "limits: " + e.message());
      }
      reply.mode = "mcp";
      mcp->call(request.tool.substr(request.tool.find("__") + 2), request.arguments,
                start + std::chrono::milliseconds(limits.wall_ms), reply);
      reply.wall_ms = ms_since(start);
      return reply;
    }
    if (!is_known_tool(request.tool)) {
      std::string names;
      for (const auto& t : tool_schemas())
        names += (names.empty() ? "" : ", ") + t["function"]["name"].get<std::string>();
      return error_reply(request.id, error_kind::unknown_tool,
                         fmt::format("unknown tool '{}' (available: {})", request.tool, names));
    }
    std::string bad = check_arguments(request.tool, request.arguments);
    if (!bad.empty()) return error_reply(request.id, error_kind::invalid_arguments, bad);
    Limits limits;
    try {
      limits = clamp(apply_limits_json(request.limits, config_.defaults), config_.max);
    } catch (const Error& e) {
      return error_reply(request.id, error_kind::invalid_arguments, "limits: " + e.message());
    }
    auto deadline = start + std::chrono::milliseconds(limits.wall_ms);
    if (request.timeout_ms > 0) {
      auto client_deadline = received + std::chrono::milliseconds(request.timeout_ms);
      if (start >= client_deadline)
        return error_reply(request.id, error_kind::queue_timeout,
                           fmt::format("the request waited {:.0f} ms in the queue, past its "
                                       "timeout of {} ms",
                                       ms_since(received), request.timeout_ms));
      deadline = std::min(deadline, client_deadline);
    }
    const std::string& tool = request.tool;
    if (tool == "calculator") {
      reply.mode = "in-process";
      reply.result = calculate(request.arguments["expression"].get<std::string>());
      reply.stdout_text = reply.result["value"].get<std::string>() + "\n";
    } else if (tool == "files") {
      if (request.session.empty())
        return error_reply(request.id, error_kind::invalid_arguments,
                           "the files tool works on a session's workspace: give a session id");
      reply.mode = "host";
      auto box = session_box(request.session, limits);
      std::lock_guard lock(box->mu);
      box->last_used = Clock::now();
      ensure_workspace(*box);
      reply.result = files_action(box->ws->path(), box->uid->uid(), request.arguments,
                                  static_cast<size_t>(limits.output_bytes),
                                  static_cast<size_t>(box->limits.file_mb) << 20);
      if (request.arguments["action"] == "read")
        reply.stdout_text = reply.result["content"].get<std::string>();
    } else {
      run_code(request, limits, deadline, slot, reply);
      if (tool == "run_tests") {
        reply.result = parse_test_report(reply.stdout_text + "\n" + reply.stderr_text);
        reply.result["exit_code"] = reply.exit_code;
        reply.result["all_passed"] = reply.status == "ok" && reply.exit_code == 0 &&
                                     reply.result["failed"] == 0 && reply.result["errors"] == 0;
      }
    }
  } catch (const ToolError& e) {
    Reply r = error_reply(request.id, e.kind, e.message);
    r.mode = reply.mode;
    reply = std::move(r);
  } catch (const Error& e) {
    Reply r =
        error_reply(request.id, cancelled_ ? error_kind::shutting_down : error_kind::sandbox_failed,
                    e.message());
    reply = std::move(r);
  } catch (const std::exception& e) {
    reply = error_reply(request.id, error_kind::internal, e.what());
  }
  reply.wall_ms = ms_since(start);
  return reply;
}

json Executor::tools() {
  json all = tool_schemas();
  for (auto& m : mcp_) {
    try {
      for (auto& t : m->tools(Clock::now() + std::chrono::seconds(15))) all.push_back(t);
    } catch (const ToolError& e) {
      log::warn("sandbox: MCP server {} left out of the tool list: {}", m->name(), e.message);
    } catch (const std::exception& e) {
      log::warn("sandbox: MCP server {} left out of the tool list: {}", m->name(), e.what());
    }
  }
  return all;
}

json Executor::stats() const {
  json live = json::array();
  {
    std::lock_guard lock(live_mu_);
    for (auto& [p, name] : live_) live.push_back({{"name", name}, {"pid", p->pid()}});
  }
  json sessions = json::array();
  {
    std::lock_guard lock(sessions_mu_);
    for (auto& [name, box] : sessions_) sessions.push_back(name);
  }
  return {{"isolation", env_.describe()},
          {"cgroups", env_.cgroups ? env_.cgroups->describe() : "none"},
          {"sessions", sessions},
          {"sandboxes", live},
          {"defaults", to_json(config_.defaults)},
          {"max", to_json(config_.max)}};
}

}  // namespace shoal::sandbox
