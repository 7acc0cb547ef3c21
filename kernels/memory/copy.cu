// Strided copy / conversion, strided zero-fill and strided 2-D scaling (declared in copy.h). One
// thread per element, grid-stride; the index is decomposed into per-dimension coordinates.
// Conversions go through float_formats.cuh (bit-exact twins of engine/dtype.cpp).
#include <cuda_runtime.h>

#include "kernels/common/float_formats.cuh"
#include "kernels/common/reduce.cuh"
#include "kernels/memory/copy.h"

namespace shoal::kernels {
namespace {

struct Dims {
  int ndim;
  int64_t shape[kMaxCopyDims], src[kMaxCopyDims], dst[kMaxCopyDims];
};

// Loads element i as double (exact for every supported type), as dtype.cpp's load().
__device__ double load(const void* p, ElemType t, int64_t i) {
  switch (t) {
    case ElemType::f32:
      return static_cast<const float*>(p)[i];
    case ElemType::f64:
      return static_cast<const double*>(p)[i];
    case ElemType::bf16:
      return bf16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
    case ElemType::f16:
      return f16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
    case ElemType::f8e4m3:
      return f8e4m3_bits_to_f32(static_cast<const uint8_t*>(p)[i]);
    case ElemType::i32:
      return static_cast<const int32_t*>(p)[i];
    case ElemType::i64:
      return double(static_cast<const int64_t*>(p)[i]);
    case ElemType::u8:
      return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}

__device__ void store(void* p, ElemType t, int64_t i, double v) {
  switch (t) {
    case ElemType::f32:
      static_cast<float*>(p)[i] = float(v);
      break;
    case ElemType::f64:
      static_cast<double*>(p)[i] = v;
      break;
    case ElemType::bf16:
      static_cast<uint16_t*>(p)[i] = f32_to_bf16_bits(float(v));
      break;
    case ElemType::f16:
      static_cast<uint16_t*>(p)[i] = f32_to_f16_bits(float(v));
      break;
    case ElemType::f8e4m3:
      static_cast<uint8_t*>(p)[i] = f32_to_f8e4m3_bits(float(v));
      break;
    case ElemType::i32:
      static_cast<int32_t*>(p)[i] = int32_t(v);
      break;
    case ElemType::i64:
      static_cast<int64_t*>(p)[i] = int64_t(v);
      break;
    case ElemType::u8:
      static_cast<uint8_t*>(p)[i] = uint8_t(v);
      break;
  }
}

__device__ __forceinline__ void offsets(const Dims& d, int64_t linear, int64_t& so, int64_t& dof) {
  so = 0;
  dof = 0;
  for (int k = d.ndim - 1; k >= 0; --k) {
    int64_t c = linear % d.shape[k];
    linear /= d.shape[k];
    so += c * d.src[k];
    dof += c * d.dst[k];
  }
}

// Same element type: a plain move of T (i64 copies stay exact, no detour through double).
template <typename T>
__global__ void copy_same_kernel(const T* __restrict__ src, T* __restrict__ dst, Dims d,
                                 int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t so, dof;
    offsets(d, i, so, dof);
    dst[dof] = src[so];
  }
}

__global__ void copy_convert_kernel(const void* src, ElemType st, void* dst, ElemType dt, Dims d,
                                    int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t so, dof;
    offsets(d, i, so, dof);
    store(dst, dt, dof, load(src, st, so));
  }
}

template <typename T>
__global__ void zero_kernel(T* dst, Dims d, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t so, dof;
    offsets(d, i, so, dof);
    dst[dof] = T(0);
  }
}

__global__ void scale_rows_strided_kernel(float* y, int64_t rows, int64_t cols, int64_t ld,
                                          float s) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float* e = y + (i / cols) * ld + i % cols;
    *e = s == 0.0f ? 0.0f : *e * s;
  }
}

