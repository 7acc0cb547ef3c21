// The Python driver of persistent and fork-server sandboxes: a small program that runs inside the
// sandbox, reads JSON requests on fd 3, answers on fd 4, and lets user output go straight to fds 1
// and 2. Not the server side of that exchange (executor.cpp).
#pragma once

namespace shoal::sandbox {

const char* driver_source();

}  // namespace shoal::sandbox
