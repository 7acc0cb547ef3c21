// shoal tasks families | synth | check | list | show | export: the task families and the task store
// from the command line. synth generates, checks (demonstration accepted, perturbation rejected)
// and stores tasks with progress on stderr; check does the same checks over a range of seeds
// without storing and counts the failures; export writes JSON lines in OpenAI message form. Not
// the families or the store themselves (tasks/).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include "base/error.h"
#include "base/log.h"
#include "cli/commands.h"
#include "sandbox/client.h"
#include "sandbox/server.h"
#include "tasks/registry.h"
#include "tasks/store.h"
#include "tasks/synth.h"

namespace shoal::cli {
namespace {

using tasks::json;

// A private sandbox server for the families that run code, unless --endpoint names one.
class SandboxForSynth {
 public:
  explicit SandboxForSynth(const std::string& endpoint) {
    std::string ep = endpoint;
    if (ep.empty()) {
      if (spdlog::get_level() == spdlog::level::info) log::set_level("warn");
      dir_ = "/tmp/shoal-sandboxd/tasks-" + std::to_string(getpid());
      sandbox::ServerOptions opt;
      opt.endpoint = "ipc://" + dir_ + "/sock";
      opt.state_dir = dir_;
      opt.workers = 2;
      server_ = std::make_unique<sandbox::Server>(opt);
      ep = server_->endpoint();
      thread_ = std::thread([this] { server_->run(); });
    }
    client_ = std::make_unique<sandbox::Client>(sandbox::ClientOptions{ep, 60000, 3});
  }
  ~SandboxForSynth() {
    client_.reset();
    if (server_) {
      server_->stop();
      thread_.join();
      server_.reset();
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  sandbox::Client* client() { return client_.get(); }

 private:
  std::string dir_;
  std::unique_ptr<sandbox::Server> server_;
  std::thread thread_;
  std::unique_ptr<sandbox::Client> client_;
};

std::vector<std::string> family_names() {
  std::vector<std::string> names;
  for (const auto* f : tasks::families()) names.push_back(f->name());
  return names;
}

std::string first_user_text(const json& messages) {
  for (const auto& m : messages)
    if (m.value("role", "") == "user" && m["content"].is_string()) {
      std::string s = m["content"];
      for (char& c : s)
        if (c == '\n') c = ' ';
      return s.size() > 90 ? s.substr(0, 87) + "..." : s;
    }
  return "";
}

struct CheckOpts {
  std::vector<std::string> families;
  std::vector<int> difficulties;
  uint64_t from = 0;
  int seeds = 1000;
  bool generate_only = false;
};

// shoal tasks check: one line per family and difficulty (seeds, failures, time), then the first
// failures with their seed; exit 1 when any seed fails.
int check_families(const CheckOpts& c, const std::string& endpoint) {
  std::vector<std::string> names = c.families.empty() ? family_names() : c.families;
  std::vector<int> ds = c.difficulties;
  if (ds.empty())
    for (int d = tasks::kMinDifficulty; d <= tasks::kMaxDifficulty; ++d) ds.push_back(d);
  std::unique_ptr<SandboxForSynth> sandbox;
  int64_t failed = 0, tried = 0;
  for (const auto& name : names) {
    const tasks::Family& family = tasks::find_family(name);
    if (family.needs_sandbox() && !c.generate_only && !sandbox)
      sandbox = std::make_unique<SandboxForSynth>(endpoint);
    for (int d : ds) {
      tasks::CheckOptions co;
      co.family = name;
      co.difficulty = d;
      co.first_seed = c.from;
      co.seeds = c.seeds;
      co.generate_only = c.generate_only;
      co.sandbox = sandbox ? sandbox->client() : nullptr;
      tasks::CheckReport r = tasks::check_family(co);
      std::printf("%-18s d%d: seeds %llu..%llu, %d failed (%.1f s, %.0f seeds/s)\n", name.c_str(),
                  d, static_cast<unsigned long long>(c.from),
                  static_cast<unsigned long long>(c.from + static_cast<uint64_t>(c.seeds) - 1),
                  r.failed, r.seconds, r.seconds > 0 ? r.tried / r.seconds : 0.0);
      for (const auto& f : r.failures)
        std::printf("  seed %llu (%s): %s\n", static_cast<unsigned long long>(f.seed),
                    f.stage.c_str(), f.message.c_str());
      if (r.failed > static_cast<int>(r.failures.size()))
        std::printf("  ... and %d more\n", r.failed - static_cast<int>(r.failures.size()));
      std::fflush(stdout);
      failed += r.failed;
      tried += r.tried;
    }
  }
  std::printf("%lld of %lld seeds failed%s\n", static_cast<long long>(failed),
              static_cast<long long>(tried), c.generate_only ? " to generate" : "");
  return failed == 0 ? 0 : 1;
}

}  // namespace

Run add_tasks(CLI::App& app) {
  struct Opts {
    std::string store = "tasks.sqlite", family, split = "train", with = "none", out, endpoint;
    int count = 0, difficulty = 1, filter_difficulty = 0;
    int64_t id = 0, limit = 20;
  };
  auto o = std::make_shared<Opts>();
  app.require_subcommand(1);
  auto families_names = family_names();

  CLI::App* fam = app.add_subcommand("families", "List the task families (name, then what it is)");

  CLI::App* synth = app.add_subcommand("synth", "Generate, check and store tasks of one family");
  synth->add_option("--family", o->family, "task family (see shoal tasks families)")
      ->required()
      ->check(CLI::IsMember(families_names));
  synth->add_option("--count", o->count, "how many new tasks")
      ->required()
      ->check(CLI::Range(1, 10000000));
  synth->add_option("--difficulty", o->difficulty, "1 (easiest) to 5")
      ->check(CLI::Range(tasks::kMinDifficulty, tasks::kMaxDifficulty))
      ->capture_default_str();
  synth->add_option("--split", o->split, "train or eval (disjoint seed ranges)")
      ->check(CLI::IsMember({"train", "eval"}))
      ->capture_default_str();
  synth->add_option("--store", o->store, "task store file (created when missing)")
      ->capture_default_str();
  synth->add_option("--endpoint", o->endpoint,
                    "sandbox server for code-running families (default: a private local one)");

  auto co = std::make_shared<CheckOpts>();
  CLI::App* check = app.add_subcommand(
      "check", "Generate, demonstrate and verify many seeds; count the seeds that fail");
  check->add_option("--family", co->families, "families to check (default: all)")
      ->check(CLI::IsMember(families_names));
  check->add_option("--difficulty", co->difficulties, "difficulties to check (default: 1..5)")
      ->check(CLI::Range(tasks::kMinDifficulty, tasks::kMaxDifficulty));
  check->add_option("--seeds", co->seeds, "seeds per family and difficulty")
      ->check(CLI::Range(1, 100000000))
      ->capture_default_str();
  check->add_option("--from", co->from, "first seed")->capture_default_str();
  check->add_flag("--generate-only", co->generate_only,
                  "only generate (no demonstration, verification or perturbation)");
  check->add_option("--endpoint", o->endpoint,
                    "sandbox server for code-running families (default: a private local one)");

  auto add_filters = [&](CLI::App* sub) {
    sub->add_option("--store", o->store, "task store file")->capture_default_str();
    sub->add_option("--family", o->family, "only this family")
        ->check(CLI::IsMember(families_names));
    sub->add_option("--split", o->split, "only this split")
        ->check(CLI::IsMember({"train", "eval"}));
    sub->add_option("--difficulty", o->filter_difficulty, "only this difficulty")
        ->check(CLI::Range(tasks::kMinDifficulty, tasks::kMaxDifficulty));
  };
  CLI::App* list = app.add_subcommand("list", "List stored tasks, one line each (or a summary)");
  add_filters(list);
  list->add_option("--limit", o->limit, "at most this many lines (0: counts per family only)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  CLI::App* show =
      app.add_subcommand("show", "Print one task with its demonstration and rejected episode");
  show->add_option("id", o->id, "task id (see shoal tasks list)")
      ->required()
      ->check(CLI::PositiveNumber);
  show->add_option("--store", o->store, "task store file")->capture_default_str();
  CLI::App* exp = app.add_subcommand("export", "Write tasks as JSON lines in OpenAI message form");
  add_filters(exp);
  exp->add_option("--with", o->with,
                  "none: prompts, tools and verifier specs (for RL); demos: prompt + demonstration "
                  "(for SFT); pairs: prompt, chosen, rejected (for DPO)")
      ->check(CLI::IsMember({"none", "demos", "pairs"}))
      ->capture_default_str();
  exp->add_option("--out", o->out, "output file (default: stdout)");
  // Filters of list/export default to "any split" when not given.
  auto split_given = [](CLI::App* sub) { return sub->count("--split") > 0; };

  return [o, co, fam, synth, check, list, show, exp, split_given]() {
    if (fam->parsed()) {
      for (const auto* f : tasks::families())
        std::printf("%-18s %s\n", f->name().c_str(), f->description().c_str());
      return 0;
    }
    if (check->parsed()) return check_families(*co, o->endpoint);
    if (synth->parsed()) {
      tasks::TaskStore store(o->store, true);
      const tasks::Family& family = tasks::find_family(o->family);
      std::unique_ptr<SandboxForSynth> sandbox;
      if (family.needs_sandbox()) sandbox = std::make_unique<SandboxForSynth>(o->endpoint);
      tasks::SynthOptions so;
      so.family = o->family;
      so.split = o->split;
      so.count = o->count;
      so.difficulty = o->difficulty;
      so.batch = 32;
      so.sandbox = sandbox ? sandbox->client() : nullptr;
      auto start = std::chrono::steady_clock::now();
      bool tty = isatty(STDERR_FILENO);
      so.progress = [&](int added, int tried) {
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::fprintf(stderr, "%ssynth %s: %d/%d tasks (%d seeds tried), %.1f tasks/s%s",
                     tty ? "\r" : "", o->family.c_str(), added, o->count, tried,
                     s > 0 ? added / s : 0.0, tty ? "" : "\n");
        std::fflush(stderr);
      };
      tasks::SynthReport r = tasks::synthesize(store, so);
      if (tty) std::fprintf(stderr, "\n");
      std::printf(
          "added %d %s tasks (difficulty %d, split %s) to %s in %.2f s (%.1f tasks/s); %d "
          "duplicates skipped\n",
          r.added, o->family.c_str(), o->difficulty, o->split.c_str(), o->store.c_str(), r.seconds,
          r.seconds > 0 ? r.added / r.seconds : 0.0, r.duplicates);
      SHOAL_CHECK(
          r.added == o->count,
          "only {} new distinct tasks found for family {} at difficulty {} ({} seeds tried): "
          "this family/difficulty has few distinct tasks",
          r.added, o->family, o->difficulty, r.tried);
      return 0;
    }
    tasks::TaskStore store(o->store, false);
    if (show->parsed()) {
      tasks::StoredTask s = store.get(o->id);
      json out = tasks::to_json(s.task);
      out["id"] = s.id;
      out["split"] = s.split;
      out["prompt_hash"] = s.prompt_hash;
      out["created_at"] = s.created_at;
      if (s.demonstration) out["demonstration"] = s.demonstration->messages;
      if (s.rejected) {
        out["rejected"] = s.rejected->messages;
        out["rejected_reason"] = s.rejected_reason;
      }
      std::printf("%s\n", out.dump(2).c_str());
      return 0;
    }
    tasks::TaskQuery q;
    q.family = o->family;
    q.difficulty = o->filter_difficulty;
    if (list->parsed()) {
      if (split_given(list)) q.split = o->split;
      if (o->limit == 0) {
        for (const auto& row : store.summary())
          std::printf("%-18s %-5s difficulty %d: %lld tasks\n",
                      row["family"].get<std::string>().c_str(),
                      row["split"].get<std::string>().c_str(), row["difficulty"].get<int>(),
                      static_cast<long long>(row["tasks"].get<int64_t>()));
        return 0;
      }
      q.limit = o->limit;
      for (const auto& s : store.list(q))
        std::printf("%6lld  %-16s d%d %-5s seed %-14llu %s\n", static_cast<long long>(s.id),
                    s.task.family.c_str(), s.task.difficulty, s.split.c_str(),
                    static_cast<unsigned long long>(s.task.seed),
                    first_user_text(s.task.messages).c_str());
      int64_t total = store.count(q);
      if (total > o->limit)
        std::printf("... %lld more (use --limit, or --limit 0 for counts)\n",
                    static_cast<long long>(total - o->limit));
      return 0;
    }
    // export
    if (split_given(exp)) q.split = o->split;
    std::ofstream file;
    std::string tmp;
    if (!o->out.empty()) {
      tmp = o->out + ".tmp";
      file.open(tmp);
      SHOAL_CHECK(file.good(), "cannot write {}", tmp);
    }
    std::ostream& out = o->out.empty() ? std::cout : file;
    int64_t n = 0;
    const int64_t page = 512;
    for (q.limit = page, q.offset = 0;; q.offset += page) {
      auto rows = store.list(q);
      for (const auto& s : rows) {
        json line = {
            {"id", s.id},           {"family", s.task.family},         {"version", s.task.version},
            {"seed", s.task.seed},  {"difficulty", s.task.difficulty}, {"split", s.split},
            {"tools", s.task.tools}};
        if (o->with == "none") {
          line["messages"] = s.task.messages;
          line["verifier"] = s.task.verifier;
        } else if (o->with == "demos") {
          SHOAL_CHECK(s.demonstration, "task {} has no demonstration", s.id);
          json m = s.task.messages;
          for (const auto& x : s.demonstration->messages) m.push_back(x);
          line["messages"] = m;
        } else {
          SHOAL_CHECK(s.demonstration && s.rejected, "task {} has no preference pair", s.id);
          line["prompt"] = s.task.messages;
          line["chosen"] = s.demonstration->messages;
          line["rejected"] = s.rejected->messages;
          line["rejected_reason"] = s.rejected_reason;
        }
        out << line.dump() << '\n';
        ++n;
      }
      if (static_cast<int64_t>(rows.size()) < page) break;
    }
    if (!o->out.empty()) {
      file.close();
      SHOAL_CHECK(file.good(), "writing {} failed", tmp);
      std::filesystem::rename(tmp, o->out);
    }
    std::fprintf(stderr, "exported %lld tasks\n", static_cast<long long>(n));
    return 0;
  };
}

}  // namespace shoal::cli
