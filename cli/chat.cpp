// `shoal chat --model DIR [--tools python,calculator] [--system TEXT]`: a conversation with a
// checkpoint in the terminal (actors/chat.h does the work). On a terminal: readline line editing
// and history (~/.shoal_history, or $SHOAL_HISTORY), the reply streamed as it is generated, tool
// calls and their outputs shown as they run, Ctrl-C stopping the current generation (not the
// program), Ctrl-D or /exit quitting. When stdin is not a terminal: one user message per line,
// replies printed, no prompts or escape codes. Commands: /help /tools /system /temperature
// /reset /save /exit.
#include <poll.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "actors/chat.h"
#include "actors/eval.h"
#include "base/error.h"
#include "base/log.h"
#include "cli/commands.h"
#include "engine/device.h"

namespace shoal::cli {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::atomic<bool> g_interrupt{false};

void on_sigint(int) {
  g_interrupt = true;
}

// Terminal output: colours only on a terminal.
struct Out {
  bool tty = false;
  void text(const std::string& s) const {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  }
  std::string dim(const std::string& s) const { return tty ? "\033[2m" + s + "\033[0m" : s; }
  std::string cyan(const std::string& s) const { return tty ? "\033[36m" + s + "\033[0m" : s; }
  std::string yellow(const std::string& s) const { return tty ? "\033[33m" + s + "\033[0m" : s; }
};

std::string clip(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  return s.substr(0, n) + fmt::format("… ({} more bytes)", s.size() - n);
}

const char* kHelp =
    "Commands:\n"
    "  /help              this list\n"
    "  /tools             the tools the model may call\n"
    "  /system [TEXT]     show or set the system prompt (applies to the whole conversation)\n"
    "  /temperature [T]   show or set the sampling temperature (0 = greedy)\n"
    "  /reset             forget the conversation and start a fresh sandbox session\n"
    "  /save FILE         write the conversation as OpenAI-format JSON\n"
    "  /exit              quit (or Ctrl-D)\n"
    "Ctrl-C stops the reply being generated.\n";

class Chat {
 public:
  Chat(actors::ChatSession& s, Out out) : s_(s), out_(out) {}

  // A command line (starting with '/'); false when the chat should end.
  bool command(const std::string& line) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    std::string rest;
    std::getline(in, rest);
    size_t b = rest.find_first_not_of(" \t");
    rest = b == std::string::npos ? "" : rest.substr(b);
    if (cmd == "/exit" || cmd == "/quit") return false;
    if (cmd == "/help") {
      out_.text(kHelp);
    } else if (cmd == "/tools") {
      if (s_.tools().empty()) out_.text("no tools (start with --tools python,calculator,...)\n");
      for (const json& t : s_.tools())
        out_.text(fmt::format("{}: {}\n", t["function"].value("name", ""),
                              t["function"].value("description", "")));
    } else if (cmd == "/system") {
      if (rest.empty()) {
        out_.text(s_.system_prompt().empty() ? "(no system prompt)\n"
                                             : "system: " + s_.system_prompt() + "\n");
      } else {
        s_.set_system_prompt(rest);
        out_.text("system prompt set\n");
      }
    } else if (cmd == "/temperature") {
      if (rest.empty()) {
        out_.text(fmt::format("temperature {:g}\n", s_.temperature()));
      } else {
        try {
          size_t used = 0;
          float t = std::stof(rest, &used);
          SHOAL_CHECK(used == rest.size(), "not a number");
          s_.set_temperature(t);
          out_.text(fmt::format("temperature {:g}\n", t));
        } catch (const std::exception&) {
          out_.text("usage: /temperature T (a number from 0 = greedy to 100)\n");
        }
      }
    } else if (cmd == "/reset") {
      s_.reset();
      out_.text("conversation cleared (new sandbox session)\n");
    } else if (cmd == "/save") {
      if (rest.empty()) {
        out_.text("usage: /save FILE\n");
      } else {
        std::ofstream f(rest);
        f << s_.to_openai_json().dump(2) << "\n";
        out_.text(f.good() ? fmt::format("saved {} messages to {}\n", s_.messages().size(), rest)
                           : fmt::format("cannot write {}\n", rest));
      }
    } else {
      out_.text("unknown command " + cmd + ": /help lists them\n");
    }
    return true;
  }

  // Sends one message; `prefix` (e.g. "model> ") starts the reply's line.
  void message(const std::string& line, const std::string& prefix = "") {
    g_interrupt = false;
    actors::ChatEvents ev;
    out_.text(prefix);
    bool at_line_start = prefix.empty();
    auto ensure_newline = [&] {
      if (!at_line_start) out_.text("\n");
      at_line_start = true;
    };
    ev.on_text = [&](const std::string& t) {
      out_.text(t);
      if (!t.empty()) at_line_start = t.back() == '\n';
    };
    ev.on_tool_call = [&](const std::string& name, const std::string& args) {
      ensure_newline();
      out_.text(out_.cyan("[tool call] " + name + " " + clip(args, 400)) + "\n");
    };
    ev.on_tool_result = [&](const std::string& name, const std::string& output) {
      ensure_newline();
      out_.text(
          out_.dim("[tool output" + (name.empty() ? "" : " " + name) + "] " + clip(output, 2000)) +
          "\n");
    };
    ev.on_notice = [&](const std::string& text) {
      ensure_newline();
      out_.text(out_.yellow("[note] " + text) + "\n");
    };
    try {
      std::string status = s_.send(line, ev, &g_interrupt);
      ensure_newline();
      if (status == "cancelled") out_.text(out_.yellow("[stopped]") + "\n");
    } catch (const Error& e) {
      ensure_newline();
      out_.text("error: " + e.message() + "\n");
    }
    g_interrupt = false;
  }

