// Verifier checks for the environment families (api_world, sql, search): any path to the right
// state or value passes, look-alike answers and extra side effects fail, and the tools refuse
// what they must (writes through the read-only sql tool, FTS query syntax in a search).
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "tasks/registry.h"

namespace shoal::tasks {
namespace {

Episode answer(const std::string& text) {
  Episode e;
  e.messages.push_back({{"role", "assistant"}, {"content", "ANSWER: " + text}});
  return e;
}

// The episode with only its write calls (no lookups), results dropped.
Episode writes_only(const Episode& demo, const std::set<std::string>& writes) {
  Episode e;
  for (const auto& m : demo.messages)
    if (m["role"] == "assistant" && m.contains("tool_calls") &&
        writes.count(m["tool_calls"][0]["function"]["name"].get<std::string>()))
      e.messages.push_back(m);
  e.messages.push_back({{"role", "assistant"}, {"content", "ANSWER: done"}});
  return e;
}

TEST(TasksWorlds, ApiWorldJudgesTheFinalStateOnly) {
  const Family& f = find_family("api_world");
  std::set<std::string> writes = {"transfer", "freeze_account", "place_order", "cancel_order"};
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 5));
    Episode demo = f.demonstrate(t);
    // Another path to the same state (no lookups) passes; claiming success without acting fails.
    EXPECT_TRUE(f.verify(t, writes_only(demo, writes)).solved());
    EXPECT_FALSE(f.verify(t, answer("done")).solved());
    // Fabricated tool results change nothing: only the calls are replayed.
    Episode lies = answer("done");
    // (json(...) explicitly: a braced list would be inserted element by element.)
    lies.messages.insert(
        lies.messages.begin(),
        json({{"role", "tool"}, {"tool_call_id", "x"}, {"content", "{\"status\":\"completed\"}"}}));
    EXPECT_FALSE(f.verify(t, lies).solved());
    // One extra side effect fails even though every asked-for change was made.
    Episode extra = demo;
    bool bank = t.environment["domain"] == "bank";
    json call =
        bank ? json{{"name", "freeze_account"}, {"arguments", json{{"account_id", 0}}.dump()}}
             : json{{"name", "place_order"},
                    {"arguments",
                     json{{"customer_id", 1}, {"product_id", 1}, {"quantity", 1}}.dump()}};
    // Pick a record that exists and that the goal leaves alone.
    Environment env(f, t);
    if (bank) {
      json accounts = env.call("list_accounts", {{"customer_id", 1}});
      ASSERT_TRUE(accounts.is_array()) << accounts.dump();
      call["arguments"] = json{{"account_id", accounts[0]["account_id"]}}.dump();
    }
    json tc = json::array();
    tc.push_back({{"id", "z"}, {"type", "function"}, {"function", call}});
    extra.messages.insert(extra.messages.end() - 1,
                          json({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", tc}}));
    Reward r = f.verify(t, extra);
    // (When the extra call fails in the world, e.g. an already frozen account or no stock, the
    // state is unchanged and the episode still passes: that is the state-based rule.)
    Environment probe(f, t);
    for (const auto& c : tool_calls(demo)) probe.call(c.name, c.args);
    json effect = probe.call(call["name"], json::parse(call["arguments"].get<std::string>()));
    EXPECT_EQ(r.solved(), effect.contains("error")) << effect.dump();
  }
}

TEST(TasksWorlds, SqlChecksAgainstTheGoldQuery) {
  const Family& f = find_family("sql");
  for (uint64_t seed = 0; seed < 40; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 5));
    Environment env(f, t);
    json gold = env.call("sql", {{"query", t.verifier["gold_query"]}});
    ASSERT_FALSE(gold.contains("error")) << gold.dump();
    const json& rows = gold["rows"];
    if (t.verifier["list"].get<bool>()) {
      // Any order, any case; one name more or less fails.
      std::string reversed, missing, more;
      for (size_t i = rows.size(); i-- > 0;)
        reversed += (reversed.empty() ? "" : ", ") + lower(rows[i][0].get<std::string>());
      EXPECT_TRUE(f.verify(t, answer(reversed)).solved()) << reversed;
      for (size_t i = 1; i < rows.size(); ++i)
        missing += (missing.empty() ? "" : ", ") + rows[i][0].get<std::string>();
      EXPECT_FALSE(f.verify(t, answer(missing)).solved()) << missing;
      more = reversed + ", Nobody Else";
      EXPECT_FALSE(f.verify(t, answer(more)).solved());
      continue;
    }
    const json& cell = rows[0][0];
    std::string text = cell.is_string() ? cell.get<std::string>() : cell.dump();
    EXPECT_TRUE(f.verify(t, answer(text)).solved()) << text;
    if (cell.is_number_integer()) {
      EXPECT_FALSE(f.verify(t, answer(std::to_string(cell.get<int64_t>() + 1))).solved());
      EXPECT_FALSE(f.verify(t, answer(text + " or so")).solved());
    } else {
      EXPECT_FALSE(f.verify(t, answer(text + " and Someone")).solved());
    }
  }
  // The tool is read-only and takes one statement.
  Task t = f.generate(1, 1);
  Environment env(f, t);
  EXPECT_TRUE(env.call("sql", {{"query", "DELETE FROM employees"}}).contains("error"));
  EXPECT_TRUE(env.call("sql", {{"query", "SELECT 1; DROP TABLE employees"}}).contains("error"));
  std::string attach = "/tmp/shoal_tasks_attach_" + std::to_string(t.seed) + ".db";
  EXPECT_TRUE(
      env.call("sql", {{"query", "ATTACH DATABASE '" + attach + "' AS x"}}).contains("error"));
  EXPECT_FALSE(std::filesystem::exists(attach)) << "ATTACH created a file";
  EXPECT_TRUE(env.call("sql", {{"query", "PRAGMA writable_schema = 1"}}).contains("error"));
  EXPECT_EQ(env.call("sql", {{"query", "SELECT count(*) FROM employees"}})["rows"][0][0],
            t.metadata["employees"]);
}

