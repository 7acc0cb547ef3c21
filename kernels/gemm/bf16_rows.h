// f32 rows to a contiguous bf16 copy, rounded to nearest even: the operands of the bf16 grouped
// GEMM (engine/cuda/cuda_backend.cpp grouped_matmul), converted once per call instead of once per
// group. Not a GEMM; the rounding is copy.cu's f32 -> bf16 (the CPU twin: Tensor::to(bf16)).
#pragma once

#include <cstdint>

namespace shoal::kernels {

struct Bf16RowsParams {
  const float* src = nullptr;  // rows x cols, row r at src + r * src_stride, unit column stride
  uint16_t* dst = nullptr;     // rows x cols contiguous bf16 bits
  int64_t rows = 0, cols = 0;
  int64_t src_stride = 0;  // >= cols
};
int f32_rows_to_bf16_cuda(const Bf16RowsParams& p, void* stream);

}  // namespace shoal::kernels
