// Strided element copies on the GPU: dst[i] = convert(src[i]) over any shape up to 8-D with free
// strides (in elements) on both sides, plus filling a strided view with zeros and scaling a
// row-strided 2-D view. The conversions round exactly as engine/dtype.cpp does (its scalar
// conversions are the reference); not a transpose-optimised copy (no shared-memory tiling yet).
#pragma once

#include <cstdint>

namespace shoal::kernels {

// Element types the copy kernels understand (the engine maps its DType onto these).
enum class ElemType : int32_t { f32, f64, bf16, f16, f8e4m3, i32, i64, u8 };

constexpr int kMaxCopyDims = 8;

struct StridedCopyParams {
  const void* src = nullptr;  // first element (offset applied)
  void* dst = nullptr;
  ElemType src_type = ElemType::f32, dst_type = ElemType::f32;
  int ndim = 0;  // 0 = a scalar
  int64_t shape[kMaxCopyDims] = {};
  int64_t src_strides[kMaxCopyDims] = {};  // elements
  int64_t dst_strides[kMaxCopyDims] = {};
};

// All launchers: device pointers, asynchronous on `stream` (a cudaStream_t as void*), return a
// cudaError_t as int (0 = success; cudaErrorInvalidValue for an unsupported request).
int strided_copy_cuda(const StridedCopyParams& p, void* stream);

// Zeroes the elements of a strided view (src fields ignored; dst_type gives the element size).
int strided_zero_cuda(const StridedCopyParams& p, void* stream);

// y[r, c] *= s for a rows x cols f32 view with row stride ld (elements); s == 0 writes zeros
// (NaN-free, as BLAS treats beta == 0).
int scale_rows_strided_cuda(float* y, int64_t rows, int64_t cols, int64_t ld, float s,
                            void* stream);

}  // namespace shoal::kernels
