// shoal::Error: formats "message [file:line: condition]" once, at construction.
#include "base/error.h"

namespace shoal {
namespace {
std::string what_text(const std::string& message, const char* file, int line, const char* cond) {
  std::string s = message;
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  s += fmt::format(" [{}:{}", base, line);
  if (cond) s += fmt::format(": {}", cond);
  s += "]";
  return s;
}
}  // namespace

Error::Error(std::string message, const char* file, int line, const char* condition)
    : std::runtime_error(what_text(message, file, line, condition)),
      message_(std::move(message)),
      file_(file),
      line_(line) {}

}  // namespace shoal
