// Error checks for host code calling the CUDA runtime, cuBLAS and the kernels' launchers (which
// return a cudaError_t as int): each failure becomes a shoal::Error naming the call and the
// runtime's error string. Internal to engine/cuda; not for device code.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "base/error.h"

#define SHOAL_CUDA_CHECK(call)                                                          \
  do {                                                                                  \
    const cudaError_t shoal_cuda_err_ = static_cast<cudaError_t>(call);                 \
    if (shoal_cuda_err_ != cudaSuccess) [[unlikely]]                                    \
      throw ::shoal::Error(                                                             \
          ::fmt::format("{} failed: {} ({})", #call, cudaGetErrorName(shoal_cuda_err_), \
                        cudaGetErrorString(shoal_cuda_err_)),                           \
          __FILE__, __LINE__, #call);                                                   \
  } while (0)

#define SHOAL_CUBLAS_CHECK(call)                                                            \
  do {                                                                                      \
    const cublasStatus_t shoal_cublas_st_ = (call);                                         \
    if (shoal_cublas_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                             \
      throw ::shoal::Error(                                                                 \
          ::fmt::format("{} failed: {} ({})", #call, cublasGetStatusName(shoal_cublas_st_), \
                        cublasGetStatusString(shoal_cublas_st_)),                           \
          __FILE__, __LINE__, #call);                                                       \
  } while (0)
