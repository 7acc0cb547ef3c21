// Family "api_world": a generated SQLite world (a bank or a shop: customers, accounts or
// products and orders) behind task-specific tools; the user asks for changes (transfers,
// freezes, orders, cancellations, a conditional payment) and success is the database's final
// state after replaying the agent's tool calls, compared with the state the gold writes give.
// Each seed makes a different world. Not a SQL task (family_sql.cpp): the agent never sees SQL.
#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "base/error.h"
#include "base/sqlite.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

const std::vector<std::string> kFirst = {"Ana",   "Bruno", "Chiara", "Dmitri", "Esme",  "Farid",
                                         "Greta", "Hugo",  "Ines",   "Jonas",  "Kaia",  "Luca",
                                         "Mira",  "Nadia", "Oskar",  "Priya",  "Quinn", "Rosa"};
const std::vector<std::string> kLast = {"Silva",  "Silvano", "Okafor", "Lindqvist",
                                        "Moreau", "Tanaka",  "Novak",  "Novakova",
                                        "Haddad", "Reyes",   "Brandt", "Castell"};
const std::vector<std::string> kTowns = {"Alder", "Brook", "Cedar", "Dune", "Elm", "Fenwick"};

std::string money(int64_t cents) {
  return fmt::format("{}.{:02d}", cents / 100, cents % 100);
}

struct WorldState : EnvState {
  SqliteDb db;
};

// Every table's rows in id order: what "the database's final state" means.
json dump_state(SqliteDb& db) {
  json out = json::object();
  // (A named result: a range-for over a member of a temporary would dangle.)
  json tables = db.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
  for (const auto& r : tables["rows"]) {
    std::string table = r[0];
    out[table] = db.query("SELECT * FROM " + table + " ORDER BY id")["rows"];
  }
  return out;
}

int64_t cents_of(const json& amount) {
  SHOAL_CHECK(amount.is_number(), "amount must be a number");
  double c = amount.get<double>() * 100;
  SHOAL_CHECK(std::isfinite(c) && std::abs(c - std::round(c)) < 1e-6, "amount must be whole cents");
  SHOAL_CHECK(c > 0 && c < 1e12, "amount must be positive");
  return static_cast<int64_t>(std::llround(c));
}

int64_t int_arg(const json& args, const char* key) {
  SHOAL_CHECK(args.contains(key) && args[key].is_number_integer(), "'{}' must be an integer", key);
  return args[key].get<int64_t>();
}

std::string str_arg(const json& args, const char* key) {
  SHOAL_CHECK(args.contains(key) && args[key].is_string(), "'{}' must be a string", key);
  return args[key].get<std::string>();
}

void only_keys(const json& args, std::initializer_list<const char*> keys) {
  for (auto it = args.begin(); it != args.end(); ++it) {
    bool known = false;
    for (const char* k : keys) known = known || it.key() == k;
    SHOAL_CHECK(known, "unknown argument '{}'", it.key());
  }
}

// ---- the bank ----

json bank_tools() {
  json integer = {{"type", "integer"}};
  return json::array(
      {function_tool("find_customers", "Customers whose name contains the text (case-insensitive).",
                     {{"name", {{"type", "string"}, {"description", "full or partial name"}}}},
                     {"name"}),
       function_tool("list_accounts", "A customer's accounts with type, balance and frozen flag.",
                     {{"customer_id", integer}}, {"customer_id"}),
       function_tool("transfer", "Move money between two accounts (not frozen, enough funds).",
                     {{"from_account_id", integer},
                      {"to_account_id", integer},
                      {"amount", {{"type", "number"}, {"description", "in dollars, whole cents"}}}},
                     {"from_account_id", "to_account_id", "amount"}),
       function_tool("freeze_account", "Freeze an account: no transfers in or out.",
                     {{"account_id", integer}}, {"account_id"})});
}

