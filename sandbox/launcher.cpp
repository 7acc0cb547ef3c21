// Sandbox launching (launcher.h): the bubblewrap command line, the child's setup between fork and
// exec (only async-signal-safe calls there), workspaces, uids, and the capped output pump.
#include "sandbox/launcher.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/error.h"
#include "base/log.h"
#include "sandbox/driver.h"
#include "sandbox/seccomp_filter.h"

namespace shoal::sandbox {

namespace fs = std::filesystem;

namespace {

constexpr uid_t kUidBase = 1900000000;  // far above any real or subordinate uid range
constexpr uint32_t kUidCount = 65536;
constexpr const char* kUidLockDir = "/run/shoal-sandbox/uids";

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  SHOAL_CHECK(static_cast<bool>(f), "writing {} failed", path);
}

void close_fd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

// Workspace mounts to sweep, deepest first, from /proc/self/mountinfo: everything under `dir`
// (our own state directory, whose lock we hold) and any "shoal-ws-<pid>" tmpfs whose server died.
std::vector<std::string> stale_mounts(const std::string& dir) {
  std::vector<std::string> out;
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string id, parent, devno, root, mount_point;
    in >> id >> parent >> devno >> root >> mount_point;
    auto sep = line.find(" - ");
    std::string fstype, source;
    if (sep != std::string::npos) std::istringstream(line.substr(sep + 3)) >> fstype >> source;
    bool ours = mount_point.rfind(dir + "/", 0) == 0;
    bool orphan = false;
    if (fstype == "tmpfs" && source.rfind("shoal-ws-", 0) == 0) {
      pid_t pid = static_cast<pid_t>(std::atoi(source.c_str() + 9));
      orphan = pid > 0 && pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH;
    }
    if (ours || orphan) out.push_back(mount_point);
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.size() > b.size(); });
  return out;
}

constexpr uint64_t kArmMagic = 0x73686f616c61726dull;  // "shoalarm"
constexpr size_t kMaxRlimits = 16;
constexpr size_t kArmBuffer = 8u << 20;  // the command line, code included
constexpr size_t kArmMaxArgs = 16384;

struct ArmHeader {
  uint64_t magic;
  uint32_t uid, switch_uid, n_rlimits, argc;
  uint64_t blob_len;
  struct {
    int resource;
    rlim_t value;
  } rlimits[kMaxRlimits];
};

// Sends the header with the 7 file descriptors the child places on 0..6, then the NUL-separated
// command line.
bool send_command(int sock, const ArmHeader& h, const int (&fds)[7], const std::string& blob) {
  iovec iov{const_cast<ArmHeader*>(&h), sizeof h};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof fds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof fds);
  std::memcpy(CMSG_DATA(c), fds, sizeof fds);
  if (sendmsg(sock, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof h)) return false;
  size_t done = 0;
  while (done < blob.size()) {
    ssize_t n = send(sock, blob.data() + done, blob.size() - done, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

// The armed child, between fork and exec: only async-signal-safe calls, no allocation (the
// buffers were allocated before the fork).
[[noreturn]] void armed_child(int sock, const char* const* procs, size_t nprocs, pid_t server,
                              char* buf, char** argv) {
  auto fail = [](int step) {
    int e[2] = {step, errno};
    ssize_t ignored = write(6, e, sizeof e);
    (void)ignored;
    _exit(127);
  };
  // Other threads' pipes were open at the fork: close them now, or this child would hold a
  // sibling sandbox's output (no EOF) for as long as it waits.
  if (dup2(sock, 3) != 3) _exit(127);
  sock = 3;
  if (syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
    for (int fd = 4; fd < 4096; ++fd) close(fd);
  for (size_t i = 0; i < nprocs; ++i) {
    int fd = open(procs[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) _exit(126);
    close(fd);
  }
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != server) _exit(127);
  if (write(sock, "R", 1) != 1) _exit(127);
  ArmHeader h;
  iovec iov{&h, sizeof h};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 7)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (n == 0) _exit(0);  // disarmed
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (n != static_cast<ssize_t>(sizeof h) || h.magic != kArmMagic || !c ||
      c->cmsg_type != SCM_RIGHTS || h.blob_len > kArmBuffer || h.argc >= kArmMaxArgs ||
      h.n_rlimits > kMaxRlimits)
    _exit(127);
  int src[7];
  std::memcpy(src, CMSG_DATA(c), sizeof src);
  size_t got = 0;
  while (got < h.blob_len) {
    ssize_t r = read(sock, buf + got, h.blob_len - got);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      _exit(127);
    }
    got += static_cast<size_t>(r);
  }
  size_t pos = 0;
  for (uint32_t i = 0; i < h.argc; ++i) {
    argv[i] = buf + pos;
    while (pos < got && buf[pos] != '\0') ++pos;
    ++pos;
  }
  argv[h.argc] = nullptr;
  // Move the descriptors above the targets first, then place them on 0..6 (6: the error pipe).
  int high[7];
  for (int i = 0; i < 7; ++i)
    if ((high[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 64)) < 0) _exit(127);
  for (int i = 0; i < 7; ++i)
    if (dup2(high[i], i) < 0) _exit(127);  // dup2 clears close-on-exec on the target
  fcntl(6, F_SETFD, FD_CLOEXEC);
  if (syscall(SYS_close_range, 7u, ~0u, 0u) != 0)
    for (int fd = 7; fd < 4096; ++fd) close(fd);
  if (setsid() < 0) fail(1);
  for (uint32_t i = 0; i < h.n_rlimits; ++i) {
    struct rlimit rl = {h.rlimits[i].value, h.rlimits[i].value};
    if (setrlimit(h.rlimits[i].resource, &rl) != 0) fail(4);
  }
  if (h.switch_uid) {
    if (setgroups(0, nullptr) != 0 || setresgid(h.uid, h.uid, h.uid) != 0 ||
        setresuid(h.uid, h.uid, h.uid) != 0)
      fail(5);
  }
  // After the uid switch: a credential change clears the parent-death signal.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(2);
  if (getppid() != server) _exit(127);
  char* envp[] = {nullptr};
  execve(argv[0], argv, envp);
  fail(6);
  _exit(127);
}

}  // namespace

