// Family "files": questions about a generated project tree (logs, CSV data, notes, sources)
// answered with the sandbox's `shell` and `files` tools in a session whose workspace holds the
// tree. The generator knows the answers; the demonstration finds them with real shell commands in
// the sandbox. Not a file-editing task: the tree is only read.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <set>

#include "base/error.h"
#include "sandbox/client.h"
#include "sandbox/tools.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

const std::vector<std::string> kRegions = {"north",   "south", "east", "west",
                                           "central", "coast", "hills"};
const std::vector<std::string> kProducts = {"anvil", "bolt",   "crank", "dowel",
                                            "easel", "flange", "gasket"};
const std::vector<std::string> kOwners = {"ana", "bo", "cy", "dee", "eli"};
const std::vector<std::string> kModules = {"core", "net", "ui", "store", "auth", "jobs"};
const std::vector<std::string> kWords = {"alpha", "beta",  "gamma", "delta",
                                         "sigma", "omega", "kappa", "zeta"};

std::atomic<uint64_t> g_sessions{0};

struct SessionState : EnvState {
  sandbox::Client* client = nullptr;
  std::string session;
  ~SessionState() override {
    if (client) client->admin("close_session", session);
  }
};

// The question kinds, easiest first: text, command that answers it, wrong commands.
struct Question {
  std::string text, gold_command, answer;
  std::vector<std::string> wrong;
  bool is_path = false;
};

std::string clean_path(std::string s) {
  s = trim(s);
  if (s.rfind("/work/", 0) == 0) s = s.substr(6);
  while (s.rfind("./", 0) == 0) s = s.substr(2);
  return s;
}

