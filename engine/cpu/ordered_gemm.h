// A GEMM whose every output element is one chain of fused multiply-adds in k order:
//   acc = 0; for k: acc = fma(A(m,k), B(k,n), acc); C(m,n) = alpha * acc (+ beta * C(m,n)).
// So an element depends only on its own row of A and column of B: not on how many rows or columns
// the call has, where the row sits in it, how many threads run, or on trailing zero terms of k
// (adding fma(0, b, acc) leaves acc as it is). OpenBLAS gives none of these (its kernels choose
// their summation order by the matrix shape), which made generation depend on which requests
// happened to share a batch. Slower than OpenBLAS; used where that invariance matters
// (backend.h: BatchInvariance). Row-major operands with row strides, like Backend::matmul.
#pragma once

#include <cstdint>

namespace shoal::cpu {

void ordered_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc);

}  // namespace shoal::cpu
