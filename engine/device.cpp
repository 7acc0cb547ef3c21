// open_backend (device.h).
#include "engine/device.h"

#include <cstdlib>

#include "base/error.h"
#ifdef SHOAL_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace shoal {

std::unique_ptr<Backend> open_backend(const std::string& device, const std::string& precision) {
  SHOAL_CHECK(precision == "bf16" || precision == "f32", "unknown precision '{}' (bf16 or f32)",
              precision);
  if (device == "cpu") return make_cpu_backend();
  SHOAL_CHECK(device == "cuda" || device.starts_with("cuda:"),
              "unknown device '{}' (cpu, cuda or cuda:N)", device);
  int index = 0;
  if (device != "cuda") {  // cuda:N
    const std::string n = device.substr(5);
    char* end = nullptr;
    const long v = std::strtol(n.c_str(), &end, 10);
    SHOAL_CHECK(!n.empty() && end && *end == '\0' && v >= 0 && v < 1024,
                "device '{}': the GPU index must be a number (cuda:0, cuda:1, ...)", device);
    index = int(v);
  }
#ifdef SHOAL_HAVE_CUDA
  const std::string why = cuda_unavailable_reason();
  SHOAL_CHECK(why.empty(), "device '{}': no usable CUDA device ({})", device, why);
  CudaBackendOptions o;
  if (precision == "bf16") {
    o.gemm = CudaGemm::bf16;
    o.attention = CudaAttention::bf16;
    o.grouped = CudaGrouped::batched;
  }
  return make_cuda_backend(index, o);
#else
  (void)index;
  SHOAL_FAIL(
      "device '{}': this shoal was built without the CUDA backend (CUDA was not found when it "
      "was configured; see DEVELOPERS.md)",
      device);
#endif
}

}  // namespace shoal
