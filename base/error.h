// The one error type for host code: a message, plus the file:line and the condition that failed.
// Library code throws shoal::Error (never exit()); the CLI turns it into one clear message and a
// non-zero exit code. Not for device code.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace shoal {

class Error : public std::runtime_error {
 public:
  Error(std::string message, const char* file, int line, const char* condition = nullptr);
  const std::string& message() const { return message_; }  // without the source location
  const char* file() const { return file_; }
  int line() const { return line_; }

 private:
  std::string message_;
  const char* file_;
  int line_;
};

}  // namespace shoal

// SHOAL_CHECK(cond, "fmt {}", args...): throws shoal::Error naming the condition when cond is
// false.
#define SHOAL_CHECK(cond, ...)                                                     \
  do {                                                                             \
    if (!(cond)) [[unlikely]]                                                      \
      throw ::shoal::Error(::fmt::format(__VA_ARGS__), __FILE__, __LINE__, #cond); \
  } while (0)

// SHOAL_FAIL("fmt {}", args...): throws shoal::Error unconditionally.
#define SHOAL_FAIL(...) throw ::shoal::Error(::fmt::format(__VA_ARGS__), __FILE__, __LINE__)
