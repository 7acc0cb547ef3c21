// A thin RAII layer over SQLite's C API: a database handle (WAL for files, busy timeout), prepared
// statements with typed binds and column reads, one-statement queries with JSON parameters and
// rows (the task worlds' tools speak JSON), a read-only authorizer for model-written SQL, and
// transactions that roll back unless committed. Errors throw shoal::Error with SQLite's message
// and the statement. Not an ORM.
#pragma once

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace shoal {

class SqliteStatement;

class SqliteDb {
 public:
  // Opens (creating when `create`) the file, or an in-memory database for ":memory:"; WAL
  // journal and NORMAL sync for writable files, 10 s busy timeout.
  explicit SqliteDb(const std::string& path = ":memory:", bool create = true,
                    bool read_only = false);
  ~SqliteDb();
  SqliteDb(SqliteDb&& other) noexcept;
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  void exec(const std::string& sql);  // one or more statements, no results
  SqliteStatement prepare(const std::string& sql);
  // One statement with `params` (a JSON array of null/bool/int/real/string) bound in order.
  // Returns {"columns": [...], "rows": [[...], ...]}; more than max_rows rows is an error.
  nlohmann::json query(const std::string& sql,
                       const nlohmann::json& params = nlohmann::json::array(),
                       size_t max_rows = 100000);
  // The rows as objects keyed by column name.
  nlohmann::json objects(const std::string& sql,
                         const nlohmann::json& params = nlohmann::json::array());
  // From now on only reads: SELECT over the existing tables and functions (an authorizer denies
  // every write, PRAGMA, ATTACH and DETACH; no database can be attached).
  void restrict_to_reads();
  int64_t last_insert_rowid() const;
  int64_t changes() const;
  const std::string& path() const { return path_; }
  sqlite3* handle() { return db_; }

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

class SqliteStatement {
 public:
  SqliteStatement(SqliteDb& db, const std::string& sql);
  ~SqliteStatement();
  SqliteStatement(SqliteStatement&& o) noexcept;
  SqliteStatement(const SqliteStatement&) = delete;

  // Binds are 1-based like SQLite's; they return *this for chaining.
  SqliteStatement& bind(int i, int64_t v);
  SqliteStatement& bind(int i, double v);
  SqliteStatement& bind(int i, std::string_view text);
  SqliteStatement& bind(int i, const char* text) { return bind(i, std::string_view(text)); }
  SqliteStatement& bind_blob(int i, const void* data, size_t bytes);
  SqliteStatement& bind_null(int i);
  template <class T>
  SqliteStatement& bind_vector(int i, const std::vector<T>& v) {
    return bind_blob(i, v.data(), v.size() * sizeof(T));
  }

  bool step();   // true: a row is ready; false: done
  void run();    // step() until done (INSERT/UPDATE/DELETE)
  void reset();  // for reuse (binds are kept)
  int64_t int64(int col) const;
  double real(int col) const;
  std::string text(int col) const;
  bool is_null(int col) const;
  std::vector<uint8_t> blob(int col) const;
  template <class T>
  std::vector<T> blob_vector(int col) const {
    std::vector<uint8_t> b = blob(col);
    std::vector<T> out(b.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), b.data(), out.size() * sizeof(T));
    return out;
  }

 private:
  friend class SqliteDb;
  void check(int rc, const char* what) const;
  SqliteDb* db_;
  sqlite3_stmt* stmt_ = nullptr;
  size_t tail_ = 0;  // offset in sql_ of what follows the first statement
  std::string sql_;
};

// BEGIN IMMEDIATE on construction; ROLLBACK in the destructor unless commit() was called.
class SqliteTransaction {
 public:
  explicit SqliteTransaction(SqliteDb& db);
  ~SqliteTransaction();
  void commit();

 private:
  SqliteDb* db_;
  bool done_ = false;
};

// Quotes a string as an SQL literal ('O''Brien').
std::string sql_quote(const std::string& s);

}  // namespace shoal
