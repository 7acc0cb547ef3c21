// Hostile code against the sandbox: each case runs code that tries to get out or to exhaust the
// host, asserts that it was contained (and how), that no process outlived its sandbox, that no
// file outside the workspace changed, and that the server is healthy afterwards.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "tests/sandbox/sandbox_fixture.h"

namespace shoal::sandbox::testing {
namespace {

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<LocalServer>(kWorkers);
    client_ = std::make_unique<Client>(ClientOptions{server_->endpoint(), 30000, 3});
    for (int i = 0; i < 4; ++i) python(*client_, "pass");
  }
  void TearDown() override {
    expect_healthy(*client_);
    // No process outlived its sandbox: only the fork-server pool (one sandbox per worker) and the
    // sessions a test made remain, each with nothing but its own bwrap, init and interpreter.
    expect_contained(kWorkers + sessions_);
    client_.reset();
    server_.reset();
    EXPECT_EQ(settle_descendants(0), 0) << "processes left after the server stopped";
  }
  Client& c() { return *client_; }

  std::unique_ptr<LocalServer> server_;
  std::unique_ptr<Client> client_;
  void expect_contained(int max_sandboxes) {
    Census now = settle_sandboxes(max_sandboxes);
    EXPECT_TRUE(now.within(max_sandboxes))
        << now.sandboxes.size() << " sandboxes (at most " << max_sandboxes << " expected):\n"
        << list_descendants();
  }
  static constexpr int kWorkers = 2;
  int sessions_ = 0;  // sessions a test keeps open
};

TEST_F(Hostile, NetworkToHostLoopbackIsBlocked) {
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 8), 0);
  socklen_t len = sizeof addr;
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  std::string code =
      "import socket\ntry:\n  socket.create_connection(('127.0.0.1', " + std::to_string(port) +
      "), timeout=2)\n  print('connected')\nexcept OSError as e:\n  print('blocked', "
      "e.errno)\n";
  for (Mode mode : {Mode::fork, Mode::fresh}) {
    Reply r = python(c(), code, "", mode);
    ASSERT_EQ(r.status, "ok") << describe(r);
    EXPECT_EQ(r.stdout_text.rfind("blocked", 0), 0u) << describe(r);
  }
  // A shell tool cannot reach it either (bash's /dev/tcp is not there; python is the only client).
  Reply s = shell(c(), "python3 -c \"import socket; socket.socket()\" 2>&1 | tail -1");
  EXPECT_NE(s.stdout_text.find("Address family not supported"), std::string::npos) << describe(s);
  // Nothing arrived at the listener.
  EXPECT_LT(accept(listener, nullptr, nullptr), 0);
  EXPECT_EQ(errno, EAGAIN);
  close(listener);
}

TEST_F(Hostile, DnsFails) {
  Reply r = python(c(),
                   "import socket\ntry:\n  print(socket.getaddrinfo('example.com', 80))\nexcept "
                   "OSError as e:\n  print('no dns')\n");
  ASSERT_EQ(r.status, "ok") << describe(r);
  EXPECT_EQ(r.stdout_text, "no dns\n") << describe(r);
  // Only a loopback device in the sandbox's network namespace.
  Reply n = shell(c(), "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '");
  EXPECT_EQ(n.stdout_text, "lo\n") << describe(n);
}

TEST_F(Hostile, HostFilesAreInvisible) {
  std::string project =
      std::filesystem::canonical(std::string(SHOAL_TEST_DATA) + "/../..").string();
  Reply r = python(c(),
                   "import os\n"
                   "for p in ['/etc/shadow', '/root', '/home', '/var', '" +
                       project +
                       "/CMakeLists.txt', '/etc/hostname', '/proc/1/root/etc/shadow']:\n"
                       "  print(p, os.path.exists(p))\n"
                       "print(sorted(os.listdir('/etc')))\n");
  ASSERT_EQ(r.status, "ok") << describe(r);
  EXPECT_EQ(r.stdout_text.find("True"), std::string::npos) << describe(r);
  EXPECT_EQ(r.stdout_text.find("shadow'"), std::string::npos) << describe(r);
  // The host does have them: the test would mean nothing otherwise.
  EXPECT_TRUE(std::filesystem::exists("/etc/shadow"));
  EXPECT_TRUE(std::filesystem::exists(project + "/CMakeLists.txt"));
}

