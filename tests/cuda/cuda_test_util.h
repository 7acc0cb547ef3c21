// Small helpers for the GPU tests: why a device is unavailable (so tests skip with a reason), an
// owning device buffer, and a CUDA-status assertion. Test-only; not a runtime wrapper for the
// engine.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

namespace shoal::test {

// Empty when a CUDA device is usable, else the reason it is not (for GTEST_SKIP).
inline std::string cuda_device_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so it does not leak into later launches' status
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  }
  if (count == 0) return "cudaGetDeviceCount returned 0 devices";
  return {};
}

#define SHOAL_ASSERT_CUDA(expr)                                            \
  do {                                                                     \
    const cudaError_t shoal_cuda_status_ = static_cast<cudaError_t>(expr); \
    ASSERT_EQ(shoal_cuda_status_, cudaSuccess)                             \
        << #expr << ": " << cudaGetErrorName(shoal_cuda_status_) << " ("   \
        << cudaGetErrorString(shoal_cuda_status_) << ")";                  \
  } while (0)

// Owning device allocation of `count` elements of T; move-only.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count > 0 && cudaMalloc(&ptr_, count * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) { o.ptr_ = nullptr; }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  bool ok() const { return count_ == 0 || ptr_ != nullptr; }

  cudaError_t upload(const std::vector<T>& host) {
    return cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  cudaError_t download(std::vector<T>& host) const {
    host.resize(count_);
    return cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost);
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

}  // namespace shoal::test