class FilesFamily final : public Family {
 public:
  std::string name() const override { return "files"; }
  std::string description() const override {
    return "questions about a generated directory tree, answered with shell and files tools in the "
           "sandbox";
  }
  bool needs_sandbox() const override { return true; }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    std::map<std::string, std::string> files;
    // logs/: timestamped lines; some INFO messages mention "error" in lower case on purpose.
    int n_logs = 1 + d;
    std::vector<std::string> levels = {"INFO", "INFO", "INFO", "WARN", "ERROR"};
    int errors = 0;
    for (int i = 1; i <= n_logs; ++i) {
      std::string text;
      for (int64_t l = 0, n = rng.uniform(8, 10 + 6 * d); l < n; ++l) {
        std::string lv = rng.pick(levels);
        errors += lv == "ERROR";
        std::string msg = lv == "INFO" && rng.chance(0.2) ? "recovered after error"
                                                          : rng.pick(kWords) + " step done";
        text += fmt::format("2026-03-{:02d}T{:02d}:{:02d}:00 {} {}: {}\n", i, rng.uniform(0, 23),
                            rng.uniform(0, 59), lv, rng.pick(kModules), msg);
      }
      files[fmt::format("logs/app-{}.log", i)] = text;
    }
    // data/: one CSV per region (distinct row counts).
    std::vector<int> regions = rng.sample(static_cast<int>(kRegions.size()), std::min(2 + d, 7));
    std::map<std::string, int64_t> units;
    std::set<int64_t> row_counts;
    std::string most_rows_file;
    int64_t most_rows = -1;
    for (int r : regions) {
      int64_t rows;
      do rows = rng.uniform(3, 6 + 4 * d);
      while (!row_counts.insert(rows).second);
      std::string text = "date,product,units,price\n";
      for (int64_t i = 0; i < rows; ++i) {
        std::string p =
            kProducts[static_cast<size_t>(rng.index(std::min<size_t>(kProducts.size(), 3 + d)))];
        int64_t u = rng.uniform(1, 40);
        units[p] += u;
        text += fmt::format("2026-04-{:02d},{},{},{}.{:02d}\n", rng.uniform(1, 28), p, u,
                            rng.uniform(1, 90), rng.uniform(0, 99));
      }
      std::string path = "data/sales_" + kRegions[static_cast<size_t>(r)] + ".csv";
      files[path] = text;
      if (rows > most_rows) most_rows = rows, most_rows_file = path;
    }
    // notes/ and src/: TODO markers (some files twice) and source files of distinct sizes.
    std::string owner = rng.pick(kOwners);
    int todo_files = 0;
    std::set<size_t> sizes;
    std::string largest;
    size_t largest_size = 0;
    int n_src = 2 + 2 * d;
    for (int i = 0; i < n_src + 2; ++i) {
      bool note = i >= n_src;
      std::string dir = note ? "notes"
                             : "src/" + rng.pick(kModules) +
                                   (d >= 4 && rng.chance(0.5) ? "/" + rng.pick(kModules) : "");
      std::string path = fmt::format("{}/{}_{}.{}", dir, rng.pick(kWords), i, note ? "txt" : "py");
      std::string text = note ? "Notes\n" : "def f():\n    return 0\n";
      int marks = rng.index(3);
      std::string who = rng.chance(0.7) ? owner : rng.pick(kOwners);
      for (int m = 0; m < marks; ++m)
        text += fmt::format("# TODO({}): {}\n", who, rng.pick(kWords));
      if (marks > 0 && who == owner) ++todo_files;
      if (!note) {
        for (int64_t k = 0, n = rng.uniform(0, 12 * d); k < n; ++k)
          text += fmt::format("x{} = {}\n", k, rng.uniform(0, 999));
        while (!sizes.insert(text.size()).second) text += "#\n";
        if (text.size() > largest_size) largest_size = text.size(), largest = path;
      }
      files[path] = text;
    }
    std::string product = kProducts[static_cast<size_t>(rng.index(3))];
    int level = static_cast<int>(rng.uniform(std::max(0, d - 2), d - 1));
    Question q;
    switch (level) {
      case 0:
        q.text = "How many lines with the level ERROR are there across all .log files in logs/?";
        q.gold_command = "cat logs/*.log | grep -c ' ERROR '";
        q.answer = std::to_string(errors);
        q.wrong = {"cat logs/*.log | grep -ci 'error'", "grep -c ' ERROR ' logs/app-1.log",
                   "cat logs/*.log | grep -c ' WARN '"};
        break;
      case 1:
        q.text = fmt::format(
            "How many units of the product '{}' were sold in total, over all CSV files in data/?",
            product);
        q.gold_command = fmt::format(
            "awk -F, '$2 == \"{}\" {{ s += $3 }} END {{ print s + 0 }}' data/*.csv", product);
        q.answer = std::to_string(units[product]);
        q.wrong = {fmt::format("cat data/*.csv | grep -c ',{},'", product),
                   "awk -F, 'FNR > 1 { s += $3 } END { print s + 0 }' data/*.csv"};
        break;
      case 2:
        q.text =
            "Which CSV file in data/ has the most data rows (not counting the header)? Give its "
            "path relative to the current directory.";
        q.gold_command =
            "for f in data/*.csv; do echo \"$(($(wc -l < $f) - 1)) $f\"; done | sort -n | tail -1 "
            "| cut -d' ' -f2";
        q.answer = most_rows_file;
        q.is_path = true;
        q.wrong = {
            "for f in data/*.csv; do echo \"$(wc -l < $f) $f\"; done | sort -n | head -1 | cut -d' "
            "' -f2",
            "ls data/*.csv | head -1"};
        break;
      case 3:
        q.text = fmt::format(
            "How many files, at any depth, contain a TODO marked for {} (written TODO({}))?", owner,
            owner);
        q.gold_command = fmt::format("grep -rl 'TODO({})' . | wc -l", owner);
        q.answer = std::to_string(todo_files);
        q.wrong = {fmt::format("grep -r 'TODO({})' . | wc -l", owner), "grep -rl 'TODO' . | wc -l"};
        break;
      default:
        q.text =
            "Which file under src/ (at any depth) is the largest in bytes? Give its path relative "
            "to the current directory.";
        q.gold_command = "find src -type f -printf '%s %p\\n' | sort -n | tail -1 | cut -d' ' -f2";
        q.answer = largest;
        q.is_path = true;
        q.wrong = {
            "find src -type f -printf '%s %p\\n' | sort -n | head -1 | cut -d' ' -f2",
            "find src -type f -printf '%s %p\\n' | sort -n | tail -2 | head -1 | cut -d' ' -f2"};
    }
    json tools = json::array();
    for (const auto& s : sandbox::tool_schemas())
      if (s["function"]["name"] == "shell" || s["function"]["name"] == "files") tools.push_back(s);
    t.messages = {
        message("system",
                system_prompt("The project's files are in the current directory of the shell.")),
        message("user", q.text)};
    t.tools = tools;
    t.environment = {{"files", files}};
    t.verifier = {{"answer", q.answer},
                  {"is_path", q.is_path},
                  {"command", q.gold_command},
                  {"wrong_commands", q.wrong}};
    t.metadata = {{"files", files.size()}, {"question", level}};
    return t;
  }

  std::unique_ptr<EnvState> open(const Task& t, sandbox::Client* client) const override {
    SHOAL_CHECK(client, "family files needs a sandbox client");
    auto s = std::make_unique<SessionState>();
    s->client = client;
    s->session = fmt::format("tasks-files-{}-{}", t.seed, g_sessions++);
    sandbox::Request r;
    r.tool = "run_tests";
    r.session = s->session;
    r.arguments = {{"files", t.environment["files"]}, {"command", "true"}};
    sandbox::Reply reply = client->call(r);
    SHOAL_CHECK(reply.status == "ok" && reply.exit_code == 0,
                "files: could not lay out the tree: {} {}", reply.error_kind, reply.error_message);
    return s;
  }

  json call_tool(const Task&, EnvState* state, const std::string& name,
                 const json& args) const override {
    auto* s = static_cast<SessionState*>(state);
    SHOAL_CHECK(name == "shell" || name == "files", "unknown tool '{}'", name);
    std::string why = sandbox::check_arguments(name, args);
    SHOAL_CHECK(why.empty(), "{}", why);
    sandbox::Reply r = s->client->call(name, args, s->session);
    if (r.status != "ok") return {{"error", r.error_kind + ": " + r.error_message}};
    if (name == "files") return r.result;
    return {{"exit_code", r.exit_code}, {"stdout", r.stdout_text}, {"stderr", r.stderr_text}};
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    Episode e = run(t, t.verifier["command"], sb);
    auto ans = final_answer(e);
    SHOAL_CHECK(ans && matches(t, *ans),
                "files seed {}: the gold command's output '{}' is not the answer {}", t.seed,
                ans.value_or(""), t.verifier["answer"].get<std::string>());
    return e;
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    auto wrong = t.verifier["wrong_commands"].get<std::vector<std::string>>();
    rng.shuffle(wrong);
    for (const auto& w : wrong) {
      Episode e = run(t, w, sb);
      auto ans = final_answer(e);
      if (ans && !matches(t, *ans)) return e;
    }
    // Every wrong command happened to agree: the right command, a slip in the answer.
    Episode e = run(t, t.verifier["command"], sb);
    std::string a = t.verifier["answer"];
    return with_answer(
        e, t.verifier["is_path"].get<bool>() ? a + ".bak" : std::to_string(std::stoll(a) + 1));
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto ans = final_answer(e);
    if (!ans) return fail("no final ANSWER line", {{"answer", 0}});
    if (!matches(t, *ans))
      return fail("wrong answer '" + ans->substr(0, 60) + "'", {{"answer", 0}});
    return pass("the right answer", {{"answer", 1}});
  }

 private:
  static bool matches(const Task& t, const std::string& answer) {
    std::string gold = t.verifier["answer"];
    if (t.verifier["is_path"].get<bool>()) return clean_path(answer) == gold;
    return is_plain_number(answer) && numbers_equal(answer, gold);
  }

  Episode run(const Task& t, const std::string& command, sandbox::Client* sb) const {
    Environment env(*this, t, sb);
    Trajectory tr(env);
    tr.call("files", {{"action", "list"}, {"path", "."}});
    json r = tr.call("shell", {{"command", command}});
    SHOAL_CHECK(r.contains("stdout"), "files seed {}: the shell call failed: {}", t.seed, r.dump());
    std::string out = trim(r["stdout"].get<std::string>());
    tr.say("The command prints " + out + ".\n" + answer_line(out));
    return tr.take();
  }
};

}  // namespace

std::unique_ptr<Family> make_files_family() {
  return std::make_unique<FilesFamily>();
}

}  // namespace shoal::tasks
