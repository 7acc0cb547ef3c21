// The files tool: read, write, list, patch and delete inside one workspace, done by the server on
// the host side. Every path is resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
// RESOLVE_NO_XDEV) from the workspace's directory, so `..`, absolute paths and symlinks that lead
// out are refused by the kernel, atomically. Not the sandbox (the sandbox never sees host paths).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

#include "sandbox/protocol.h"

namespace shoal::sandbox {

// A refusal or a failure the caller reports as a tool error (message names the path).
struct ToolError {
  std::string kind, message;
};

// Runs one files action (arguments as the files tool's schema says); returns the result object.
// Files written are owned by `owner` (the sandbox's uid) when the server is root.
json files_action(const std::string& root, uid_t owner, const json& args, size_t max_read_bytes,
                  size_t max_write_bytes);
// Writes one file (parents created), for run_tests.
void write_workspace_file(const std::string& root, uid_t owner, const std::string& path,
                          const std::string& content);

}  // namespace shoal::sandbox
