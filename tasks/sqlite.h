// A thin RAII wrapper over SQLite for the task families' worlds and the task store: open, run a
// script, run a statement with bound parameters and get rows as JSON, transactions that roll back
// on an exception. Not an ORM; errors are shoal::Error carrying SQLite's message.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

struct sqlite3;

namespace shoal::tasks {

class Sqlite {
 public:
  enum class Open { memory, read_write_create, read_write, read_only };
  explicit Sqlite(const std::string& path = ":memory:", Open mode = Open::memory);
  ~Sqlite();
  Sqlite(const Sqlite&) = delete;
  Sqlite& operator=(const Sqlite&) = delete;
  Sqlite(Sqlite&& other) noexcept;

  // Runs one or more statements (no results).
  void exec(const std::string& sql);
  // Runs one statement with `params` (a JSON array of null/int/real/string) bound in order.
  // Returns {"columns": [...], "rows": [[...], ...]}; at most max_rows rows (an error beyond).
  nlohmann::json query(const std::string& sql,
                       const nlohmann::json& params = nlohmann::json::array(),
                       size_t max_rows = 100000);
  // The rows as objects keyed by column name.
  nlohmann::json objects(const std::string& sql,
                         const nlohmann::json& params = nlohmann::json::array());
  // From now on only reads: SELECT over the existing tables and functions (an authorizer denies
  // every write, PRAGMA, ATTACH and DETACH; no database can be attached).
  void restrict_to_reads();
  int64_t changes() const;
  int64_t last_insert_id() const;
  sqlite3* handle() { return db_; }
  const std::string& path() const { return path_; }

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

// BEGIN IMMEDIATE ... COMMIT; rolls back when destroyed without commit().
class Transaction {
 public:
  explicit Transaction(Sqlite& db);
  ~Transaction();
  void commit();

 private:
  Sqlite& db_;
  bool done_ = false;
};

// Quotes a string as an SQL literal ('O''Brien').
std::string sql_quote(const std::string& s);

}  // namespace shoal::tasks
