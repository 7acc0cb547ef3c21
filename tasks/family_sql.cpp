// Family "sql": questions over a generated company database (departments, employees, projects,
// hours logged), answered with a read-only `sql` tool; the verifier executes the gold query on
// the task's database and compares the agent's answer with its result. Difficulty goes from one
// table to joins, grouping and HAVING, and hides the schema (the agent must look it up). Not the
// API world (family_api_world.cpp): nothing here writes.
#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "base/error.h"
#include "base/sqlite.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

const std::vector<std::string> kDepartments = {"Research", "Sales",   "Support", "Logistics",
                                               "Design",   "Finance", "Legal"};
const std::vector<std::string> kCities = {"Aurel", "Brisk", "Corva", "Delmar", "Eston"};
const std::vector<std::string> kGiven = {"Ada",  "Bram", "Cleo", "Dev", "Eli", "Fay", "Gil",
                                         "Hana", "Ivo",  "Jun",  "Kit", "Lev", "Mae", "Nico",
                                         "Ola",  "Pim",  "Rhea", "Sol", "Tam", "Uma"};
const std::vector<std::string> kFamily = {"Abbot", "Barros", "Chen", "Dahl",   "Engel", "Frost",
                                          "Gray",  "Holm",   "Ito",  "Juarez", "Kern",  "Lund",
                                          "Marsh", "Nagy",   "Orr",  "Park"};
const std::vector<std::string> kProjectWords = {"Atlas", "Beacon",  "Comet",   "Drift",
                                                "Ember", "Falcon",  "Glacier", "Harbor",
                                                "Iris",  "Juniper", "Kestrel", "Lumen"};

constexpr const char* kSchema =
    "CREATE TABLE departments(id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);\n"
    "CREATE TABLE employees(id INTEGER PRIMARY KEY, name TEXT NOT NULL, department_id INTEGER NOT "
    "NULL "
    "REFERENCES departments(id), salary INTEGER NOT NULL, hired_year INTEGER NOT NULL);\n"
    "CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT NOT NULL, department_id INTEGER NOT "
    "NULL "
    "REFERENCES departments(id), budget INTEGER NOT NULL);\n"
    "CREATE TABLE assignments(id INTEGER PRIMARY KEY, employee_id INTEGER NOT NULL REFERENCES "
    "employees(id), "
    "project_id INTEGER NOT NULL REFERENCES projects(id), hours INTEGER NOT NULL);\n";

struct DbState : EnvState {
  SqliteDb db;
};

// A question: its text, the gold query, and wrong queries a careless solver might write.
struct Question {
  std::string text, gold;
  std::vector<std::string> wrong;
  bool list = false;  // the answer is a list of names (any order)
};

// Result cells as answer text: a number, a name, or names joined with ", ".
std::string result_text(const json& result) {
  std::vector<std::string> cells;
  for (const auto& row : result["rows"])
    for (const auto& c : row)
      cells.push_back(c.is_string() ? c.get<std::string>() : c.is_null() ? "none" : c.dump());
  std::string out;
  for (size_t i = 0; i < cells.size(); ++i) out += (i ? ", " : "") + cells[i];
  return out;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t c = s.find_first_of(",;\n", start);
    std::string item =
        normalize_words(s.substr(start, c == std::string::npos ? std::string::npos : c - start));
    if (!item.empty()) out.push_back(item);
    if (c == std::string::npos) break;
    start = c + 1;
  }
  // "A, B and C": the last item may be joined with "and".
  if (!out.empty()) {
    std::string& last = out.back();
    size_t a = last.find(" and ");
    if (a != std::string::npos && out.size() > 1) {
      std::string tail = last.substr(a + 5);
      last = last.substr(0, a);
      out.push_back(tail);
    }
    if (last.rfind("and ", 0) == 0) last = last.substr(4);
  }
  return out;
}

// Does `answer` state `gold` (a query result)? Numbers exactly, names by words, lists as sets.
bool answer_matches(const std::string& answer, const json& gold, bool list) {
  if (gold["rows"].empty()) return lower(trim(answer)) == "none";
  if (list) {
    std::multiset<std::string> want, got;
    for (const auto& row : gold["rows"]) want.insert(normalize_words(row[0].get<std::string>()));
    for (const auto& item : split_list(answer)) got.insert(item);
    return want == got;
  }
  const json& cell = gold["rows"][0][0];
  if (gold["rows"].size() != 1 || gold["rows"][0].size() != 1) return false;
  if (cell.is_number_integer())
    return is_plain_number(answer) && numbers_equal(answer, cell.dump());
  if (cell.is_number()) {
    // Rounded by the gold query to 2 decimals; a trailing zero may be dropped.
    double v = cell.get<double>();
    return is_plain_number(answer) && numbers_equal(answer, fmt::format("{:.2f}", v));
  }
  return normalize_words(answer) == normalize_words(cell.get<std::string>());
}