TEST_F(Hostile, WritesOutsideTheWorkspaceFail) {
  std::string marker = unique_name("shoal-marker");
  Reply r = python(c(),
                   "import os\nfor d in ['/', '/usr', '/usr/bin', '/etc', '/dev', '/proc', "
                   "'/.shoal', '/bin']:\n  try:\n    open(os.path.join(d, '" +
                       marker +
                       "'), 'w').write('x')\n    print('wrote', d)\n  except OSError as e:\n"
                       "    print('refused', d)\nopen('/tmp/" +
                       marker + "', 'w').write('inside')\nprint(os.listdir('/tmp'))\n",
                   "", Mode::fresh);
  ASSERT_EQ(r.status, "ok") << describe(r);
  EXPECT_EQ(r.stdout_text.find("wrote"), std::string::npos) << describe(r);
  for (const char* d : {"/", "/usr/", "/usr/bin/", "/etc/", "/tmp/", "/bin/"})
    EXPECT_FALSE(std::filesystem::exists(std::string(d) + marker)) << d << marker;
}

TEST_F(Hostile, SymlinkAndDotDotEscapesAreRefused) {
  std::string s = unique_name("links");
  Reply made = python(c(),
                      "import os\nos.symlink('/etc/shadow', 'abs')\nos.symlink('../../../../etc/"
                      "passwd', 'rel')\nos.symlink('/', 'root')\nos.mkdir('d')\n"
                      "os.symlink('../..', 'd/up')\nopen('ok.txt', 'w').write('fine')\n",
                      s);
  ASSERT_EQ(made.status, "ok") << describe(made);
  sessions_ = 1;
  auto files = [&](json args) { return c().call(make_call("files", std::move(args), s)); };
  Reply ok = files({{"action", "read"}, {"path", "ok.txt"}});
  EXPECT_EQ(ok.status, "ok") << describe(ok);
  EXPECT_EQ(ok.result["content"], "fine");
  for (const char* p : {"abs", "rel", "root/etc/passwd", "d/up/etc/passwd", "../x",
                        "../../../etc/passwd", "/etc/passwd", "d/../../etc/passwd"}) {
    Reply r = files({{"action", "read"}, {"path", p}});
    EXPECT_EQ(r.status, "error") << p << " " << describe(r);
    EXPECT_EQ(r.error_kind, "tool_error") << p;
  }
  std::string marker = unique_name("escape");
  for (std::string p : {"root/tmp/" + marker, "../" + marker, "d/up/" + marker, "/tmp/" + marker}) {
    Reply r = files({{"action", "write"}, {"path", p}, {"content", "x"}});
    EXPECT_EQ(r.status, "error") << p << " " << describe(r);
  }
  EXPECT_FALSE(std::filesystem::exists("/tmp/" + marker));
  Reply l = files({{"action", "list"}, {"path", "root"}});
  EXPECT_EQ(l.status, "error") << describe(l);
  Reply p = files({{"action", "patch"}, {"path", "abs"}, {"old", "root"}, {"new", "x"}});
  EXPECT_EQ(p.status, "error") << describe(p);
  Reply d = files({{"action", "delete"}, {"path", "d/up/etc/passwd"}});
  EXPECT_EQ(d.status, "error") << describe(d);
  EXPECT_TRUE(std::filesystem::exists("/etc/passwd"));
}

TEST_F(Hostile, ForkBombIsContained) {
  auto start = std::chrono::steady_clock::now();
  Reply r = python(c(),
                   "import os\nn = 0\nwhile True:\n  try:\n    os.fork()\n    n += 1\n  except "
                   "OSError:\n    pass\n",
                   "", Mode::fresh, {{"wall_ms", 2000}, {"pids", 32}});
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.status, "error") << describe(r);
  EXPECT_EQ(r.error_kind, "timeout") << describe(r);
  EXPECT_LT(s, 6.0);
  // The shell bomb ends either at the wall limit (error) or, when the pids limit is reached
  // before the shell forks `sleep`, with the shell's own "Cannot fork" (exit 2, seen under load):
  // contained both ways; it must never finish as if nothing happened, nor outlast the limit.
  start = std::chrono::steady_clock::now();
  Reply sh = shell(c(), "f() { f | f & }; f; sleep 5", "", Mode::fresh, {{"wall_ms", 1500}});
  s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(sh.status == "error" || (sh.status == "ok" && sh.exit_code != 0)) << describe(sh);
  EXPECT_LT(s, 6.0);
  // The sandbox works on.
  Reply after = shell(c(), "echo fine", "", Mode::fresh);
  EXPECT_EQ(after.status, "ok") << describe(after);
  EXPECT_EQ(after.stdout_text, "fine\n") << describe(after);
}