Armory::Armory(Cgroups* cgroups, size_t stock) : cgroups_(cgroups), target_(stock) {
  thread_ = std::thread([this] {
    std::unique_lock lock(mu_);
    while (!stop_) {
      if (stock_.size() >= target_) {
        cv_.wait(lock);
        continue;
      }
      lock.unlock();
      Armed a;
      try {
        a = arm();
      } catch (const std::exception& e) {
        log::warn("sandbox: arming a child failed: {}", e.what());
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      lock.lock();
      if (a.pid > 0) {
        stock_.push_back(std::move(a));
        cv_.notify_all();
      }
    }
  });
}

Armory::~Armory() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  for (auto& a : stock_) disarm(a);
}

void Armory::disarm(Armed& a) {
  if (a.sock >= 0) close(a.sock);  // the child reads EOF and exits
  a.sock = -1;
  if (a.pid > 0) {
    int status;
    while (waitpid(a.pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  a.pid = -1;
  a.cgroup.reset();
}

Armed Armory::take() {
  {
    std::lock_guard lock(mu_);
    if (!stock_.empty()) {
      Armed a = std::move(stock_.back());
      stock_.pop_back();
      cv_.notify_all();  // refill
      return a;
    }
  }
  return arm();
}

Armed Armory::arm() {
  Armed a;
  if (cgroups_)
    a.cgroup = cgroups_->create("sb-" + std::to_string(getpid()) + "-" + std::to_string(counter_++),
                                64 << 20, 64);
  std::vector<const char*> procs;
  if (a.cgroup)
    for (auto& p : a.cgroup->procs_files()) procs.push_back(p.c_str());
  int sv[2];
  SHOAL_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair failed: {}",
              strerror(errno));
  std::unique_ptr<char[]> buf(new char[kArmBuffer]);  // untouched pages: copy-on-write, lazily
  std::unique_ptr<char*[]> argv(new char*[kArmMaxArgs + 1]);
  pid_t server = getpid();
  pid_t pid = fork();
  if (pid == 0) armed_child(sv[1], procs.data(), procs.size(), server, buf.get(), argv.get());
  int fork_errno = errno;
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    SHOAL_FAIL("fork failed: {}", strerror(fork_errno));
  }
  a.pid = pid;
  a.sock = sv[0];
  char ready = 0;
  ssize_t n;
  while ((n = read(a.sock, &ready, 1)) < 0 && errno == EINTR) {
  }
  if (n != 1 || ready != 'R') {
    disarm(a);
    SHOAL_FAIL("an armed sandbox child failed to start (joining its cgroup)");
  }
  return a;
}

UidLease::~UidLease() {
  if (fd_ >= 0) close(fd_);
}

void IsolationEnv::prepare(const std::string& instance, size_t armed_stock) {
  // Writing to a sandbox that just died must be an EPIPE error, not a SIGPIPE killing the server.
  signal(SIGPIPE, SIG_IGN);
  root = geteuid() == 0;
  SHOAL_CHECK(access(bwrap.c_str(), X_OK) == 0,
              "bubblewrap not found at {} (Debian package bubblewrap)", bwrap);
  SHOAL_CHECK(access(python.c_str(), X_OK) == 0, "python3 not found at {}", python);
  SHOAL_CHECK(python.rfind("/usr/", 0) == 0,
              "python must live under /usr (the sandbox sees only /usr), got {}", python);
  fs::create_directories(state_dir + "/etc/alternatives");
  fs::create_directories(state_dir + "/driver");
  fs::create_directories(state_dir + "/ws");
  // Sandboxes run as other uids: they must traverse these directories, not list them.
  chmod(state_dir.c_str(), 0711);
  chmod((state_dir + "/ws").c_str(), 0711);
  chmod((state_dir + "/etc").c_str(), 0755);
  chmod((state_dir + "/driver").c_str(), 0755);
  // The sandbox's /etc: just enough for user names and localhost, nothing of the host's.
  write_text(state_dir + "/etc/passwd",
             "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/work:/bin/sh\n"
             "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
  write_text(state_dir + "/etc/group", "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n");
  write_text(state_dir + "/etc/hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n");
  write_text(state_dir + "/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n");
  std::error_code ec;
  fs::copy_file("/etc/ld.so.cache", state_dir + "/etc/ld.so.cache",
                fs::copy_options::overwrite_existing, ec);
  write_text(state_dir + "/driver/driver.py", driver_source());
  for (const char* f : {"passwd", "group", "hosts", "nsswitch.conf", "ld.so.cache"})
    chmod((state_dir + "/etc/" + f).c_str(), 0644);
  chmod((state_dir + "/driver/driver.py").c_str(), 0644);
  (void)seccomp_bpf();  // build once now: a libseccomp failure shows at startup
  cgroups = std::make_unique<Cgroups>(instance);
  // What an earlier instance left goes before anything new is made.
  swept_cgroups = cgroups->sweep();
  swept_workspaces = sweep_workspaces(state_dir);
  armory = std::make_unique<Armory>(cgroups.get(), armed_stock);
  if (root) {
    std::error_code e2;
    fs::create_directories(kUidLockDir, e2);
  }
}

std::unique_ptr<UidLease> IsolationEnv::lease_uid() {
  if (!root) return std::make_unique<UidLease>(getuid(), -1);
  std::lock_guard lock(uid_mu_);
  for (uint32_t i = 0; i < kUidCount; ++i) {
    uint32_t slot = (next_uid_ + i) % kUidCount;
    uid_t uid = kUidBase + slot;
    std::string path = std::string(kUidLockDir) + "/" + std::to_string(uid);
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) continue;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      next_uid_ = slot + 1;
      return std::make_unique<UidLease>(uid, fd);
    }
    close(fd);
  }
  SHOAL_FAIL("no free sandbox uid in {}..{}", kUidBase, kUidBase + kUidCount - 1);
}

