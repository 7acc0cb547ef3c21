// Builds the sandbox seccomp filter (seccomp_filter.h): allow by default, deny with EPERM what
// model-written code never needs and what widens the kernel's attack surface.
#include "sandbox/seccomp_filter.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>

#include "base/error.h"

namespace shoal::sandbox {

namespace {

std::string build_bpf() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  SHOAL_CHECK(ctx != nullptr, "seccomp_init failed");
  // Syscalls of other ABIs (x32, i386) are killed: libseccomp's default for foreign arches.
  auto deny = [&](const char* name, int err, unsigned count = 0,
                  const scmp_arg_cmp* arg = nullptr) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) return;  // not on this architecture
    int rc = count == 0 ? seccomp_rule_add(ctx, SCMP_ACT_ERRNO(err), nr, 0)
                        : seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(err), nr, count, arg);
    if (rc != 0) {
      seccomp_release(ctx);
      SHOAL_FAIL("seccomp rule for {} failed: {}", name, rc);
    }
  };
  // Debugging and other processes' memory.
  for (const char* s : {"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"})
    deny(s, EPERM);
  // Mounts, namespaces, the root: the sandbox's shape is fixed by bubblewrap.
  for (const char* s : {"mount", "umount", "umount2", "pivot_root", "chroot", "setns", "unshare",
                        "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
                        "mount_setattr", "name_to_handle_at", "open_by_handle_at"})
    deny(s, EPERM);
  // The kernel itself: modules, kexec, BPF, keyrings, perf, reboot, swap, clocks, accounting.
  for (const char* s : {"kexec_load",
                        "kexec_file_load",
                        "init_module",
                        "finit_module",
                        "delete_module",
                        "bpf",
                        "keyctl",
                        "add_key",
                        "request_key",
                        "perf_event_open",
                        "reboot",
                        "swapon",
                        "swapoff",
                        "acct",
                        "quotactl",
                        "syslog",
                        "settimeofday",
                        "clock_settime",
                        "clock_adjtime",
                        "adjtimex",
                        "lookup_dcookie",
                        "userfaultfd",
                        "vhangup",
                        "iopl",
                        "ioperm",
                        "personality",
                        "io_uring_setup",
                        "io_uring_enter",
                        "io_uring_register",
                        "fanotify_init",
                        "nfsservctl"})
    deny(s, EPERM);
  // clone() with namespace flags; clone3() hides its flags in memory, so it reports ENOSYS and
  // glibc falls back to clone().
  for (unsigned long flag : {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC,
                             CLONE_NEWUTS, CLONE_NEWCGROUP}) {
    scmp_arg_cmp cmp = SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag);
    deny("clone", EPERM, 1, &cmp);
  }
  deny("clone3", ENOSYS);
  // Sockets: AF_UNIX only (no network family at all, not even to the sandbox's own loopback).
  {
    scmp_arg_cmp cmp = SCMP_A0(SCMP_CMP_NE, AF_UNIX);
    deny("socket", EAFNOSUPPORT, 1, &cmp);
    deny("socketpair", EAFNOSUPPORT, 1, &cmp);
  }
  // Pushing input into a terminal (bubblewrap's --new-session already blocks TIOCSTI).
  {
    scmp_arg_cmp cmp = SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, TIOCSTI);
    deny("ioctl", EPERM, 1, &cmp);
  }
  int fd = memfd_create("shoal-seccomp-build", MFD_CLOEXEC);
  SHOAL_CHECK(fd >= 0, "memfd_create failed: errno {}", errno);
  int rc = seccomp_export_bpf(ctx, fd);
  seccomp_release(ctx);
  if (rc != 0) {
    close(fd);
    SHOAL_FAIL("seccomp_export_bpf failed: {}", rc);
  }
  off_t size = lseek(fd, 0, SEEK_END);
  std::string bpf(static_cast<size_t>(size), '\0');
  ssize_t n = pread(fd, bpf.data(), bpf.size(), 0);
  close(fd);
  SHOAL_CHECK(n == size && size > 0, "reading the exported seccomp program failed");
  return bpf;
}

}  // namespace

const std::string& seccomp_bpf() {
  static std::once_flag once;
  static std::string bpf;
  std::call_once(once, [] { bpf = build_bpf(); });
  return bpf;
}

int seccomp_memfd() {
  const std::string& bpf = seccomp_bpf();
  int fd = memfd_create("shoal-seccomp", MFD_CLOEXEC);
  SHOAL_CHECK(fd >= 0, "memfd_create failed: errno {}", errno);
  SHOAL_CHECK(write(fd, bpf.data(), bpf.size()) == static_cast<ssize_t>(bpf.size()),
              "writing the seccomp program to a memfd failed");
  lseek(fd, 0, SEEK_SET);
  return fd;
}

}  // namespace shoal::sandbox
