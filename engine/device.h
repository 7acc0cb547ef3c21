// Choosing the backend a command runs on: `--device cpu` (the default) or `--device cuda[:N]`, and
// on a GPU the precision of its GEMMs and attention (`--precision bf16`, the default: bf16
// operands with f32 accumulation on the tensor cores, weights kept as f32 with bf16 copies; or
// `f32`, the CPU's numbers to f32 rounding, several times slower).
#pragma once

#include <memory>
#include <string>

#include "engine/backend.h"

namespace shoal {

// The backend for a device name ("cpu", "cuda", "cuda:N") and precision ("bf16", "f32"). Throws
// naming the choice when the name or precision is unknown, when this build has no CUDA backend,
// or when the device is not usable (with the driver's reason).
std::unique_ptr<Backend> open_backend(const std::string& device,
                                      const std::string& precision = "bf16");

// The help text for a --device option.
inline constexpr const char* kDeviceHelp =
    "where the model runs: cpu, or cuda / cuda:N (a GPU; see --precision)";
inline constexpr const char* kPrecisionHelp =
    "GEMMs and attention on a GPU: bf16 (tensor cores, f32 accumulation) or f32";

}  // namespace shoal