json bank_call(SqliteDb& db, const std::string& name, const json& a) {
  if (name == "find_customers") {
    only_keys(a, {"name"});
    std::string q = trim(str_arg(a, "name"));
    SHOAL_CHECK(!q.empty(), "name must not be empty");
    return db.objects(
        "SELECT id AS customer_id, name, city FROM customers WHERE name LIKE ? ORDER BY id LIMIT "
        "20",
        {"%" + q + "%"});
  }
  if (name == "list_accounts") {
    only_keys(a, {"customer_id"});
    json rows = db.objects(
        "SELECT id AS account_id, type, balance_cents, frozen FROM accounts WHERE customer_id = ? "
        "ORDER BY id",
        {int_arg(a, "customer_id")});
    SHOAL_CHECK(!rows.empty(), "no customer {} (or no accounts)", int_arg(a, "customer_id"));
    for (auto& r : rows) {
      r["balance"] = money(r["balance_cents"]);
      r["frozen"] = r["frozen"].get<int64_t>() != 0;
      r.erase("balance_cents");
    }
    return rows;
  }
  if (name == "transfer") {
    only_keys(a, {"from_account_id", "to_account_id", "amount"});
    int64_t from = int_arg(a, "from_account_id"), to = int_arg(a, "to_account_id"),
            c = cents_of(a["amount"]);
    SHOAL_CHECK(from != to, "cannot transfer to the same account");
    json f = db.objects("SELECT balance_cents, frozen FROM accounts WHERE id = ?", {from});
    json t = db.objects("SELECT balance_cents, frozen FROM accounts WHERE id = ?", {to});
    SHOAL_CHECK(!f.empty(), "no account {}", from);
    SHOAL_CHECK(!t.empty(), "no account {}", to);
    SHOAL_CHECK(f[0]["frozen"] == 0, "account {} is frozen", from);
    SHOAL_CHECK(t[0]["frozen"] == 0, "account {} is frozen", to);
    SHOAL_CHECK(f[0]["balance_cents"].get<int64_t>() >= c, "insufficient funds in account {}",
                from);
    db.query("UPDATE accounts SET balance_cents = balance_cents - ? WHERE id = ?", {c, from});
    db.query("UPDATE accounts SET balance_cents = balance_cents + ? WHERE id = ?", {c, to});
    db.query("INSERT INTO transfers(from_account, to_account, amount_cents) VALUES (?, ?, ?)",
             {from, to, c});
    return {{"transfer_id", db.last_insert_rowid()}, {"status", "completed"}};
  }
  if (name == "freeze_account") {
    only_keys(a, {"account_id"});
    int64_t id = int_arg(a, "account_id");
    json r = db.objects("SELECT frozen FROM accounts WHERE id = ?", {id});
    SHOAL_CHECK(!r.empty(), "no account {}", id);
    SHOAL_CHECK(r[0]["frozen"] == 0, "account {} is already frozen", id);
    db.query("UPDATE accounts SET frozen = 1 WHERE id = ?", {id});
    return {{"account_id", id}, {"frozen", true}};
  }
  SHOAL_FAIL("unknown tool '{}'", name);
}

struct Customer {
  int64_t id;
  std::string name, city;
  int64_t checking = 0, savings = 0;  // account ids (0: none)
};

// ---- the shop ----

const std::vector<std::pair<std::string, std::vector<std::string>>> kCatalogue = {
    {"lamp", {"Desk Lamp", "Floor Lamp", "Reading Lamp", "Desk Lamp Mini"}},
    {"kettle", {"Steel Kettle", "Glass Kettle", "Travel Kettle", "Steel Kettle Pro"}},
    {"backpack", {"Day Backpack", "Trail Backpack", "City Backpack", "Day Backpack XL"}},
    {"notebook", {"Dot Notebook", "Grid Notebook", "Pocket Notebook", "Grid Notebook A5"}},
    {"headphones", {"Studio Headphones", "Sport Headphones", "Studio Headphones Lite"}},
    {"chair", {"Office Chair", "Folding Chair", "Office Chair Plus"}}};

