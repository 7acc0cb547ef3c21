// The seccomp filter every sandboxed command runs under, built once with libseccomp and exported as
// a BPF program. bubblewrap loads it (--seccomp FD) right before it execs the command, after its
// own namespace and loopback setup, which need some of the syscalls denied here. Not a policy
// language: the deny list is fixed, documented in docs/SANDBOX.md.
#pragma once

#include <string>

namespace shoal::sandbox {

// The filter's BPF program (struct sock_filter[] bytes). Throws Error if libseccomp fails.
const std::string& seccomp_bpf();
// A memfd holding seccomp_bpf(), positioned at 0, close-on-exec (the launcher dup2s it).
int seccomp_memfd();

}  // namespace shoal::sandbox
