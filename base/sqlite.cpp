// SQLite wrapper (sqlite.h).
#include "base/sqlite.h"

#include <sqlite3.h>

#include <cctype>
#include <cstring>

#include "base/error.h"

namespace shoal {

SqliteDb::SqliteDb(const std::string& path, bool create, bool read_only) : path_(path) {
  int flags = read_only ? SQLITE_OPEN_READONLY
                        : (SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0));
  flags |= SQLITE_OPEN_FULLMUTEX;
  int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    if (db_) sqlite3_close(db_);
    db_ = nullptr;
    SHOAL_FAIL("cannot open database {}: {}", path, msg);
  }
  sqlite3_busy_timeout(db_, 10000);
  sqlite3_extended_result_codes(db_, 1);
  try {
    if (!read_only && path != ":memory:")
      exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

SqliteDb::~SqliteDb() {
  if (db_) sqlite3_close_v2(db_);
}

SqliteDb::SqliteDb(SqliteDb&& other) noexcept : db_(other.db_), path_(std::move(other.path_)) {
  other.db_ = nullptr;
}

void SqliteDb::exec(const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    SHOAL_FAIL("database {}: {} (in: {})", path_, msg, sql.substr(0, 200));
  }
}

SqliteStatement SqliteDb::prepare(const std::string& sql) {
  return SqliteStatement(*this, sql);
}
int64_t SqliteDb::last_insert_rowid() const {
  return sqlite3_last_insert_rowid(db_);
}
int64_t SqliteDb::changes() const {
  return sqlite3_changes64(db_);
}

using nlohmann::json;

json SqliteDb::query(const std::string& sql, const json& params, size_t max_rows) {
  SqliteStatement st(*this, sql);
  SHOAL_CHECK(st.stmt_, "empty SQL statement");
  for (const char* p = st.sql_.c_str() + st.tail_; *p; ++p)
    SHOAL_CHECK(std::isspace(static_cast<unsigned char>(*p)) || *p == ';',
                "only one SQL statement at a time");
  SHOAL_CHECK(params.is_array(), "SQL parameters must be an array");
  int i = 1;
  for (const auto& p : params) {
    if (p.is_null())
      st.bind_null(i);
    else if (p.is_boolean())
      st.bind(i, int64_t{p.get<bool>() ? 1 : 0});
    else if (p.is_number_integer())
      st.bind(i, p.get<int64_t>());
    else if (p.is_number())
      st.bind(i, p.get<double>());
    else if (p.is_string())
      st.bind(i, std::string_view(p.get_ref<const std::string&>()));
    else
      SHOAL_FAIL("SQL parameter {} has unsupported type {}", i, p.type_name());
    ++i;
  }
  json out = {{"columns", json::array()}, {"rows", json::array()}};
  int n = sqlite3_column_count(st.stmt_);
  for (int c = 0; c < n; ++c) out["columns"].push_back(sqlite3_column_name(st.stmt_, c));
  while (st.step()) {
    SHOAL_CHECK(out["rows"].size() < max_rows, "query returned more than {} rows", max_rows);
    json row = json::array();
    for (int c = 0; c < n; ++c) {
      switch (sqlite3_column_type(st.stmt_, c)) {
        case SQLITE_INTEGER:
          row.push_back(st.int64(c));
          break;
        case SQLITE_FLOAT:
          row.push_back(st.real(c));
          break;
        case SQLITE_NULL:
          row.push_back(nullptr);
          break;
        default:
          row.push_back(st.text(c));
      }
    }
    out["rows"].push_back(std::move(row));
  }
  return out;
}

json SqliteDb::objects(const std::string& sql, const json& params) {
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

void SqliteDb::restrict_to_reads() {
  sqlite3_limit(db_, SQLITE_LIMIT_ATTACHED, 0);
  sqlite3_set_authorizer(db_, reads_only, nullptr);
}

std::string sql_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

SqliteStatement::SqliteStatement(SqliteDb& db, const std::string& sql) : db_(&db), sql_(sql) {
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v2(db.handle(), sql_.c_str(), -1, &stmt_, &tail);
  check(rc, "prepare");
  tail_ = tail ? static_cast<size_t>(tail - sql_.c_str()) : sql_.size();
}

SqliteStatement::~SqliteStatement() {
  if (stmt_) sqlite3_finalize(stmt_);
}

SqliteStatement::SqliteStatement(SqliteStatement&& o) noexcept
    : db_(o.db_), stmt_(o.stmt_), tail_(o.tail_), sql_(std::move(o.sql_)) {
  o.stmt_ = nullptr;
}

void SqliteStatement::check(int rc, const char* what) const {
  if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return;
  SHOAL_FAIL("database {}: {} failed: {} (in: {})", db_->path(), what,
             sqlite3_errmsg(db_->handle()), sql_.substr(0, 200));
}

SqliteStatement& SqliteStatement::bind(int i, int64_t v) {
  check(sqlite3_bind_int64(stmt_, i, v), "bind");
  return *this;
}
SqliteStatement& SqliteStatement::bind(int i, double v) {
  check(sqlite3_bind_double(stmt_, i, v), "bind");
  return *this;
}
SqliteStatement& SqliteStatement::bind(int i, std::string_view text) {
  check(sqlite3_bind_text64(stmt_, i, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8),
        "bind");
  return *this;
}
SqliteStatement& SqliteStatement::bind_blob(int i, const void* data, size_t bytes) {
  static const char empty = 0;
  check(sqlite3_bind_blob64(stmt_, i, bytes ? data : &empty, bytes, SQLITE_TRANSIENT), "bind");
  return *this;
}
SqliteStatement& SqliteStatement::bind_null(int i) {
  check(sqlite3_bind_null(stmt_, i), "bind");
  return *this;
}

bool SqliteStatement::step() {
  int rc = sqlite3_step(stmt_);
  check(rc, "step");
  return rc == SQLITE_ROW;
}

void SqliteStatement::run() {
  while (step()) {
  }
}

void SqliteStatement::reset() {
  sqlite3_reset(stmt_);
}
int64_t SqliteStatement::int64(int col) const {
  return sqlite3_column_int64(stmt_, col);
}
double SqliteStatement::real(int col) const {
  return sqlite3_column_double(stmt_, col);
}
bool SqliteStatement::is_null(int col) const {
  return sqlite3_column_type(stmt_, col) == SQLITE_NULL;
}
std::string SqliteStatement::text(int col) const {
  const unsigned char* t = sqlite3_column_text(stmt_, col);
  int n = sqlite3_column_bytes(stmt_, col);
  return t ? std::string(reinterpret_cast<const char*>(t), static_cast<size_t>(n)) : std::string();
}
std::vector<uint8_t> SqliteStatement::blob(int col) const {
  const void* p = sqlite3_column_blob(stmt_, col);
  int n = sqlite3_column_bytes(stmt_, col);
  std::vector<uint8_t> out(static_cast<size_t>(n));
  if (n > 0) std::memcpy(out.data(), p, out.size());
  return out;
}

SqliteTransaction::SqliteTransaction(SqliteDb& db) : db_(&db) {
  db.exec("BEGIN IMMEDIATE");
}
SqliteTransaction::~SqliteTransaction() {
  if (!done_) {
    try {
      db_->exec("ROLLBACK");
    } catch (...) {
    }
  }
}
void SqliteTransaction::commit() {
  db_->exec("COMMIT");
  done_ = true;
}

}  // namespace shoal