json shop_tools() {
  json integer = {{"type", "integer"}};
  return json::array(
      {function_tool("find_customer", "A customer by email address.",
                     {{"email", {{"type", "string"}}}}, {"email"}),
       function_tool("search_products", "Products whose name or category contains the text.",
                     {{"query", {{"type", "string"}}}}, {"query"}),
       function_tool("place_order", "Order a quantity of a product for a customer (needs stock).",
                     {{"customer_id", integer}, {"product_id", integer}, {"quantity", integer}},
                     {"customer_id", "product_id", "quantity"}),
       function_tool("list_orders", "A customer's orders with product, quantity and status.",
                     {{"customer_id", integer}}, {"customer_id"}),
       function_tool("cancel_order", "Cancel a placed order; its stock is returned.",
                     {{"order_id", integer}}, {"order_id"})});
}

json shop_call(SqliteDb& db, const std::string& name, const json& a) {
  if (name == "find_customer") {
    only_keys(a, {"email"});
    json r = db.objects(
        "SELECT id AS customer_id, name, email FROM customers WHERE lower(email) = lower(?)",
        {trim(str_arg(a, "email"))});
    SHOAL_CHECK(!r.empty(), "no customer with email {}", str_arg(a, "email"));
    return r[0];
  }
  if (name == "search_products") {
    only_keys(a, {"query"});
    std::string q = trim(str_arg(a, "query"));
    SHOAL_CHECK(!q.empty(), "query must not be empty");
    json rows = db.objects(
        "SELECT id AS product_id, name, category, price_cents, stock FROM products WHERE name LIKE "
        "? OR "
        "category LIKE ? ORDER BY id LIMIT 30",
        {"%" + q + "%", "%" + q + "%"});
    for (auto& r : rows) {
      r["price"] = money(r["price_cents"]);
      r.erase("price_cents");
    }
    return rows;
  }
  if (name == "place_order") {
    only_keys(a, {"customer_id", "product_id", "quantity"});
    int64_t c = int_arg(a, "customer_id"), p = int_arg(a, "product_id"), q = int_arg(a, "quantity");
    SHOAL_CHECK(q >= 1, "quantity must be at least 1");
    SHOAL_CHECK(!db.query("SELECT 1 FROM customers WHERE id = ?", {c})["rows"].empty(),
                "no customer {}", c);
    json prod = db.objects("SELECT stock FROM products WHERE id = ?", {p});
    SHOAL_CHECK(!prod.empty(), "no product {}", p);
    SHOAL_CHECK(prod[0]["stock"].get<int64_t>() >= q, "only {} of product {} in stock",
                prod[0]["stock"].get<int64_t>(), p);
    db.query("UPDATE products SET stock = stock - ? WHERE id = ?", {q, p});
    db.query(
        "INSERT INTO orders(customer_id, product_id, quantity, status) VALUES (?, ?, ?, 'placed')",
        {c, p, q});
    return {{"order_id", db.last_insert_rowid()}, {"status", "placed"}};
  }
  if (name == "list_orders") {
    only_keys(a, {"customer_id"});
    return db.objects(
        "SELECT o.id AS order_id, o.product_id, p.name AS product_name, o.quantity, o.status FROM "
        "orders o JOIN "
        "products p ON p.id = o.product_id WHERE o.customer_id = ? ORDER BY o.id",
        {int_arg(a, "customer_id")});
  }
  if (name == "cancel_order") {
    only_keys(a, {"order_id"});
    int64_t id = int_arg(a, "order_id");
    json o = db.objects("SELECT product_id, quantity, status FROM orders WHERE id = ?", {id});
    SHOAL_CHECK(!o.empty(), "no order {}", id);
    SHOAL_CHECK(o[0]["status"] == "placed", "order {} is already {}", id,
                o[0]["status"].get<std::string>());
    db.query("UPDATE orders SET status = 'cancelled' WHERE id = ?", {id});
    db.query("UPDATE products SET stock = stock + ? WHERE id = ?",
             {o[0]["quantity"], o[0]["product_id"]});
    return {{"order_id", id}, {"status", "cancelled"}};
  }
  SHOAL_FAIL("unknown tool '{}'", name);
}