TEST_F(Hostile, MemoryBombIsKilled) {
  const char* bomb = "a = []\nwhile True:\n  a.append(bytearray(8 << 20))\n";
  Reply fresh = python(c(), bomb, "", Mode::fresh, {{"memory_mb", 128}});
  EXPECT_EQ(fresh.status, "error") << describe(fresh);
  EXPECT_EQ(fresh.error_kind, "memory_limit") << describe(fresh);
  // A session: its interpreter is killed and the reply says its state is gone.
  std::string s = unique_name("mem");
  Reply sess = python(c(), bomb, s, Mode::session, {{"memory_mb", 128}});
  EXPECT_EQ(sess.status, "error") << describe(sess);
  EXPECT_EQ(sess.error_kind, "memory_limit") << describe(sess);
  EXPECT_TRUE(sess.session_reset);
  // One big allocation fails inside Python (address-space limit) and the session lives on.
  Reply big =
      python(c(), "try:\n  x = bytearray(1 << 34)\nexcept MemoryError:\n  print('nope')\n", s);
  EXPECT_EQ(big.stdout_text, "nope\n") << describe(big);
  sessions_ = 1;
}

TEST_F(Hostile, CpuSpinIsStopped) {
  auto start = std::chrono::steady_clock::now();
  Reply r = python(c(), "while True: pass", "", Mode::fork, {{"cpu_ms", 1000}, {"wall_ms", 8000}});
  EXPECT_EQ(r.status, "error") << describe(r);
  EXPECT_EQ(r.error_kind, "cpu_limit") << describe(r);
  Reply w = python(c(), "while True: pass", "", Mode::fresh, {{"cpu_ms", 30000}, {"wall_ms", 800}});
  EXPECT_EQ(w.error_kind, "timeout") << describe(w);
  std::string s = unique_name("spin");
  Reply sess = python(c(), "while True: pass", s, Mode::session, {{"cpu_ms", 1000}});
  EXPECT_EQ(sess.error_kind, "cpu_limit") << describe(sess);
  Reply again = python(c(), "print('alive')", s);
  EXPECT_EQ(again.stdout_text, "alive\n") << describe(again);  // the session survived
  sessions_ = 1;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10);
}

TEST_F(Hostile, EndlessOutputIsCapped) {
  Reply r = python(c(), "while True: print('x' * 1000)", "", Mode::fork,
                   {{"wall_ms", 1000}, {"output_bytes", 4096}});
  EXPECT_EQ(r.error_kind, "timeout") << describe(r).substr(0, 300);
  EXPECT_LE(r.stdout_text.size(), 4096u);
  EXPECT_TRUE(r.stdout_truncated);
  Reply y = shell(c(), "yes", "", Mode::fresh, {{"wall_ms", 1000}, {"output_bytes", 1000}});
  EXPECT_LE(y.stdout_text.size(), 1000u);
  EXPECT_TRUE(y.stdout_truncated);
  Reply e = shell(c(), "head -c 100000 /dev/zero >&2; echo done", "", Mode::fork,
                  {{"output_bytes", 1000}});
  EXPECT_EQ(e.status, "ok") << describe(e);
  EXPECT_EQ(e.stdout_text, "done\n");
  EXPECT_EQ(e.stderr_text.size(), 1000u);
  EXPECT_TRUE(e.stderr_truncated);
}

TEST_F(Hostile, DiskFillHitsTheWorkspaceLimit) {
  Reply one = python(c(),
                     "try:\n  f = open('big', 'wb')\n  while True: f.write(b'x' * (1 << 20))\n"
                     "except OSError as e:\n  print(e.strerror)\n",
                     "", Mode::fresh, {{"file_mb", 8}});
  EXPECT_EQ(one.stdout_text, "File too large\n") << describe(one);
  Reply many =
      python(c(),
             "i = 0\ntry:\n  while True:\n    open('f%d' % i, 'wb').write(b'x' * (4 << 20))\n"
             "    i += 1\nexcept OSError as e:\n  print(e.strerror, i)\n",
             "", Mode::fresh, {{"disk_mb", 32}, {"memory_mb", 256}});
  EXPECT_EQ(many.stdout_text.rfind("No space left on device", 0), 0u) << describe(many);
}

