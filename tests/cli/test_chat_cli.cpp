// `shoal chat` driven as a person would: in a detached tmux session (keys typed with send-keys,
// the screen read with capture-pane) on the tiny chat model (tests/cli/chat_model_fixture.h) —
// a reply that calls the calculator in the sandbox and answers, /tools, /save (the file checked),
// /reset, Ctrl-C stopping a generation while the program stays up, Ctrl-D quitting, the history
// file — and with lines piped into stdin (no prompts, no escape codes). Skips without tmux.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "tests/cli/chat_model_fixture.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using shoal::test::has;

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

bool have_tmux() {
  return std::system("command -v tmux >/dev/null 2>&1") == 0;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// One tmux server of our own (-L, its own config: panes stay after their command exits, so the
// last screen can be read), one session running the command (exec'd: no shell in between to
// catch the terminal's Ctrl-C).
class Tmux {
 public:
  explicit Tmux(const std::string& command) {
    int n = counter_++;
    socket_ = "shoal-test-" + std::to_string(getpid()) + "-" + std::to_string(n);
    name_ = "chat";
    conf_ = fs::temp_directory_path() / (socket_ + ".conf");
    std::ofstream(conf_) << "set -g remain-on-exit on\nset -g history-limit 10000\n";
    std::string cmd = "tmux -L " + socket_ + " -f " + conf_.string() + " new-session -d -s " +
                      name_ + " -x 160 -y 48 " + quote("exec " + command);
    started_ = std::system(cmd.c_str()) == 0;
  }
  ~Tmux() {
    std::system(("tmux -L " + socket_ + " kill-server 2>/dev/null").c_str());
    fs::remove(conf_);
  }
  bool started() const { return started_; }
  void keys(const std::string& keys) {  // tmux key names, e.g. C-c, Enter
    std::system(("tmux -L " + socket_ + " send-keys -t " + name_ + " " + keys).c_str());
  }
  void type(const std::string& text) {  // literal text, then Enter
    std::system(("tmux -L " + socket_ + " send-keys -t " + name_ + " -l " + quote(text)).c_str());
    keys("Enter");
  }
  std::string screen() {
    return run("tmux -L " + socket_ + " capture-pane -p -J -S -1000 -t " + name_);
  }
  bool dead() {  // the command has exited
    return has(run("tmux -L " + socket_ + " list-panes -t " + name_ + " -F '#{pane_dead}'"), "1");
  }
  // Waits until `pred(screen)` holds; returns the last screen.
  template <class Pred>
  std::string wait(Pred pred, double seconds, bool* ok) {
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    std::string s;
    while (std::chrono::steady_clock::now() < until) {
      s = screen();
      if (pred(s)) {
        *ok = true;
        return s;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    *ok = false;
    return s;
  }
  std::string wait_for(const std::string& text, double seconds, bool* ok) {
    return wait([&](const std::string& s) { return has(s, text); }, seconds, ok);
  }

 private:
  static inline int counter_ = 0;
  std::string socket_, name_;
  fs::path conf_;
  bool started_ = false;
};

size_t count_of(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + part.size())) ++n;
  return n;
}

struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() /
          ("shoal_chat_cli_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
};

std::string chat_command(const fs::path& model, const fs::path& history,
                         const std::string& extra = "") {
  return "env SHOAL_HISTORY=" + history.string() + " " + std::string(SHOAL_BINARY) +
         " chat --model " + model.string() + " --temperature 0 --tools calculator " + extra;
}

TEST(ChatCli, ToolCallCommandsAndSaveInATerminal) {
  if (!have_tmux()) GTEST_SKIP() << "tmux is not installed (scripts/install-deps installs it)";
  const auto& m = shoal::test::tiny_chat_model();
  ASSERT_TRUE(m.error.empty()) << m.error;
  TempDir t;
  Tmux tmux(chat_command(m.model, t.dir / "history"));
  ASSERT_TRUE(tmux.started());
  bool ok = false;
  std::string s = tmux.wait_for("you> ", 60, &ok);
  ASSERT_TRUE(ok) << s;
  EXPECT_TRUE(has(s, "tools: calculator")) << s;

  // The model calls the calculator, the sandbox runs it, the model answers.
  tmux.type("What is 12+7?");
  s = tmux.wait([](const std::string& x) { return count_of(x, "you> ") >= 2; }, 60, &ok);
  ASSERT_TRUE(ok) << s;
  EXPECT_TRUE(has(s, "[tool call] calculator")) << s;
  EXPECT_TRUE(has(s, "[tool output calculator] {\"decimal\":\"19\"")) << s;
  EXPECT_TRUE(has(s, "The answer is")) << s;

  tmux.type("/tools");
  s = tmux.wait_for("calculator: ", 20, &ok);
  EXPECT_TRUE(ok) << s;

  fs::path saved = t.dir / "conversation.json";
  tmux.type("/save " + saved.string());
  s = tmux.wait_for("saved ", 20, &ok);
  ASSERT_TRUE(ok) << s;
  std::ifstream f(saved);
  json conv = json::parse(f);
  ASSERT_TRUE(conv["messages"].is_array());
  ASSERT_GE(conv["messages"].size(), 4u) << conv.dump(2);
  EXPECT_EQ(conv["messages"][0]["role"], "user");
  EXPECT_EQ(conv["messages"][0]["content"], "What is 12+7?");
  EXPECT_EQ(conv["messages"][1]["role"], "assistant");
  EXPECT_EQ(conv["messages"][1]["tool_calls"][0]["function"]["name"], "calculator");
  EXPECT_EQ(conv["messages"][2]["role"], "tool");
  EXPECT_TRUE(has(conv["messages"][2]["content"].get<std::string>(), "19"));
  EXPECT_EQ(conv["messages"].back()["role"], "assistant");
  EXPECT_EQ(conv["tools"][0]["function"]["name"], "calculator");

  tmux.type("/reset");
  s = tmux.wait_for("conversation cleared", 20, &ok);
  EXPECT_TRUE(ok) << s;
  fs::path empty = t.dir / "empty.json";
  tmux.type("/save " + empty.string());
  s = tmux.wait_for("saved 0 messages", 20, &ok);
  EXPECT_TRUE(ok) << s;

  tmux.type("/exit");
  s = tmux.wait([&](const std::string&) { return tmux.dead(); }, 20, &ok);
  EXPECT_TRUE(ok) << "/exit did not end the chat: " << s;
  // History: what was typed, in order.
  std::ifstream h(t.dir / "history");
  std::string hist((std::istreambuf_iterator<char>(h)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(has(hist, "What is 12+7?")) << hist;
  EXPECT_TRUE(has(hist, "/tools")) << hist;
}

TEST(ChatCli, CtrlCStopsTheGenerationNotTheProgram) {
  if (!have_tmux()) GTEST_SKIP() << "tmux is not installed (scripts/install-deps installs it)";
  const auto& m = shoal::test::tiny_chat_model();
  ASSERT_TRUE(m.error.empty()) << m.error;
  TempDir t;
  Tmux tmux(chat_command(m.model, t.dir / "history", "--max-tokens 8000"));
  ASSERT_TRUE(tmux.started());
  bool ok = false;
  std::string s = tmux.wait_for("you> ", 60, &ok);
  ASSERT_TRUE(ok) << s;
  // "Laugh" starts an answer that does not end by itself (up to 8,000 tokens).
  tmux.type("Laugh");
  s = tmux.wait_for("ha ha", 60, &ok);
  ASSERT_TRUE(ok) << s;
  tmux.keys("C-c");
  s = tmux.wait_for("[stopped]", 30, &ok);
  ASSERT_TRUE(ok) << s;
  EXPECT_FALSE(tmux.dead()) << s;
  s = tmux.wait([](const std::string& x) { return count_of(x, "you> ") >= 2; }, 20, &ok);
  ASSERT_TRUE(ok) << s;
  // Still answering commands.
  tmux.type("/temperature 0.5");
  s = tmux.wait_for("temperature 0.5", 20, &ok);
  EXPECT_TRUE(ok) << s;
  // Ctrl-C at the prompt clears the line, Ctrl-D quits.
  tmux.keys("C-c");
  tmux.keys("C-d");
  s = tmux.wait([&](const std::string&) { return tmux.dead(); }, 20, &ok);
  EXPECT_TRUE(ok) << "Ctrl-D did not end the chat: " << s;
}

TEST(ChatCli, LinesFromAPipeGetPlainReplies) {
  const auto& m = shoal::test::tiny_chat_model();
  ASSERT_TRUE(m.error.empty()) << m.error;
  TempDir t;
  fs::path saved = t.dir / "c.json";
  std::string input = "What is 3+4?\\n/save " + saved.string() + "\\n";
  std::string out = run("printf '" + input + "' | " + chat_command(m.model, t.dir / "history") +
                        "; echo EXIT=$?");
  EXPECT_TRUE(has(out, "[tool call] calculator")) << out;
  EXPECT_TRUE(has(out, "[tool output calculator]")) << out;
  EXPECT_TRUE(has(out, "saved 4 messages")) << out;
  EXPECT_TRUE(has(out, "EXIT=0")) << out;
  EXPECT_FALSE(has(out, "you>")) << out;
  EXPECT_FALSE(has(out, "\033")) << out;
  EXPECT_FALSE(fs::exists(t.dir / "history"));  // no history outside a terminal
  std::ifstream f(saved);
  json conv = json::parse(f);
  EXPECT_EQ(conv["messages"][0]["content"], "What is 3+4?");
}

TEST(ChatCli, BadInputsGiveOneClearError) {
  TempDir t;
  std::string out = run(std::string(SHOAL_BINARY) + " chat --model " + (t.dir / "nope").string() +
                        " </dev/null 2>&1; echo EXIT=$?");
  EXPECT_TRUE(has(out, "no such directory")) << out;
  EXPECT_TRUE(has(out, "EXIT=1")) << out;
  const auto& m = shoal::test::tiny_chat_model();
  ASSERT_TRUE(m.error.empty()) << m.error;
  out = run(std::string(SHOAL_BINARY) + " chat --model " + m.model.string() +
            " --tools calculator,teleport </dev/null 2>&1; echo EXIT=$?");
  EXPECT_TRUE(has(out, "unknown tool 'teleport'")) << out;
  EXPECT_TRUE(has(out, "EXIT=1")) << out;
}

}  // namespace
