// Global log level selection for the shoal binary and tests.
#include "base/log.h"

namespace shoal::log {
void set_level(const std::string& name) {
  auto level = spdlog::level::from_str(name);
  spdlog::set_level(level == spdlog::level::off && name != "off" ? spdlog::level::info : level);
}
}  // namespace shoal::log
