// The files tool (files.h): every path resolved beneath the workspace by the kernel (openat2).
#include "sandbox/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace shoal::sandbox {

namespace {

constexpr uint64_t kResolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

[[noreturn]] void refuse(const std::string& message) {
  throw ToolError{error_kind::tool_error, message};
}
[[noreturn]] void bad_args(const std::string& message) {
  throw ToolError{error_kind::invalid_arguments, message};
}

std::string errno_text(const std::string& path, int e) {
  if (e == EXDEV || e == ELOOP) return "path '" + path + "' leads outside the workspace (refused)";
  if (e == ENOENT) return "no such file or directory: '" + path + "'";
  if (e == EISDIR) return "'" + path + "' is a directory";
  if (e == ENOTDIR) return "a component of '" + path + "' is not a directory";
  if (e == ENOSPC) return "workspace is full (disk limit) writing '" + path + "'";
  if (e == EFBIG) return "file too large: '" + path + "'";
  return "'" + path + "': " + strerror(e);
}

void check_relative(const std::string& path) {
  if (path.empty()) bad_args("'path' must not be empty");
  if (path[0] == '/')
    refuse("path '" + path + "' is absolute: paths are relative to the workspace (/work)");
  if (path.find('\0') != std::string::npos) bad_args("'path' contains a NUL byte");
  if (path.size() > 4096) bad_args("'path' is longer than 4096 bytes");
}

Fd open_beneath(int dirfd, const std::string& path, int flags, mode_t mode = 0) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = kResolve;
  long fd = syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how);
  if (fd < 0) refuse(errno_text(path, errno));
  return Fd(static_cast<int>(fd));
}

Fd open_root(const std::string& root) {
  int fd = open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) refuse("workspace is not available: " + std::string(strerror(errno)));
  return Fd(fd);
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string p = path.substr(i, j - i);
    if (!p.empty() && p != ".") parts.push_back(p);
    i = j + 1;
  }
  return parts;
}

// Opens (creating as needed) the parent directory of `path`; returns it and the last component.
std::pair<Fd, std::string> open_parent(int root, const std::string& path, uid_t owner,
                                       bool create) {
  auto parts = split_path(path);
  if (parts.empty()) bad_args("'path' names the workspace itself");
  Fd dir(fcntl(root, F_DUPFD_CLOEXEC, 3));
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (parts[i] == "..") refuse("path '" + path + "' leads outside the workspace (refused)");
    if (create && mkdirat(dir.get(), parts[i].c_str(), 0755) == 0 && geteuid() == 0) {
      Fd made = open_beneath(dir.get(), parts[i], O_RDONLY | O_DIRECTORY);
      if (fchown(made.get(), owner, owner) != 0) refuse(errno_text(path, errno));
    }
    dir = open_beneath(dir.get(), parts[i], O_RDONLY | O_DIRECTORY);
  }
  if (parts.back() == "..") refuse("path '" + path + "' leads outside the workspace (refused)");
  return {std::move(dir), parts.back()};
}

std::string read_all(int fd, size_t offset, size_t max_bytes, bool& truncated, size_t& size) {
  struct stat st;
  if (fstat(fd, &st) != 0) refuse(strerror(errno));
  if (!S_ISREG(st.st_mode)) refuse("not a regular file");
  size = static_cast<size_t>(st.st_size);
  std::string out;
  size_t want = size > offset ? std::min(size - offset, max_bytes) : 0;
  out.resize(want);
  size_t got = 0;
  while (got < want) {
    ssize_t n = pread(fd, out.data() + got, want - got, static_cast<off_t>(offset + got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  truncated = offset + got < size;
  return out;
}

void write_all(int fd, const std::string& content, const std::string& path) {
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      refuse(errno_text(path, errno));
    }
    done += static_cast<size_t>(n);
  }
}

std::string get_string(const json& args, const char* key, bool required) {
  if (!args.contains(key)) {
    if (required) bad_args(fmt::format("missing '{}' (a string)", key));
    return "";
  }
  if (!args[key].is_string()) bad_args(fmt::format("'{}' must be a string", key));
  return args[key].get<std::string>();
}

void do_write(int root, uid_t owner, const std::string& path, const std::string& content,
              bool append) {
  check_relative(path);
  auto [dir, name] = open_parent(root, path, owner, true);
  Fd f = open_beneath(dir.get(), name,
                      O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC) | O_NOFOLLOW, 0644);
  struct stat st;
  if (fstat(f.get(), &st) != 0 || !S_ISREG(st.st_mode)) refuse("'" + path + "' is not a file");
  if (geteuid() == 0 && fchown(f.get(), owner, owner) != 0) refuse(errno_text(path, errno));
  write_all(f.get(), content, path);
}

