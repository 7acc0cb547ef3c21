// The SQLite wrapper (sqlite.h).
#include "tasks/sqlite.h"

#include <sqlite3.h>

#include <cctype>

#include "base/error.h"

namespace shoal::tasks {

using json = nlohmann::json;

Sqlite::Sqlite(const std::string& path, Open mode) : path_(path) {
  int flags = SQLITE_OPEN_NOMUTEX;
  switch (mode) {
    case Open::memory:
    case Open::read_write_create:
      flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
      break;
    case Open::read_write:
      flags |= SQLITE_OPEN_READWRITE;
      break;
    case Open::read_only:
      flags |= SQLITE_OPEN_READONLY;
      break;
  }
  int rc = sqlite3_open_v2(mode == Open::memory ? ":memory:" : path.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close(db_);
    db_ = nullptr;
    SHOAL_FAIL("cannot open database {}: {}", path, msg);
  }
  sqlite3_busy_timeout(db_, 10000);
  sqlite3_extended_result_codes(db_, 1);
}

Sqlite::~Sqlite() {
  if (db_) sqlite3_close_v2(db_);
}

Sqlite::Sqlite(Sqlite&& other) noexcept : db_(other.db_), path_(std::move(other.path_)) {
  other.db_ = nullptr;
}

void Sqlite::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    SHOAL_FAIL("{}: {}", path_, msg);
  }
}

namespace {

struct Statement {
  sqlite3_stmt* s = nullptr;
  ~Statement() { sqlite3_finalize(s); }
};

}  // namespace

json Sqlite::query(const std::string& sql, const json& params, size_t max_rows) {
  Statement st;
  const char* tail = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), static_cast<int>(sql.size()), &st.s, &tail) != SQLITE_OK)
    SHOAL_FAIL("{}", sqlite3_errmsg(db_));
  SHOAL_CHECK(st.s, "empty SQL statement");
  for (const char* p = tail; p && *p; ++p)
    SHOAL_CHECK(std::isspace(static_cast<unsigned char>(*p)) || *p == ';',
                "only one SQL statement at a time");
  SHOAL_CHECK(params.is_array(), "SQL parameters must be an array");
  int i = 1;
  for (const auto& p : params) {
    int rc = SQLITE_OK;
    if (p.is_null())
      rc = sqlite3_bind_null(st.s, i);
    else if (p.is_boolean())
      rc = sqlite3_bind_int64(st.s, i, p.get<bool>() ? 1 : 0);
    else if (p.is_number_integer())
      rc = sqlite3_bind_int64(st.s, i, p.get<int64_t>());
    else if (p.is_number())
      rc = sqlite3_bind_double(st.s, i, p.get<double>());
    else if (p.is_string())
      rc =
          sqlite3_bind_text(st.s, i, p.get_ref<const std::string&>().c_str(), -1, SQLITE_TRANSIENT);
    else
      SHOAL_FAIL("SQL parameter {} has unsupported type {}", i, p.type_name());
    SHOAL_CHECK(rc == SQLITE_OK, "binding SQL parameter {}: {}", i, sqlite3_errmsg(db_));
    ++i;
  }
  json out = {{"columns", json::array()}, {"rows", json::array()}};
  int n = sqlite3_column_count(st.s);
  for (int c = 0; c < n; ++c) out["columns"].push_back(sqlite3_column_name(st.s, c));
  for (;;) {
    int rc = sqlite3_step(st.s);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) SHOAL_FAIL("{}", sqlite3_errmsg(db_));
    SHOAL_CHECK(out["rows"].size() < max_rows, "query returned more than {} rows", max_rows);
    json row = json::array();
    for (int c = 0; c < n; ++c) {
      switch (sqlite3_column_type(st.s, c)) {
        case SQLITE_INTEGER:
          row.push_back(sqlite3_column_int64(st.s, c));
          break;
        case SQLITE_FLOAT:
          row.push_back(sqlite3_column_double(st.s, c));
          break;
        case SQLITE_NULL:
          row.push_back(nullptr);
          break;
        default: {
          const unsigned char* text = sqlite3_column_text(st.s, c);
          row.push_back(std::string(reinterpret_cast<const char*>(text),
                                    static_cast<size_t>(sqlite3_column_bytes(st.s, c))));
        }
      }
    }
    out["rows"].push_back(std::move(row));
  }
  return out;
}

json Sqlite::objects(const std::string& sql, const json& params) {
  json r = query(sql, params);
  json out = json::array();
  for (const auto& row : r["rows"]) {
    json o = json::object();
    for (size_t c = 0; c < row.size(); ++c) o[r["columns"][c].get<std::string>()] = row[c];
    out.push_back(std::move(o));
  }
  return out;
}

namespace {
int reads_only(void*, int action, const char*, const char*, const char*, const char*) {
  switch (action) {
    case SQLITE_SELECT:
    case SQLITE_READ:
    case SQLITE_FUNCTION:
    case SQLITE_RECURSIVE:
      return SQLITE_OK;
    default:
      return SQLITE_DENY;
  }
}
}  // namespace

void Sqlite::restrict_to_reads() {
  sqlite3_limit(db_, SQLITE_LIMIT_ATTACHED, 0);
  sqlite3_set_authorizer(db_, reads_only, nullptr);
}

int64_t Sqlite::changes() const {
  return sqlite3_changes64(db_);
}

int64_t Sqlite::last_insert_id() const {
  return sqlite3_last_insert_rowid(db_);
}

Transaction::Transaction(Sqlite& db) : db_(db) {
  db_.exec("BEGIN IMMEDIATE");
}

Transaction::~Transaction() {
  if (!done_) {
    try {
      db_.exec("ROLLBACK");
    } catch (...) {
    }
  }
}

void Transaction::commit() {
  db_.exec("COMMIT");
  done_ = true;
}

std::string sql_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

}  // namespace shoal::tasks