class SqlFamily final : public Family {
 public:
  std::string name() const override { return "sql"; }
  std::string description() const override {
    return "questions over a generated company database, answered with a read-only sql tool";
  }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    std::string sql = kSchema;
    int n_dept = std::min<int>(static_cast<int>(kDepartments.size()), 2 + d);
    int n_emp = 6 + 6 * d, n_proj = 2 + 2 * d;
    std::vector<int> dept = rng.sample(static_cast<int>(kDepartments.size()), n_dept);
    for (int i = 0; i < n_dept; ++i)
      sql += fmt::format("INSERT INTO departments VALUES ({}, '{}', '{}');\n", i + 1,
                         kDepartments[static_cast<size_t>(dept[static_cast<size_t>(i)])],
                         rng.pick(kCities));
    std::set<std::string> names;
    for (int i = 0; i < n_emp;) {
      std::string nm = rng.pick(kGiven) + " " + rng.pick(kFamily);
      if (!names.insert(nm).second) continue;
      ++i;
      sql += fmt::format(
          "INSERT INTO employees VALUES ({}, '{}', {}, {}, {});\n", i, nm, rng.uniform(1, n_dept),
          rng.uniform(30, 160) * 1000 + rng.uniform(0, 99) * 10, rng.uniform(2008, 2026));
    }
    std::vector<int> pw =
        rng.sample(static_cast<int>(kProjectWords.size()), std::min<int>(n_proj, 12));
    for (size_t i = 0; i < pw.size(); ++i)
      sql += fmt::format("INSERT INTO projects VALUES ({}, '{}', {}, {});\n", i + 1,
                         kProjectWords[static_cast<size_t>(pw[i])], rng.uniform(1, n_dept),
                         rng.uniform(10, 900) * 1000);
    int n_assign = n_emp * 2;
    for (int i = 1; i <= n_assign; ++i)
      sql += fmt::format("INSERT INTO assignments VALUES ({}, {}, {}, {});\n", i,
                         rng.uniform(1, n_emp), rng.uniform(1, static_cast<int64_t>(pw.size())),
                         rng.uniform(1, 60));
    SqliteDb db;
    db.exec(sql);
    // Pick a question whose answer is well defined (no ties for "which", not empty where that
    // would make it trivial) and whose wrong queries give other answers.
    Question q;
    for (int attempt = 0;; ++attempt) {
      SHOAL_CHECK(attempt < 200, "sql: no well-posed question for seed {}", seed);
      q = question(rng, d, db);
      if (q.gold.empty()) continue;
      json gold = db.query(q.gold);
      if (gold["rows"].empty() || (gold["rows"].size() == 1 && gold["rows"][0][0].is_null()))
        continue;
      if (!q.list && gold["rows"].size() != 1) continue;
      break;
    }
    std::string schema_note =
        d <= 2 ? std::string("\n\nSchema:\n") + kSchema
               : "\n\n(Look the schema up yourself: SELECT sql FROM sqlite_master.)";
    t.messages = {
        message("system", system_prompt("Answer from the database only, with the value itself"
                                        " (names as written there; lists comma-separated).")),
        message("user", q.text + schema_note)};
    t.tools = json::array({function_tool(
        "sql", "Run one read-only SQL query (SQLite) on the company database.",
        {{"query", {{"type", "string"}, {"description", "a SELECT statement"}}}}, {"query"})});
    t.environment = {{"sql", sql}};
    t.verifier = {{"gold_query", q.gold}, {"wrong_queries", q.wrong}, {"list", q.list}};
    t.metadata = {{"employees", n_emp}, {"departments", n_dept}};
    return t;
  }

  std::unique_ptr<EnvState> open(const Task& t, sandbox::Client*) const override {
    auto s = std::make_unique<DbState>();
    s->db.exec(t.environment["sql"].get<std::string>());
    s->db.restrict_to_reads();
    return s;
  }

  json call_tool(const Task&, EnvState* state, const std::string& name,
                 const json& args) const override {
    SHOAL_CHECK(name == "sql", "unknown tool '{}'", name);
    SHOAL_CHECK(args.contains("query") && args["query"].is_string(),
                "sql needs a string argument 'query'");
    SHOAL_CHECK(args.size() == 1, "sql takes only 'query'");
    return static_cast<DbState*>(state)->db.query(args["query"].get<std::string>(), json::array(),
                                                  200);
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    return run(t, t.verifier["gold_query"], sb);
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    SqliteDb db;
    db.exec(t.environment["sql"].get<std::string>());
    json gold = db.query(t.verifier["gold_query"].get<std::string>());
    bool list = t.verifier["list"];
    // A wrong query whose result would not pass, in a seed-chosen order.
    std::vector<std::string> wrong = t.verifier["wrong_queries"].get<std::vector<std::string>>();
    rng.shuffle(wrong);
    for (const auto& w : wrong) {
      json r = db.query(w);
      if (!answer_matches(result_text(r), gold, list)) return run(t, w, sb);
    }
    // Every wrong query coincided with the gold: the right query, a misread answer.
    Episode e = run(t, t.verifier["gold_query"], sb);
    std::string text = result_text(gold);
    if (list)
      return with_answer(
          e, text.substr(0, text.rfind(", ") == std::string::npos ? 0 : text.rfind(", ")));
    const json& cell = gold["rows"][0][0];
    return with_answer(e,
                       cell.is_number() ? fmt::format("{}", cell.get<double>() + 1) : text + " Jr");
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto ans = final_answer(e);
    if (!ans) return fail("no final ANSWER line", {{"answer", 0}});
    SqliteDb db;
    db.exec(t.environment["sql"].get<std::string>());
    json gold = db.query(t.verifier["gold_query"].get<std::string>());
    if (!answer_matches(*ans, gold, t.verifier["list"].get<bool>()))
      return fail("the answer differs from the gold query's result", {{"answer", 0}});
    return pass("matches the gold query's result", {{"answer", 1}});
  }

 private:
  Episode run(const Task& t, const std::string& query, sandbox::Client* sb) const {
    Environment env(*this, t, sb);
    Trajectory tr(env);
    if (t.difficulty > 2)
      tr.call("sql", {{"query", "SELECT sql FROM sqlite_master WHERE type = 'table'"}});
    json r = tr.call("sql", {{"query", query}});
    SHOAL_CHECK(!r.contains("error"), "sql seed {}: the demonstration's query fails: {}", t.seed,
                r.dump());
    tr.say("From the query result:\n" + answer_line(result_text(r)));
    return tr.take();
  }

  static Question question(Rng& rng, int d, SqliteDb& db) {
    auto pick_name = [&](const std::string& sql) {
      json rows = db.query(sql)["rows"];
      return rows[static_cast<size_t>(rng.index(rows.size()))][0].get<std::string>();
    };
    std::string dept = pick_name("SELECT name FROM departments");
    std::string city = pick_name("SELECT city FROM departments");
    int64_t year = rng.uniform(2012, 2022);
    int64_t salary = rng.uniform(6, 14) * 10000;
    std::string emp_dept = "employees e JOIN departments d ON d.id = e.department_id";
    Question q;
    int level = std::min(d, 5) - 1;
    int kind = rng.index(2);
    switch (level * 2 + kind) {
      case 0:
        q.text = fmt::format("How many employees were hired after {}?", year);
        q.gold = fmt::format("SELECT count(*) FROM employees WHERE hired_year > {}", year);
        q.wrong = {fmt::format("SELECT count(*) FROM employees WHERE hired_year >= {}", year),
                   fmt::format("SELECT count(*) FROM employees WHERE hired_year < {}", year)};
        break;
      case 1:
        q.text =
            fmt::format("What is the highest salary among employees hired in {} or earlier?", year);
        q.gold = fmt::format("SELECT max(salary) FROM employees WHERE hired_year <= {}", year);
        q.wrong = {"SELECT max(salary) FROM employees",
                   fmt::format("SELECT min(salary) FROM employees WHERE hired_year <= {}", year)};
        break;
      case 2:
        q.text = fmt::format("What is the total salary of the {} department?", dept);
        q.gold = fmt::format("SELECT sum(e.salary) FROM {} WHERE d.name = '{}'", emp_dept, dept);
        q.wrong = {fmt::format("SELECT sum(e.salary) FROM {} WHERE d.name <> '{}'", emp_dept, dept),
                   fmt::format("SELECT max(e.salary) FROM {} WHERE d.name = '{}'", emp_dept, dept)};
        break;
      case 3:
        q.text = fmt::format(
            "Who is the most recently hired employee of the {} department (latest year; "
            "the answer is one name)?",
            dept);
        q.gold = fmt::format(
            "SELECT e.name FROM {} WHERE d.name = '{}' AND e.hired_year = (SELECT max(hired_year) "
            "FROM employees "
            "x JOIN departments y ON y.id = x.department_id WHERE y.name = '{}')",
            emp_dept, dept, dept);
        q.wrong = {
            fmt::format("SELECT e.name FROM {} WHERE d.name = '{}' ORDER BY e.hired_year LIMIT 1",
                        emp_dept, dept),
            "SELECT name FROM employees ORDER BY hired_year DESC, id LIMIT 1"};
        break;
      case 4:
        q.text = "Which department has the most employees?";
        q.gold =
            "SELECT d.name FROM employees e JOIN departments d ON d.id = e.department_id GROUP BY "
            "d.id HAVING "
            "count(*) = (SELECT max(c) FROM (SELECT count(*) AS c FROM employees GROUP BY "
            "department_id))";
        q.wrong = {
            "SELECT d.name FROM employees e JOIN departments d ON d.id = e.department_id GROUP BY "
            "d.id "
            "ORDER BY count(*) ASC LIMIT 1",
            "SELECT d.name FROM projects p JOIN departments d ON d.id = p.department_id GROUP BY "
            "d.id ORDER BY "
            "count(*) DESC, d.id DESC LIMIT 1"};
        break;
      case 5:
        q.text = fmt::format(
            "What is the total budget of the projects run by departments located in {}?", city);
        q.gold = fmt::format(
            "SELECT sum(p.budget) FROM projects p JOIN departments d ON d.id = p.department_id "
            "WHERE d.city = '{}'",
            city);
        q.wrong = {fmt::format("SELECT count(*) FROM projects p JOIN departments d ON d.id = "
                               "p.department_id WHERE "
                               "d.city = '{}'",
                               city),
                   "SELECT sum(budget) FROM projects"};
        break;
      case 6: {
        std::string proj = pick_name("SELECT name FROM projects");
        q.text = fmt::format(
            "How many hours in total did employees of the {} department log on project {}?", dept,
            proj);
        q.gold = fmt::format(
            "SELECT sum(a.hours) FROM assignments a JOIN employees e ON e.id = a.employee_id JOIN "
            "departments d ON "
            "d.id = e.department_id JOIN projects p ON p.id = a.project_id WHERE d.name = '{}' AND "
            "p.name = '{}'",
            dept, proj);
        q.wrong = {
            fmt::format("SELECT sum(a.hours) FROM assignments a JOIN projects p ON p.id = "
                        "a.project_id WHERE "
                        "p.name = '{}'",
                        proj),
            fmt::format(
                "SELECT count(*) FROM assignments a JOIN employees e ON e.id = a.employee_id JOIN "
                "departments d ON d.id = e.department_id JOIN projects p ON p.id = a.project_id "
                "WHERE "
                "d.name = '{}' AND p.name = '{}'",
                dept, proj)};
        break;
      }
      case 7:
        q.text = "Which employee logged the most hours in total across all projects?";
        q.gold =
            "SELECT e.name FROM assignments a JOIN employees e ON e.id = a.employee_id GROUP BY "
            "e.id HAVING "
            "sum(a.hours) = (SELECT max(s) FROM (SELECT sum(hours) AS s FROM assignments GROUP BY "
            "employee_id))";
        q.wrong = {
            "SELECT e.name FROM assignments a JOIN employees e ON e.id = a.employee_id ORDER BY "
            "a.hours DESC "
            "LIMIT 1",
            "SELECT e.name FROM assignments a JOIN employees e ON e.id = a.employee_id GROUP BY "
            "e.id ORDER BY "
            "count(*) DESC, e.id LIMIT 1"};
        break;
      case 8:
        q.text = fmt::format("How many departments have an average salary above {}?", salary);
        q.gold = fmt::format(
            "SELECT count(*) FROM (SELECT department_id FROM employees GROUP BY department_id "
            "HAVING avg(salary) > {})",
            salary);
        q.wrong = {
            fmt::format(
                "SELECT count(*) FROM (SELECT department_id FROM employees GROUP BY department_id "
                "HAVING max(salary) > {})",
                salary),
            fmt::format("SELECT count(DISTINCT department_id) FROM employees WHERE salary > {}",
                        salary)};
        break;
      default: {
        int64_t k = rng.uniform(2, 3);
        q.text = fmt::format(
            "List the employees who worked on at least {} different projects (names, any order).",
            k);
        q.gold = fmt::format(
            "SELECT e.name FROM assignments a JOIN employees e ON e.id = a.employee_id GROUP BY "
            "e.id "
            "HAVING count(DISTINCT a.project_id) >= {} ORDER BY e.name",
            k);
        q.wrong = {fmt::format("SELECT e.name FROM assignments a JOIN employees e ON e.id = "
                               "a.employee_id GROUP BY "
                               "e.id HAVING count(*) >= {} ORDER BY e.name",
                               k),
                   fmt::format("SELECT e.name FROM assignments a JOIN employees e ON e.id = "
                               "a.employee_id GROUP BY "
                               "e.id HAVING count(DISTINCT a.project_id) > {} ORDER BY e.name",
                               k)};
        q.list = true;
      }
    }
    return q;
  }
};

}  // namespace

std::unique_ptr<Family> make_sql_family() {
  return std::make_unique<SqlFamily>();
}

}  // namespace shoal::tasks