TEST(TasksWorlds, SearchNeedsTheLastHopsEntity) {
  const Family& f = find_family("search");
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 5));
    std::string gold = t.verifier["answer"];
    EXPECT_TRUE(f.verify(t, answer("The " + lower(gold) + ".")).solved());
    for (const auto& step : t.verifier["chain"])
      if (step != gold) {
        EXPECT_FALSE(f.verify(t, answer(step.get<std::string>())).solved())
            << "an intermediate hop";
      }
    EXPECT_FALSE(
        f.verify(t, answer(gold + " or " + t.verifier["chain"][0].get<std::string>())).solved());
    // Every other entity of the corpus (look-alikes included) is wrong.
    int others = 0;
    for (const auto& d : t.environment["documents"])
      if (d["title"] != gold && others++ < 10) {
        EXPECT_FALSE(f.verify(t, answer(d["title"].get<std::string>())).solved());
      }
  }
  // Retrieval: the start entity's document is found by name; FTS syntax in a query is just words.
  Task t = f.generate(9, 5);
  Environment env(f, t);
  json hits = env.call("search", {{"query", t.verifier["chain"][0]}, {"k", 3}});
  ASSERT_TRUE(hits.is_array()) << hits.dump();
  EXPECT_EQ(hits[0]["id"], t.verifier["chain_docs"][0]);
  for (const char* q : {"\"unbalanced", "NEAR(a b", "title:x OR", "*", "a AND NOT b"}) {
    json r = env.call("search", {{"query", q}});
    EXPECT_TRUE(r.is_array()) << q << " " << r.dump();
  }
  EXPECT_TRUE(env.call("search", {{"query", "x"}, {"k", 99}}).contains("error"));
  EXPECT_TRUE(env.call("open_document", {{"id", 100000}}).contains("error"));
}

}  // namespace
}  // namespace shoal::tasks