 private:
  actors::ChatSession& s_;
  Out out_;
};

// ---- the terminal: readline's callback interface, so Ctrl-C at the prompt clears the line ----

std::optional<std::string> g_line;
bool g_eof = false;

void line_handler(char* line) {
  if (!line) {
    g_eof = true;
  } else {
    g_line = std::string(line);
    std::free(line);
  }
  rl_callback_handler_remove();
}

// Reads one line with editing and history; nullopt at Ctrl-D.
std::optional<std::string> read_line(const char* prompt) {
  g_line.reset();
  g_eof = false;
  g_interrupt = false;
  rl_callback_handler_install(prompt, line_handler);
  while (!g_line && !g_eof) {
    pollfd p{STDIN_FILENO, POLLIN, 0};
    int r = poll(&p, 1, 100);
    if (g_interrupt) {  // Ctrl-C at the prompt: drop the line, a fresh prompt
      g_interrupt = false;
      std::fputs("^C", stdout);
      rl_replace_line("", 0);
      rl_crlf();
      rl_on_new_line();
      rl_redisplay();
      continue;
    }
    if (r > 0) rl_callback_read_char();
  }
  if (g_eof) {
    std::fputs("\n", stdout);
    return std::nullopt;
  }
  return g_line;
}

std::string history_file() {
  if (const char* f = std::getenv("SHOAL_HISTORY"); f && *f) return f;
  const char* home = std::getenv("HOME");
  return home && *home ? (fs::path(home) / ".shoal_history").string() : "";
}

}  // namespace

Run add_chat(CLI::App& app) {
  struct Opts {
    actors::ChatOptions chat;
    std::string tools = "python,calculator";
    std::string system;
    bool no_list_tools = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->chat.model_dir, "the model: an HF directory or a run's checkpoint")
      ->required();
  app.add_option("--device", o->chat.device, kDeviceHelp)->capture_default_str();
  app.add_option("--precision", o->chat.precision, kPrecisionHelp)->capture_default_str();
  app.add_option("--tokenizer", o->chat.tokenizer_file,
                 "tokenizer.json (default: MODEL/tokenizer.json)");
  app.add_option("--tools", o->tools,
                 "comma-separated sandbox tools the model may call (\"\" for none; shoal tool "
                 "list shows them)")
      ->capture_default_str();
  CLI::Option* system = app.add_option(
      "--system", o->system, "the system prompt (default: the run's system_prompt, if any)");
  app.add_option("--temperature", o->chat.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--seed", o->chat.seed)->capture_default_str();
  app.add_option("--max-tokens", o->chat.max_tokens, "tokens per assistant turn")
      ->capture_default_str();
  app.add_option("--max-turns", o->chat.max_turns,
                 "assistant turns per message (tool rounds and the answer)")
      ->capture_default_str();
  app.add_flag("--no-list-tools", o->no_list_tools,
               "do not describe the tools in the system message (default: as the run did)");
  app.add_option("--sandbox", o->chat.sandbox_endpoint,
                 "a running shoal sandboxd (default: start a local one)");
  return [o, system]() {
    actors::ChatOptions c = o->chat;
    std::stringstream ts(o->tools);
    for (std::string t; std::getline(ts, t, ',');)
      if (!t.empty()) c.tools.push_back(t);
    // How the run that made the checkpoint showed prompts (system prompt, tool listing).
    std::string from;
    actors::PromptSettings ps = actors::prompt_settings_for_model(c.model_dir, &from);
    c.list_tools = o->no_list_tools ? false : ps.list_tools;
    c.system_prompt = system->count() > 0 ? o->system : ps.system_prompt;
    c.shoal_exe = fs::read_symlink("/proc/self/exe").string();
    Out out;
    bool interactive = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    out.tty = interactive;
    if (!interactive && spdlog::get_level() == spdlog::level::info) log::set_level("warn");
    actors::ChatSession session(c);
    Chat chat(session, out);

    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    struct sigaction old {};
    sigaction(SIGINT, &sa, &old);

    if (!interactive) {
      std::string line;
      while (std::getline(std::cin, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        if (line[0] == '/') {
          if (!chat.command(line)) break;
        } else {
          chat.message(line);
        }
      }
      sigaction(SIGINT, &old, nullptr);
      return 0;
    }

    std::string names;
    for (const std::string& t : c.tools) names += (names.empty() ? "" : ", ") + t;
    out.text(fmt::format("shoal chat: {} ({} tokens of context); tools: {}{}\n", c.model_dir,
                         session.context_tokens(), names.empty() ? "none" : names,
                         from.empty() ? "" : "; prompt settings from " + from));
    out.text(out.dim("/help for commands, Ctrl-C stops a reply, Ctrl-D or /exit quits") + "\n");
    rl_catch_signals = 0;  // our handler: Ctrl-C cancels generation or clears the line
    rl_readline_name = "shoal";
    using_history();
    std::string hist = history_file();
    if (!hist.empty()) read_history(hist.c_str());
    while (true) {
      std::optional<std::string> line = read_line("you> ");
      if (!line) break;
      std::string l = *line;
      if (l.find_first_not_of(" \t") == std::string::npos) continue;
      add_history(l.c_str());
      if (!hist.empty()) {
        if (fs::exists(hist))
          append_history(1, hist.c_str());
        else
          write_history(hist.c_str());
      }
      if (l[0] == '/') {
        if (!chat.command(l)) break;
        continue;
      }
      chat.message(l, out.dim("model> "));
    }
    sigaction(SIGINT, &old, nullptr);
    return 0;
  };
}

}  // namespace shoal::cli