std::string IsolationEnv::describe() const {
  return fmt::format("bwrap {}, python {}, seccomp on, cgroups {}, {}", bwrap, python,
                     cgroups ? cgroups->describe() : "none",
                     root ? "one unprivileged uid per sandbox, tmpfs workspaces with a size limit"
                          : "same uid as the server, plain workspace directories");
}

Workspace::Workspace(const IsolationEnv& env, const std::string& name, uid_t owner, int64_t disk_mb)
    : path_(env.state_dir + "/ws/" + name), owner_(owner) {
  SHOAL_CHECK(mkdir(path_.c_str(), 0700) == 0 || errno == EEXIST, "mkdir {} failed: {}", path_,
              strerror(errno));
  if (env.root) {
    std::string opts =
        fmt::format("size={}m,uid={},gid={},mode=0700,nr_inodes=65536", disk_mb, owner, owner);
    // The server's pid in the source names the owner: a later server sweeps a dead one's mounts.
    std::string source = "shoal-ws-" + std::to_string(getpid());
    if (mount(source.c_str(), path_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) == 0)
      mounted_ = true;
    else
      log::warn("sandbox: tmpfs for workspace {} failed ({}); no disk quota", path_,
                strerror(errno));
  }
  std::string tmp = path_ + "/.tmp";
  mkdir(tmp.c_str(), 0700);
  if (env.root) {
    SHOAL_CHECK(chown(path_.c_str(), owner, owner) == 0 && chown(tmp.c_str(), owner, owner) == 0,
                "chown of workspace {} failed: {}", path_, strerror(errno));
  }
}