// The demonstration's and perturbations' runner: reads go straight through; each write passes
// through `hook`, which may change or drop it (perturbations).
using WriteHook = std::function<bool(int index, std::string& name, json& args)>;

// Worlds drawn per task before giving up. A world fits no goal for 22 of seeds 0..99,999 at
// difficulty 1 (none at 2-5); a second world fitted each of them.
constexpr int kWorldAttempts = 16;

class ApiWorldFamily final : public Family {
 public:
  std::string name() const override { return "api_world"; }
  std::string description() const override {
    return "a generated bank or shop database behind tools; success is the database's final state";
  }

  Task make(uint64_t seed, int d) const override {
    Task t = blank(seed, d);
    int goals = std::vector<int>{1, 1, 2, 2, 3}[static_cast<size_t>(d - 1)];
    json plan = json::array();
    std::string sql, request;
    bool bank = false;
    int draws = 0;
    // Rarely (about 2 bank worlds in 10,000 at difficulty 1) no goal fits the world drawn: then
    // the whole world is drawn again from a stream derived from (seed, difficulty, attempt). The
    // first attempt uses the family's plain stream, so every task that fitted stays as it was.
    for (int attempt = 0; plan.empty(); ++attempt) {
      SHOAL_CHECK(attempt < kWorldAttempts,
                  "api_world seed {} difficulty {}: no goal fits {} worlds", seed, d,
                  kWorldAttempts);
      Rng rng = attempt == 0 ? Rng(name(), seed, d)
                             : Rng(name() + "/world" + std::to_string(attempt), seed, d);
      sql.clear();
      request.clear();
      ++draws;
      bank = rng.chance(0.5);
      if (bank)
        make_bank(rng, d, goals, sql, request, plan);
      else
        make_shop(rng, d, goals, sql, request, plan);
    }
    t.messages = {
        message("system",
                system_prompt("You act for the " + std::string(bank ? "bank" : "shop") +
                              "'s staff through its tools. Make exactly the changes asked "
                              "for, nothing else; when done, confirm with `ANSWER: done`.")),
        message("user", request)};
    t.tools = bank ? bank_tools() : shop_tools();
    t.environment = {{"domain", bank ? "bank" : "shop"}, {"sql", sql}};
    t.verifier = {{"plan", plan}};
    t.metadata = {{"domain", bank ? "bank" : "shop"}, {"goals", goals}};
    if (draws > 1) t.metadata["world_draws"] = draws;  // only on redrawn worlds: others unchanged
    return t;
  }

  std::unique_ptr<EnvState> open(const Task& t, sandbox::Client*) const override {
    auto s = std::make_unique<WorldState>();
    s->db.exec(t.environment["sql"].get<std::string>());
    return s;
  }