void list_dir(int dirfd, const std::string& prefix, bool recursive, size_t max_entries,
              json& entries, bool& truncated, int depth) {
  int dup = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
  DIR* d = fdopendir(dup);
  if (!d) {
    close(dup);
    refuse(strerror(errno));
  }
  std::vector<std::pair<std::string, unsigned char>> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == ".." || (depth == 0 && n == ".tmp")) continue;
    names.push_back({n, e->d_type});
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  for (auto& [n, type] : names) {
    if (entries.size() >= max_entries) {
      truncated = true;
      return;
    }
    struct stat st;
    if (fstatat(dirfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    std::string rel = prefix.empty() ? n : prefix + "/" + n;
    const char* kind = S_ISDIR(st.st_mode)   ? "dir"
                       : S_ISLNK(st.st_mode) ? "symlink"
                       : S_ISREG(st.st_mode) ? "file"
                                             : "other";
    entries.push_back({{"path", rel}, {"type", kind}, {"size", static_cast<int64_t>(st.st_size)}});
    if (recursive && S_ISDIR(st.st_mode) && depth < 32) {
      Fd sub = open_beneath(dirfd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      list_dir(sub.get(), rel, recursive, max_entries, entries, truncated, depth + 1);
    }
  }
}

}  // namespace

void write_workspace_file(const std::string& root, uid_t owner, const std::string& path,
                          const std::string& content) {
  Fd r = open_root(root);
  do_write(r.get(), owner, path, content, false);
}

json files_action(const std::string& root, uid_t owner, const json& args, size_t max_read_bytes,
                  size_t max_write_bytes) {
  std::string action = get_string(args, "action", true);
  Fd r = open_root(root);
  if (action == "read") {
    std::string path = get_string(args, "path", true);
    check_relative(path);
    size_t offset = 0;
    if (args.contains("offset")) {
      if (!args["offset"].is_number_unsigned()) bad_args("'offset' must be a non-negative integer");
      offset = args["offset"].get<size_t>();
    }
    Fd f = open_beneath(r.get(), path, O_RDONLY);
    bool truncated = false;
    size_t size = 0;
    std::string content = read_all(f.get(), offset, max_read_bytes, truncated, size);
    return {{"path", path}, {"content", content}, {"size", size}, {"truncated", truncated}};
  }
  if (action == "write") {
    std::string path = get_string(args, "path", true);
    std::string content = get_string(args, "content", true);
    bool append = args.value("append", false);
    if (content.size() > max_write_bytes)
      refuse(fmt::format("content of {} bytes is over the file size limit ({} bytes)",
                         content.size(), max_write_bytes));
    do_write(r.get(), owner, path, content, append);
    return {{"path", path}, {"written", content.size()}};
  }
  if (action == "list") {
    std::string path = get_string(args, "path", false);
    if (path.empty()) path = ".";
    check_relative(path);
    bool recursive = args.value("recursive", true);
    Fd d = path == "." ? Fd(fcntl(r.get(), F_DUPFD_CLOEXEC, 3))
                       : open_beneath(r.get(), path, O_RDONLY | O_DIRECTORY);
    json entries = json::array();
    bool truncated = false;
    list_dir(d.get(), path == "." ? "" : path, recursive, 2000, entries, truncated, 0);
    return {{"path", path}, {"entries", entries}, {"truncated", truncated}};
  }
  if (action == "patch") {
    std::string path = get_string(args, "path", true);
    std::string old_text = get_string(args, "old", true);
    std::string new_text = get_string(args, "new", true);
    check_relative(path);
    if (old_text.empty()) bad_args("'old' must not be empty");
    std::string content;
    {
      Fd f = open_beneath(r.get(), path, O_RDONLY);
      bool truncated = false;
      size_t size = 0;
      content = read_all(f.get(), 0, max_write_bytes + 1, truncated, size);
      if (truncated) refuse("'" + path + "' is too large to patch");
    }
    size_t at = content.find(old_text);
    if (at == std::string::npos) refuse("'old' text not found in '" + path + "'");
    if (content.find(old_text, at + 1) != std::string::npos)
      refuse("'old' text occurs more than once in '" + path + "': include more context");
    content.replace(at, old_text.size(), new_text);
    if (content.size() > max_write_bytes) refuse("patched file would exceed the file size limit");
    do_write(r.get(), owner, path, content, false);
    return {{"path", path}, {"replaced_at", at}, {"size", content.size()}};
  }
  if (action == "delete") {
    std::string path = get_string(args, "path", true);
    check_relative(path);
    auto [dir, name] = open_parent(r.get(), path, owner, false);
    if (unlinkat(dir.get(), name.c_str(), 0) != 0) {
      if (errno != EISDIR || unlinkat(dir.get(), name.c_str(), AT_REMOVEDIR) != 0)
        refuse(errno_text(path, errno));
    }
    return {{"path", path}, {"deleted", true}};
  }
  bad_args("unknown action '" + action + "' (read, write, list, patch, delete)");
}

}  // namespace shoal::sandbox
