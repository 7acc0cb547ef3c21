// Logging: thin names over spdlog so modules do not each configure it. Not a metrics sink (the run
// store is).
#pragma once

#include <spdlog/spdlog.h>

namespace shoal::log {
using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::warn;
// Sets the global level from a name ("debug", "info", "warn", "error"); unknown names keep "info".
void set_level(const std::string& name);
}  // namespace shoal::log