Workspace::~Workspace() {
  if (mounted_) umount2(path_.c_str(), MNT_DETACH);
  std::error_code ec;
  fs::remove_all(path_, ec);
}

int sweep_workspaces(const std::string& state_dir) {
  std::string ws = state_dir + "/ws";
  int n = 0;
  for (const auto& m : stale_mounts(ws)) {
    umount2(m.c_str(), MNT_DETACH);
    if (m.rfind(ws + "/", 0) != 0 && rmdir(m.c_str()) == 0) ++n;  // a dead server's workspace
  }
  std::error_code ec;
  for (auto& entry : fs::directory_iterator(ws, ec)) {
    fs::remove_all(entry.path(), ec);
    ++n;
  }
  return n;
}

std::unique_ptr<SandboxProcess> SandboxProcess::launch(IsolationEnv& env, const Workspace& ws,
                                                       const LaunchSpec& spec) {
  const Limits& lim = spec.limits;
  std::unique_ptr<SandboxProcess> sb(new SandboxProcess());

  // --- bubblewrap's command line
  std::vector<std::string> a = {env.bwrap,
                                "--unshare-user",
                                "--unshare-pid",
                                "--unshare-net",  // a loopback device only
                                "--unshare-ipc",
                                "--unshare-uts",
                                "--unshare-cgroup-try",
                                "--disable-userns",
                                "--die-with-parent",
                                "--new-session",
                                "--hostname",
                                "sandbox",
                                "--uid",
                                "1000",
                                "--gid",
                                "1000",
                                "--ro-bind",
                                "/usr",
                                "/usr"};
  for (const char* top : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) {
    std::string host = std::string("/") + top;
    std::error_code ec;
    if (fs::is_symlink(host, ec))
      a.insert(a.end(), {"--symlink", fs::read_symlink(host, ec).string(), host});
    else if (fs::is_directory(host, ec))
      a.insert(a.end(), {"--ro-bind", host, host});
  }
  a.insert(a.end(), {"--ro-bind", env.state_dir + "/etc", "/etc"});
  if (fs::is_directory("/etc/alternatives"))
    a.insert(a.end(), {"--ro-bind", "/etc/alternatives", "/etc/alternatives"});
  a.insert(a.end(), {"--proc", "/proc", "--dev", "/dev", "--bind", ws.path(), "/work", "--bind",
                     ws.path() + "/.tmp", "/tmp"});
  if (spec.driver) a.insert(a.end(), {"--ro-bind", env.state_dir + "/driver", "/.shoal"});
  // bubblewrap builds the root and /dev on tmpfs: make both read-only once everything is mounted,
  // so the workspace (/work, with /tmp and /dev/shm inside it) is the only writable place.
  a.insert(a.end(), {"--bind", ws.path() + "/.tmp", "/dev/shm", "--remount-ro", "/dev",
                     "--remount-ro", "/"});
  a.insert(a.end(), {"--chdir",
                     spec.cwd,
                     "--seccomp",
                     "5",
                     "--clearenv",
                     "--setenv",
                     "HOME",
                     "/work",
                     "--setenv",
                     "PATH",
                     "/usr/local/bin:/usr/bin:/bin",
                     "--setenv",
                     "LANG",
                     "C.UTF-8",
                     "--setenv",
                     "TMPDIR",
                     "/tmp",
                     "--setenv",
                     "USER",
                     "sandbox",
                     "--setenv",
                     "PYTHONDONTWRITEBYTECODE",
                     "1",
                     "--"});
  a.insert(a.end(), spec.command.begin(), spec.command.end());

  uid_t uid = ws.owner();
  bool switch_uid = env.root;
  struct Rl {
    int resource;
    rlim_t value;
  };
  std::vector<Rl> rls = {
      {RLIMIT_FSIZE, static_cast<rlim_t>(lim.file_mb) << 20},
      {RLIMIT_NOFILE, static_cast<rlim_t>(lim.nofile)},
      {RLIMIT_CORE, 0},
      {RLIMIT_MEMLOCK, 64 << 10},
      {RLIMIT_MSGQUEUE, 0},
  };
  // NPROC counts the uid's processes host-wide: exact with a per-sandbox uid, meaningless
  // (and harmful) when sandboxes share the server's uid.
  if (switch_uid) rls.push_back({RLIMIT_NPROC, static_cast<rlim_t>(lim.pids + 8)});
  if (spec.cpu_rlimit) {
    rlim_t cpu_s = static_cast<rlim_t>((lim.cpu_ms + 999) / 1000);
    rls.push_back({RLIMIT_CPU, cpu_s});
  }
  // Address space: a multiple of the memory limit (runtimes reserve far more than they touch); the
  // memory cgroup holds the real line.
  rls.push_back({RLIMIT_AS, static_cast<rlim_t>(lim.memory_mb) << 22});

  SHOAL_CHECK(rls.size() <= kMaxRlimits, "too many rlimits");

  // --- hand the command to an armed child (already in its cgroup), which execs bubblewrap
  Armed armed = env.armory->take();
  sb->pid_ = armed.pid;
  sb->cgroup_ = std::move(armed.cgroup);
  if (sb->cgroup_) sb->cgroup_->set_limits(lim.memory_mb << 20, lim.pids);
  ArmHeader h{};
  h.magic = kArmMagic;
  h.uid = uid;
  h.switch_uid = switch_uid ? 1 : 0;
  h.n_rlimits = static_cast<uint32_t>(rls.size());
  for (size_t i = 0; i < rls.size(); ++i) h.rlimits[i] = {rls[i].resource, rls[i].value};
  std::string blob;
  for (auto& arg : a) blob.append(arg).push_back('\0');
  h.argc = static_cast<uint32_t>(a.size());
  h.blob_len = blob.size();
  SHOAL_CHECK(blob.size() <= kArmBuffer && a.size() < kArmMaxArgs,
              "sandbox command line too long ({} bytes)", blob.size());

  int out[2], err[2], ctl_in[2] = {-1, -1}, ctl_out[2] = {-1, -1}, errp[2];
  SHOAL_CHECK(
      pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0 && pipe2(errp, O_CLOEXEC) == 0,
      "pipe2 failed: {}", strerror(errno));
  bool control = spec.driver || spec.stdio_control;
  if (control)
    SHOAL_CHECK(pipe2(ctl_in, O_CLOEXEC) == 0 && pipe2(ctl_out, O_CLOEXEC) == 0, "pipe2 failed: {}",
                strerror(errno));
  int seccomp_fd = seccomp_memfd();
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  // Driver: control on fds 3 (in) and 4 (out). stdio_control (an MCP server): on 0 and 1.
  int fds[7] = {spec.stdio_control ? ctl_in[0] : devnull,
                spec.stdio_control ? ctl_out[1] : out[1],
                err[1],
                spec.driver ? ctl_in[0] : devnull,
                spec.driver ? ctl_out[1] : devnull,
                seccomp_fd,
                errp[1]};
  bool sent = send_command(armed.sock, h, fds, blob);
  close(armed.sock);
  for (int fd : {out[1], err[1], errp[1], seccomp_fd, devnull}) close(fd);
  if (control) {
    close(ctl_in[0]);
    close(ctl_out[1]);
  }
  sb->out_ = out[0];
  sb->err_ = err[0];
  if (control) {
    sb->ctl_w_ = ctl_in[1];
    sb->ctl_r_ = ctl_out[0];
  }
  int report[2] = {0, 0};
  ssize_t got = 0;
  if (sent)
    while ((got = read(errp[0], report, sizeof report)) < 0 && errno == EINTR) {
    }
  close(errp[0]);
  if (!sent || got == static_cast<ssize_t>(sizeof report)) {
    static const char* kSteps[] = {
        "?",         "setsid",        "prctl",      "joining the cgroup",
        "setrlimit", "switching uid", "exec bwrap", "receiving the command"};
    int step = !sent ? 7 : report[0] >= 1 && report[0] <= 7 ? report[0] : 0;
    SHOAL_FAIL("starting the sandbox failed at {}: {}", kSteps[step],
               strerror(sent ? report[1] : errno));  // the destructor kills and reaps
  }
  for (int fd : {sb->out_, sb->err_, sb->ctl_w_, sb->ctl_r_})
    if (fd >= 0) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return sb;
}