  json call_tool(const Task& t, EnvState* state, const std::string& name,
                 const json& args) const override {
    SqliteDb& db = static_cast<WorldState*>(state)->db;
    return t.environment["domain"] == "bank" ? bank_call(db, name, args)
                                             : shop_call(db, name, args);
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    return run(t, sb, [](int, std::string&, json&) { return true; });
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    int writes = static_cast<int>(gold_writes(t).size());
    int target = rng.index(static_cast<size_t>(writes));
    int kind = rng.index(3);
    json expected = expected_state(t);
    auto make = [&](int k) {
      return run(t, sb, [&, k](int i, std::string& name, json& args) {
        if (i != target) return true;
        if (k == 0) return false;  // a step forgotten
        if (k == 1) {              // a number slightly off
          if (args.contains("amount"))
            args["amount"] = args["amount"].get<double>() + (rng.chance(0.5) ? 10 : 0.01);
          else if (args.contains("quantity"))
            args["quantity"] = args["quantity"].get<int64_t>() + 1;
          else
            return false;
          return true;
        }
        // the wrong record: a neighbouring id
        for (const char* key :
             {"from_account_id", "account_id", "product_id", "order_id", "to_account_id"})
          if (args.contains(key)) {
            args[key] = args[key].get<int64_t>() + (rng.chance(0.5) ? 1 : -1);
            return true;
          }
        return false;
      });
    };
    Episode e = make(kind);
    if (replay_state(t, e) == expected) e = make(0);  // a change with no effect: forget the step
    return e;
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto calls = tool_calls(e);
    int bad = 0;
    for (const auto& c : calls) bad += !c.error.empty();
    json got = replay_state(t, e), want = expected_state(t);
    if (got == want)
      return pass("the database ends as asked", {{"state", 1}, {"malformed_calls", bad}});
    // Name the first table that differs.
    std::string table = "?";
    for (auto it = want.begin(); it != want.end(); ++it)
      if (!got.contains(it.key()) || got[it.key()] != *it) {
        table = it.key();
        break;
      }
    return fail("the database differs from the goal (table " + table + ")",
                {{"state", 0}, {"malformed_calls", bad}});
  }

 private:
  static json gold_writes(const Task& t) {
    json w = json::array();
    for (const auto& step : t.verifier["plan"])
      for (const auto& x : step["writes"]) w.push_back(x);
    return w;
  }

  json expected_state(const Task& t) const {
    Environment env(*this, t);
    for (const auto& w : gold_writes(t)) {
      json r = env.call(w["name"], w["arguments"]);
      SHOAL_CHECK(!r.contains("error"), "api_world seed {}: a gold write fails: {}", t.seed,
                  r.dump());
    }
    return dump_state(static_cast<WorldState*>(env.state())->db);
  }

  json replay_state(const Task& t, const Episode& e) const {
    Environment env(*this, t);
    for (const auto& c : tool_calls(e))
      if (c.error.empty()) env.call(c.name, c.args);
    return dump_state(static_cast<WorldState*>(env.state())->db);
  }

  // Runs the plan: each step's reads (lookups whose results the writes need), then its writes.
  Episode run(const Task& t, sandbox::Client* sb, const WriteHook& hook) const {
    Environment env(*this, t, sb);
    Trajectory tr(env);
    int index = 0;
    for (const auto& step : t.verifier["plan"]) {
      for (const auto& r : step["reads"]) {
        json result = tr.call(r["name"], r["arguments"]);
        SHOAL_CHECK(!result.contains("error"), "api_world seed {}: a lookup fails: {}", t.seed,
                    result.dump());
      }
      for (const auto& w : step["writes"]) {
        std::string name = w["name"];
        json args = w["arguments"];
        if (hook(index++, name, args)) tr.call(name, args);
      }
    }
    tr.say("All requested changes are made.\n" + answer_line("done"));
    return tr.take();
  }