int elem_size(ElemType t) {
  switch (t) {
    case ElemType::f64:
    case ElemType::i64:
      return 8;
    case ElemType::f32:
    case ElemType::i32:
      return 4;
    case ElemType::bf16:
    case ElemType::f16:
      return 2;
    case ElemType::f8e4m3:
    case ElemType::u8:
      return 1;
  }
  return 0;
}

bool make_dims(const StridedCopyParams& p, Dims& d, int64_t& n) {
  if (p.ndim < 0 || p.ndim > kMaxCopyDims) return false;
  d.ndim = p.ndim;
  n = 1;
  for (int k = 0; k < p.ndim; ++k) {
    if (p.shape[k] < 0) return false;
    d.shape[k] = p.shape[k];
    d.src[k] = p.src_strides[k];
    d.dst[k] = p.dst_strides[k];
    n *= p.shape[k];
  }
  return true;
}

constexpr int kThreads = 256;

}  // namespace

int strided_copy_cuda(const StridedCopyParams& p, void* stream) {
  Dims d;
  int64_t n;
  if (!make_dims(p, d, n)) return int(cudaErrorInvalidValue);
  if (n == 0) return int(cudaSuccess);
  if (p.src == nullptr || p.dst == nullptr) return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = grid_for(n, kThreads);
  if (p.src_type == p.dst_type) {
    switch (elem_size(p.src_type)) {
      case 8:
        copy_same_kernel<<<grid, kThreads, 0, s>>>(static_cast<const uint64_t*>(p.src),
                                                   static_cast<uint64_t*>(p.dst), d, n);
        break;
      case 4:
        copy_same_kernel<<<grid, kThreads, 0, s>>>(static_cast<const uint32_t*>(p.src),
                                                   static_cast<uint32_t*>(p.dst), d, n);
        break;
      case 2:
        copy_same_kernel<<<grid, kThreads, 0, s>>>(static_cast<const uint16_t*>(p.src),
                                                   static_cast<uint16_t*>(p.dst), d, n);
        break;
      default:
        copy_same_kernel<<<grid, kThreads, 0, s>>>(static_cast<const uint8_t*>(p.src),
                                                   static_cast<uint8_t*>(p.dst), d, n);
    }
  } else {
    copy_convert_kernel<<<grid, kThreads, 0, s>>>(p.src, p.src_type, p.dst, p.dst_type, d, n);
  }
  return int(cudaGetLastError());
}

int strided_zero_cuda(const StridedCopyParams& p, void* stream) {
  Dims d;
  int64_t n;
  if (!make_dims(p, d, n)) return int(cudaErrorInvalidValue);
  if (n == 0) return int(cudaSuccess);
  if (p.dst == nullptr) return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = grid_for(n, kThreads);
  switch (elem_size(p.dst_type)) {
    case 8:
      zero_kernel<<<grid, kThreads, 0, s>>>(static_cast<uint64_t*>(p.dst), d, n);
      break;
    case 4:
      zero_kernel<<<grid, kThreads, 0, s>>>(static_cast<uint32_t*>(p.dst), d, n);
      break;
    case 2:
      zero_kernel<<<grid, kThreads, 0, s>>>(static_cast<uint16_t*>(p.dst), d, n);
      break;
    default:
      zero_kernel<<<grid, kThreads, 0, s>>>(static_cast<uint8_t*>(p.dst), d, n);
  }
  return int(cudaGetLastError());
}

int scale_rows_strided_cuda(float* y, int64_t rows, int64_t cols, int64_t ld, float s,
                            void* stream) {
  if (rows == 0 || cols == 0) return int(cudaSuccess);
  if (y == nullptr || rows < 0 || cols < 0 || ld < cols) return int(cudaErrorInvalidValue);
  scale_rows_strided_kernel<<<grid_for(rows * cols, kThreads), kThreads, 0,
                              static_cast<cudaStream_t>(stream)>>>(y, rows, cols, ld, s);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
