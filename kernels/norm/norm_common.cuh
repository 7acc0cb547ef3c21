// Pieces shared by the norm backward kernels: the deterministic column reduction behind dw/db
// (chunk partial sums, then one ordered pass over the chunks). Device code only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace shoal::kernels {
namespace {  // internal linkage: each .cu that includes this gets its own kernels

constexpr int64_t kNormRowsPerChunk = 64;

// partial[c, col] = sum over rows r of chunk c of term(r, col). Grid: (ceil(dim/256), chunks).
template <typename Term>
__global__ void column_chunk_sums(Term term, int64_t rows, int64_t dim, float* partial) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= dim) return;
  const int64_t r0 = blockIdx.y * kNormRowsPerChunk;
  const int64_t r1 = r0 + kNormRowsPerChunk < rows ? r0 + kNormRowsPerChunk : rows;
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; ++r) acc += term(r, col);
  partial[blockIdx.y * dim + col] = acc;
}

// out[col] += sum over chunks of partial[c, col].
__global__ void column_chunks_accumulate(const float* partial, int64_t chunks, int64_t dim,
                                         float* out) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= dim) return;
  float acc = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) acc += partial[c * dim + col];
  out[col] += acc;
}

}  // namespace
}  // namespace shoal::kernels