SandboxProcess::~SandboxProcess() {
  kill_all();
  if (!reaped_) wait(nullptr);
  close_fd(out_);
  close_fd(err_);
  close_fd(ctl_w_);
  close_fd(ctl_r_);
}

void SandboxProcess::kill_all() {
  // bubblewrap's child is PID 1 of the sandbox's namespace with --die-with-parent: killing bwrap
  // kills it, and the kernel kills every process of a namespace whose PID 1 dies. The cgroup
  // catches anything in between.
  if (pid_ > 0 && !reaped_) ::kill(pid_, SIGKILL);
  if (cgroup_) cgroup_->kill_all();
}

int SandboxProcess::wait(struct rusage* usage) {
  int status = 0;
  if (reaped_) return 0;
  while (wait4(pid_, &status, 0, usage) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  return status;
}

PumpEnd pump(SandboxProcess& sb, const std::string& input, Capture& capture, std::string& line,
             Clock::time_point deadline, bool until_line) {
  size_t written = 0;
  int out = sb.out_fd(), err = sb.err_fd(), ctl_r = sb.ctl_read_fd(), ctl_w = sb.ctl_write_fd();
  bool out_open = true, err_open = true, ctl_open = ctl_r >= 0;
  std::string ctl_buf;
  char buf[65536];
  auto take = [&](int fd, std::string& dst, bool& truncated, bool& open_flag) {
    for (;;) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n > 0) {
        size_t room = capture.cap > dst.size() ? capture.cap - dst.size() : 0;
        size_t keep = std::min(room, static_cast<size_t>(n));
        dst.append(buf, keep);
        if (keep < static_cast<size_t>(n)) truncated = true;
        continue;
      }
      if (n == 0) open_flag = false;
      return;  // EAGAIN or error
    }
  };
  for (;;) {
    if (until_line) {
      auto nl = ctl_buf.find('\n');
      if (nl != std::string::npos) {
        line = ctl_buf.substr(0, nl);
        // Everything the call printed is in the pipes before the driver answers: drain it.
        if (out_open) take(out, capture.out, capture.out_truncated, out_open);
        if (err_open) take(err, capture.err, capture.err_truncated, err_open);
        return PumpEnd::line;
      }
      if (!ctl_open) {
        if (out_open) take(out, capture.out, capture.out_truncated, out_open);
        if (err_open) take(err, capture.err, capture.err_truncated, err_open);
        return PumpEnd::eof;
      }
    } else if (!out_open && !err_open) {
      return PumpEnd::eof;
    }
    auto now = Clock::now();
    if (now >= deadline) return PumpEnd::deadline;
    int timeout_ms = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1);
    pollfd fds[4];
    int n = 0;
    int i_out = -1, i_err = -1, i_ctl = -1, i_w = -1;
    if (out_open) fds[i_out = n++] = {out, POLLIN, 0};
    if (err_open) fds[i_err = n++] = {err, POLLIN, 0};
    if (ctl_open && until_line) fds[i_ctl = n++] = {ctl_r, POLLIN, 0};
    if (ctl_w >= 0 && written < input.size()) fds[i_w = n++] = {ctl_w, POLLOUT, 0};
    int rc = poll(fds, n, timeout_ms);
    if (rc < 0 && errno != EINTR) SHOAL_FAIL("poll failed: {}", strerror(errno));
    if (rc <= 0) continue;
    if (i_out >= 0 && fds[i_out].revents) take(out, capture.out, capture.out_truncated, out_open);
    if (i_err >= 0 && fds[i_err].revents) take(err, capture.err, capture.err_truncated, err_open);
    if (i_ctl >= 0 && fds[i_ctl].revents) {
      for (;;) {
        ssize_t r = read(ctl_r, buf, sizeof buf);
        if (r > 0) {
          ctl_buf.append(buf, static_cast<size_t>(r));
          SHOAL_CHECK(ctl_buf.size() < (1u << 20), "sandbox driver sent an oversized reply");
          continue;
        }
        if (r == 0) ctl_open = false;
        break;
      }
    }
    if (i_w >= 0 && fds[i_w].revents) {
      ssize_t w = write(ctl_w, input.data() + written, input.size() - written);
      if (w > 0)
        written += static_cast<size_t>(w);
      else if (w < 0 && errno != EAGAIN)
        written = input.size();  // the driver is gone: the EOF on its control pipe says so
    }
  }
}

void discard_pending(SandboxProcess& sb) {
  char buf[65536];
  for (int fd : {sb.out_fd(), sb.err_fd()})
    while (fd >= 0 && read(fd, buf, sizeof buf) > 0) {
    }
}

}  // namespace shoal::sandbox