  static void make_bank(Rng& rng, int d, int goals, std::string& sql, std::string& request,
                        json& plan) {
    int n = std::vector<int>{6, 10, 16, 24, 40}[static_cast<size_t>(d - 1)];
    sql =
        "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);\n"
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, type TEXT NOT "
        "NULL, "
        "balance_cents INTEGER NOT NULL, frozen INTEGER NOT NULL DEFAULT 0);\n"
        "CREATE TABLE transfers(id INTEGER PRIMARY KEY, from_account INTEGER, to_account INTEGER, "
        "amount_cents INTEGER);\n";
    std::vector<Customer> cs;
    std::set<std::string> names;
    std::map<int64_t, int64_t> balance;
    std::map<int64_t, bool> frozen;
    int64_t account = 100 + rng.uniform(0, 800);
    while (static_cast<int>(cs.size()) < n) {
      std::string nm = rng.pick(kFirst) + " " + rng.pick(kLast);
      if (!names.insert(nm).second) continue;
      Customer c{static_cast<int64_t>(cs.size() + 1), nm, rng.pick(kTowns)};
      c.checking = account++;
      balance[c.checking] = rng.uniform(20, 3000) * 100 + rng.uniform(0, 99);
      if (rng.chance(0.75)) {
        c.savings = account++;
        balance[c.savings] = rng.uniform(100, 9000) * 100 + rng.uniform(0, 99);
      }
      sql += fmt::format("INSERT INTO customers VALUES ({}, {}, {});\n", c.id, sql_quote(c.name),
                         sql_quote(c.city));
      for (auto [id, type] : {std::pair{c.checking, "checking"}, std::pair{c.savings, "savings"}}) {
        if (!id) continue;
        frozen[id] = d >= 3 && rng.chance(0.1);
        sql += fmt::format("INSERT INTO accounts VALUES ({}, {}, '{}', {}, {});\n", id, c.id, type,
                           balance[id], frozen[id] ? 1 : 0);
      }
      cs.push_back(c);
    }
    // Goals on distinct customers, so they do not interact.
    std::vector<int> order = rng.sample(n, n);
    size_t next = 0;
    auto take = [&](auto ok) -> const Customer* {
      for (; next < order.size(); ++next) {
        const Customer& c = cs[static_cast<size_t>(order[next])];
        if (ok(c)) return ++next, &c;
      }
      return nullptr;
    };
    auto usable = [&](int64_t acct) { return acct != 0 && !frozen[acct]; };
    auto find = [](const Customer& c) {
      return json::array({{{"name", "find_customers"}, {"arguments", {{"name", c.name}}}},
                          {{"name", "list_accounts"}, {"arguments", {{"customer_id", c.id}}}}});
    };
    auto write = [](const char* name, json args) {
      return json{{"name", name}, {"arguments", std::move(args)}};
    };
    for (int attempt = 0; static_cast<int>(plan.size()) < goals && attempt < 40; ++attempt) {
      int kind = rng.index(d >= 4 ? 4 : 3);
      json step = {{"reads", json::array()}, {"writes", json::array()}};
      std::string ask;
      if (kind == 0) {
        const Customer* a = take(
            [&](const Customer& c) { return usable(c.checking) && balance[c.checking] > 2000; });
        const Customer* b = take([&](const Customer& c) { return usable(c.savings); });
        if (!a || !b) continue;
        int64_t amount = rng.uniform(1, balance[a->checking] / 100 - 1) * 100 +
                         (d >= 2 ? rng.uniform(0, 99) : 0);
        ask = fmt::format("Transfer ${} from {}'s checking account to {}'s savings account.",
                          money(amount), a->name, b->name);
        for (const auto& r : find(*a)) step["reads"].push_back(r);
        for (const auto& r : find(*b)) step["reads"].push_back(r);
        step["writes"].push_back(
            write("transfer", {{"from_account_id", a->checking},
                               {"to_account_id", b->savings},
                               {"amount", static_cast<double>(amount) / 100}}));
      } else if (kind == 1) {
        const Customer* a =
            take([&](const Customer& c) { return usable(c.checking) || usable(c.savings); });
        if (!a) continue;
        ask = fmt::format(
            "{} reported a stolen card: freeze every account of theirs that is not frozen yet.",
            a->name);
        step["reads"] = find(*a);
        for (int64_t acct : {a->checking, a->savings})
          if (usable(acct))
            step["writes"].push_back(write("freeze_account", {{"account_id", acct}}));
      } else if (kind == 2) {
        const Customer* a =
            take([&](const Customer& c) { return usable(c.checking) && usable(c.savings); });
        if (!a) continue;
        ask = fmt::format(
            "Move the entire balance of {}'s savings account into their checking account.",
            a->name);
        step["reads"] = find(*a);
        step["writes"].push_back(
            write("transfer", {{"from_account_id", a->savings},
                               {"to_account_id", a->checking},
                               {"amount", static_cast<double>(balance[a->savings]) / 100}}));
      } else {
        const Customer* a = take([&](const Customer& c) {
          return usable(c.checking) && usable(c.savings) &&
                 balance[c.savings] > balance[c.checking] + 2000;
        });
        const Customer* b = take([&](const Customer& c) { return usable(c.checking); });
        if (!a || !b) continue;
        // Half the time the checking account cannot cover it.
        bool short_ = rng.chance(0.5);
        int64_t amount = short_ ? rng.uniform(balance[a->checking] + 1, balance[a->savings] - 1)
                                : rng.uniform(100, balance[a->checking]);
        ask = fmt::format(
            "{} owes {} ${}. Pay it into {}'s checking account from {}'s checking account, or from "
            "their "
            "savings account if the checking balance is below ${}.",
            a->name, b->name, money(amount), b->name, a->name, money(amount));
        for (const auto& r : find(*a)) step["reads"].push_back(r);
        for (const auto& r : find(*b)) step["reads"].push_back(r);
        step["writes"].push_back(
            write("transfer", {{"from_account_id", short_ ? a->savings : a->checking},
                               {"to_account_id", b->checking},
                               {"amount", static_cast<double>(amount) / 100}}));
      }
      request += (request.empty() ? "" : " ") + ask;
      plan.push_back(step);
    }
  }

