// open_backend (engine/device.h): the --device / --precision choice of the shoal commands. The CPU
// always opens; bad names and precisions are refused naming what was given; a GPU name on a build
// or machine without one says which it lacks.
#include <gtest/gtest.h>

#include <string>

#include "base/error.h"
#include "engine/device.h"
#ifdef SHOAL_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace shoal {
namespace {

std::string error_of(const std::string& device, const std::string& precision = "bf16") {
  try {
    open_backend(device, precision);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

TEST(Device, TheCpuOpensAndBadChoicesAreNamed) {
  EXPECT_EQ(open_backend("cpu")->device(), Device::cpu);
  EXPECT_EQ(open_backend("cpu", "f32")->device(), Device::cpu);
  EXPECT_NE(error_of("tpu").find("unknown device 'tpu'"), std::string::npos) << error_of("tpu");
  EXPECT_NE(error_of("CUDA").find("unknown device"), std::string::npos);
  EXPECT_NE(error_of("cpu", "fp8").find("unknown precision 'fp8'"), std::string::npos);
  for (const char* bad : {"cuda:", "cuda:x", "cuda:-1", "cuda:1x"})
    EXPECT_NE(error_of(bad).find("GPU index must be a number"), std::string::npos)
        << bad << ": " << error_of(bad);
}

TEST(Device, AGpuIsOpenedOrItsAbsenceExplained) {
#ifdef SHOAL_HAVE_CUDA
  const std::string why = cuda_unavailable_reason();
  if (why.empty()) {
    EXPECT_EQ(open_backend("cuda")->device(), Device::cuda);
    EXPECT_EQ(open_backend("cuda:0", "f32")->device(), Device::cuda);
  } else {
    EXPECT_NE(error_of("cuda").find("no usable CUDA device"), std::string::npos)
        << error_of("cuda");
  }
#else
  EXPECT_NE(error_of("cuda").find("built without the CUDA backend"), std::string::npos)
      << error_of("cuda");
#endif
}

}  // namespace
}  // namespace shoal