TEST_F(Hostile, KillEverythingOnlyKillsTheSandbox) {
  std::string s = unique_name("killer");
  Reply warm = python(c(), "x = 1", s);
  ASSERT_EQ(warm.status, "ok");
  Reply r = shell(c(), "kill -9 -1; echo survived", s);
  // The shell killed its own sandbox's interpreter: a clear error, the session reset.
  EXPECT_EQ(r.status, "error") << describe(r);
  EXPECT_EQ(r.error_kind, "sandbox_died") << describe(r);
  Reply f = shell(c(), "kill -9 -1; echo survived", "", Mode::fresh);
  EXPECT_EQ(f.stdout_text, "survived\n") << describe(f);
  EXPECT_EQ(kill(getpid(), 0), 0);
  Reply again = python(c(), "print('back')", s);
  EXPECT_EQ(again.stdout_text, "back\n") << describe(again);
  sessions_ = 1;
}

TEST_F(Hostile, PtraceIsDenied) {
  Reply r = python(c(),
                   "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   "pid = os.fork()\nif pid == 0:\n  import time; time.sleep(5); os._exit(0)\n"
                   "rc = libc.ptrace(16, pid, 0, 0)\nprint(rc, ctypes.get_errno())\n"
                   "rc = libc.ptrace(16, " +
                       std::to_string(getpid()) +
                       ", 0, 0)\nprint(rc, ctypes.get_errno())\nos.kill(pid, 9)\n",
                   "", Mode::fresh);
  ASSERT_EQ(r.status, "ok") << describe(r);
  EXPECT_EQ(r.stdout_text, "-1 1\n-1 1\n") << describe(r);  // EPERM, from seccomp
}

TEST_F(Hostile, ProcShowsOnlyTheSandbox) {
  setenv("SHOAL_TEST_SECRET", "hunter2-do-not-leak", 1);
  Reply r =
      python(c(),
             "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
             "print(len(pids), max(int(p) for p in pids))\nleak = False\nfor p in pids:\n"
             "  for f in ('environ', 'cmdline'):\n    try:\n"
             "      leak |= b'hunter' + b'2-do' in open('/proc/%s/%s' % (p, f), 'rb').read()\n"
             "    except OSError:\n      pass\nprint('leak' if leak else 'clean')\n"
             "print(os.path.exists('/proc/" +
                 std::to_string(getpid()) + "'))\n",
             "", Mode::fresh);
  unsetenv("SHOAL_TEST_SECRET");
  ASSERT_EQ(r.status, "ok") << describe(r);
  int n = 0, max_pid = 0;
  ASSERT_EQ(std::sscanf(r.stdout_text.c_str(), "%d %d", &n, &max_pid), 2) << describe(r);
  EXPECT_LE(n, 3);  // init, python (and nothing of the host)
  EXPECT_LE(max_pid, 10);
  EXPECT_NE(r.stdout_text.find("clean\nFalse\n"), std::string::npos) << describe(r);
}

TEST_F(Hostile, SetuidGivesNothing) {
  Reply r = shell(c(),
                  "grep NoNewPrivs /proc/self/status; su -c id root 2>&1 | head -1; "
                  "mount -t tmpfs none /work 2>&1 | head -1; "
                  "python3 -c 'import os; os.setuid(0)' 2>&1 | tail -1; id -u",
                  "", Mode::fresh);
  ASSERT_EQ(r.status, "ok") << describe(r);
  EXPECT_NE(r.stdout_text.find("NoNewPrivs:\t1"), std::string::npos) << describe(r);
  EXPECT_NE(r.stdout_text.find("Errno"), std::string::npos) << describe(r);  // setuid(0) refused
  EXPECT_EQ(r.stdout_text.find("uid=0"), std::string::npos) << describe(r);
  EXPECT_EQ(r.stdout_text.substr(r.stdout_text.size() - 5), "1000\n") << describe(r);
  // The setuid bits are there on the host's binaries: the test means something.
  struct stat st;
  if (stat("/usr/bin/su", &st) == 0) {
    EXPECT_TRUE(st.st_mode & S_ISUID);
  }
}

TEST_F(Hostile, NoBackgroundProcessOutlivesACall) {
  std::string s = unique_name("bg");
  Reply r = shell(
      c(), "sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & setsid sleep 1000 & echo started", s);
  ASSERT_EQ(r.status, "ok") << describe(r);
  EXPECT_EQ(r.stdout_text, "started\n");
  sessions_ = 1;
  expect_contained(kWorkers + sessions_);
  Reply ps = python(
      c(), "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))", s);
  EXPECT_EQ(ps.stdout_text, "[1, 2]\n") << describe(ps);  // init and the interpreter
  // The same from a fork-server run and from python's subprocess in a fresh sandbox.
  python(c(), "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)");
  python(c(), "import subprocess\nsubprocess.Popen(['sleep', '1000'])", "", Mode::fresh);
  expect_contained(kWorkers + sessions_);
}

}  // namespace
}  // namespace shoal::sandbox::testing