  static void make_shop(Rng& rng, int d, int goals, std::string& sql, std::string& request,
                        json& plan) {
    int n_customers = std::vector<int>{5, 8, 14, 20, 30}[static_cast<size_t>(d - 1)];
    int n_categories = std::min<int>(static_cast<int>(kCatalogue.size()), 2 + d);
    sql =
        "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL "
        "UNIQUE);\n"
        "CREATE TABLE products(id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, "
        "price_cents INTEGER NOT NULL, stock INTEGER NOT NULL);\n"
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, product_id "
        "INTEGER NOT "
        "NULL, quantity INTEGER NOT NULL, status TEXT NOT NULL);\n";
    struct Product {
      int64_t id;
      std::string name, category;
      int64_t price, stock;
    };
    std::vector<Product> products;
    std::vector<int> cats = rng.sample(static_cast<int>(kCatalogue.size()), n_categories);
    std::vector<std::string> brands = {"Nordic", "Acme", "Vela", "Orbit", "Pine"};
    int64_t pid = 1;
    for (int ci : cats) {
      const auto& [cat, bases] = kCatalogue[static_cast<size_t>(ci)];
      std::set<int64_t> prices;
      for (const auto& base : bases) {
        int64_t price;
        do price = rng.uniform(5, 300) * 100 + 99;
        while (!prices.insert(price).second);
        Product p{pid++, rng.pick(brands) + " " + base, cat, price, rng.uniform(0, 25)};
        products.push_back(p);
      }
    }
    for (const auto& p : products)
      sql += fmt::format("INSERT INTO products VALUES ({}, {}, '{}', {}, {});\n", p.id,
                         sql_quote(p.name), p.category, p.price, p.stock);
    struct Cust {
      int64_t id;
      std::string name, email;
    };
    std::vector<Cust> cs;
    std::set<std::string> emails;
    while (static_cast<int>(cs.size()) < n_customers) {
      std::string f = rng.pick(kFirst), l = rng.pick(kLast);
      std::string email = lower(f) + "." + lower(l) + "@shop.test";
      if (!emails.insert(email).second) continue;
      cs.push_back({static_cast<int64_t>(cs.size() + 1), f + " " + l, email});
      sql += fmt::format("INSERT INTO customers VALUES ({}, {}, {});\n", cs.back().id,
                         sql_quote(cs.back().name), sql_quote(email));
    }
    // Existing orders: each (customer, product) at most once, so "the order of X" is unambiguous.
    int64_t oid = 1;
    std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>
        placed;  // order, customer, product, qty
    std::set<std::pair<int64_t, int64_t>> pairs;
    for (int i = 0; i < n_customers * 2; ++i) {
      const Cust& c = rng.pick(cs);
      const Product& p = rng.pick(products);
      if (!pairs.insert({c.id, p.id}).second) continue;
      bool cancelled = rng.chance(0.25);
      int64_t q = rng.uniform(1, 3);
      sql += fmt::format("INSERT INTO orders VALUES ({}, {}, {}, {}, '{}');\n", oid, c.id, p.id, q,
                         cancelled ? "cancelled" : "placed");
      if (!cancelled) placed.emplace_back(oid, c.id, p.id, q);
      ++oid;
    }
    std::set<int64_t> used_customers, used_products;
    auto write = [](const char* name, json args) {
      return json{{"name", name}, {"arguments", std::move(args)}};
    };
    for (int attempt = 0; static_cast<int>(plan.size()) < goals && attempt < 40; ++attempt) {
      json step = {{"reads", json::array()}, {"writes", json::array()}};
      std::string ask;
      int kind = rng.index(3);
      const Cust* c = nullptr;
      for (int tries = 0; tries < 50 && !c; ++tries) {
        const Cust& x = rng.pick(cs);
        if (!used_customers.count(x.id)) c = &x;
      }
      if (!c) continue;
      if (kind == 1) {  // cancel an order the customer has
        const std::tuple<int64_t, int64_t, int64_t, int64_t>* o = nullptr;
        for (const auto& p : placed)
          if (std::get<1>(p) == c->id && !used_products.count(std::get<2>(p))) o = &p;
        if (!o)
          kind = 0;
        else {
          const Product& p = products[static_cast<size_t>(std::get<2>(*o) - 1)];
          ask = fmt::format("Cancel {}'s order of the {}.", c->email, p.name);
          step["reads"] =
              json::array({{{"name", "find_customer"}, {"arguments", {{"email", c->email}}}},
                           {{"name", "list_orders"}, {"arguments", {{"customer_id", c->id}}}}});
          step["writes"].push_back(write("cancel_order", {{"order_id", std::get<0>(*o)}}));
          used_products.insert(p.id);
        }
      }
      if (kind == 0 || kind == 2) {
        // kind 0: a named product; kind 2: the cheapest of a category.
        const Product* target = nullptr;
        std::string category = kCatalogue[static_cast<size_t>(rng.pick(cats))].first;
        if (kind == 2) {
          for (const auto& p : products)
            if (p.category == category && (!target || p.price < target->price)) target = &p;
        } else {
          target = &rng.pick(products);
        }
        if (used_products.count(target->id) || target->stock < 1) continue;
        int64_t q = rng.uniform(1, std::min<int64_t>(target->stock, 4));
        ask = kind == 2 ? fmt::format("Order {} of the cheapest {} for {}.", q, category, c->email)
                        : fmt::format("Order {} x {} for {}.", q, target->name, c->email);
        step["reads"] =
            json::array({{{"name", "find_customer"}, {"arguments", {{"email", c->email}}}},
                         {{"name", "search_products"},
                          {"arguments", {{"query", kind == 2 ? category : target->name}}}}});
        step["writes"].push_back(write(
            "place_order", {{"customer_id", c->id}, {"product_id", target->id}, {"quantity", q}}));
        used_products.insert(target->id);
      }
      used_customers.insert(c->id);
      request += (request.empty() ? "" : " ") + ask;
      plan.push_back(step);
    }
  }
};

}  // namespace

std::unique_ptr<Family> make_api_world_family() {
  return std::make_unique<ApiWorldFamily>();
}

}  // namespace shoal::tasks
