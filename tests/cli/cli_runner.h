// Runs the shoal binary these tests were built with (SHOAL_BINARY) through the shell, as a user
// would, and captures its exit code and output: the one helper of every test that runs the CLI.
// Test support only.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace shoal::test {

struct ShoalResult {
  int code = -1;    // the exit status; -1 when the command could not run or was killed
  std::string out;  // stdout, plus stderr when merged
};

// `args` is appended to the binary's path as shell words (quote what needs it). stderr is merged
// into `out` when `merge_stderr`, else discarded.
inline ShoalResult run_shoal(const std::string& args, bool merge_stderr = true) {
  std::string cmd =
      std::string(SHOAL_BINARY) + " " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  ShoalResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace shoal::test
