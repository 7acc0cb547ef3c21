// The ordered GEMM (ordered_gemm.h). Column blocks of 16 of op(B) are packed k-major (zero
// columns past n), then tiles of up to 6 rows run over them: the tile's shape changes how many
// elements are computed at once, never the operations that compute one element. The AVX2 kernel
// and the portable one are chosen once per process, so one machine always gives the same bits.
#include "engine/cpu/ordered_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace shoal::cpu {
namespace {

constexpr int64_t kMr = 6;   // rows per tile
constexpr int64_t kNr = 16;  // packed columns per block

struct Operands {
  bool ta, tb;
  int64_t m, n, k;
  float alpha;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float beta;
  float* c;
  int64_t ldc;
  float at(int64_t i, int64_t p) const { return ta ? a[p * lda + i] : a[i * lda + p]; }
};

// panel[p * kNr + j] = B(p, n0 + j), 0 past n.
void pack(const Operands& o, int64_t n0, float* panel) {
  const int64_t w = std::min(kNr, o.n - n0);
  for (int64_t p = 0; p < o.k; ++p) {
    float* dst = panel + p * kNr;
    for (int64_t j = 0; j < w; ++j)
      dst[j] = o.tb ? o.b[(n0 + j) * o.ldb + p] : o.b[p * o.ldb + n0 + j];
    for (int64_t j = w; j < kNr; ++j) dst[j] = 0.0f;
  }
}

// Every element of every tile leaves through here, so the epilogue is the same code for all.
void store(const Operands& o, int64_t i0, int64_t rows, int64_t n0, const float* acc) {
  const int64_t w = std::min(kNr, o.n - n0);
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = o.c + (i0 + r) * o.ldc + n0;
    const float* src = acc + r * kNr;
    if (o.beta == 0.0f) {
      for (int64_t j = 0; j < w; ++j) dst[j] = o.alpha * src[j];
    } else {
      for (int64_t j = 0; j < w; ++j) {
        float scaled = o.alpha * src[j];
        float kept = o.beta * dst[j];
        dst[j] = scaled + kept;
      }
    }
  }
}

// Row r of the tile reads A(i0 + r, p) at a[r] + p * step.
template <int64_t R>
struct RowPtrs {
  const float* a[R];
  int64_t step;
  RowPtrs(const Operands& o, int64_t i0) : step(o.ta ? o.lda : 1) {
    for (int64_t r = 0; r < R; ++r) a[r] = o.ta ? o.a + i0 + r : o.a + (i0 + r) * o.lda;
  }
};

template <int64_t R>
__attribute__((target("avx2,fma"))) void tile_avx2(const Operands& o, int64_t i0,
                                                   const float* panel, float* acc_out) {
  const RowPtrs<R> rp(o, i0);
  __m256 acc0[R], acc1[R];
#pragma GCC unroll 6
  for (int64_t r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  for (int64_t p = 0; p < o.k; ++p) {
    const __m256 b0 = _mm256_loadu_ps(panel + p * kNr), b1 = _mm256_loadu_ps(panel + p * kNr + 8);
    const int64_t off = p * rp.step;
#pragma GCC unroll 6
    for (int64_t r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(rp.a[r] + off);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
  }
#pragma GCC unroll 6
  for (int64_t r = 0; r < R; ++r) {
    _mm256_storeu_ps(acc_out + r * kNr, acc0[r]);
    _mm256_storeu_ps(acc_out + r * kNr + 8, acc1[r]);
  }
}

template <int64_t R>
void tile_portable(const Operands& o, int64_t i0, const float* panel, float* acc_out) {
  const RowPtrs<R> rp(o, i0);
  float acc[R][kNr] = {};
  for (int64_t p = 0; p < o.k; ++p)
    for (int64_t r = 0; r < R; ++r) {
      const float av = rp.a[r][p * rp.step];
      for (int64_t j = 0; j < kNr; ++j) acc[r][j] = std::fma(av, panel[p * kNr + j], acc[r][j]);
    }
  for (int64_t r = 0; r < R; ++r) std::copy_n(acc[r], kNr, acc_out + r * kNr);
}

using TileFn = void (*)(const Operands&, int64_t, const float*, float*);

template <bool Avx2>
TileFn tile_fn(int64_t rows) {
  switch (rows) {
    case 1:
      return Avx2 ? tile_avx2<1> : tile_portable<1>;
    case 2:
      return Avx2 ? tile_avx2<2> : tile_portable<2>;
    case 3:
      return Avx2 ? tile_avx2<3> : tile_portable<3>;
    case 4:
      return Avx2 ? tile_avx2<4> : tile_portable<4>;
    case 5:
      return Avx2 ? tile_avx2<5> : tile_portable<5>;
    default:
      return Avx2 ? tile_avx2<6> : tile_portable<6>;
  }
}

bool use_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

void block(const Operands& o, int64_t n0) {
  thread_local std::vector<float> panel;
  panel.resize(size_t(o.k * kNr));
  pack(o, n0, panel.data());
  float acc[kMr * kNr];
  const bool avx2 = use_avx2();
  for (int64_t i0 = 0; i0 < o.m; i0 += kMr) {
    const int64_t rows = std::min(kMr, o.m - i0);
    TileFn f = avx2 ? tile_fn<true>(rows) : tile_fn<false>(rows);
    f(o, i0, panel.data(), acc);
    store(o, i0, rows, n0, acc);
  }
}

}  // namespace

void ordered_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  const Operands o{trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc};
  const int64_t blocks = (n + kNr - 1) / kNr;
  // Threads split the column blocks; an element is computed by one thread either way.
  const bool parallel = blocks > 1 && m * n * k >= (int64_t(1) << 18);
  if (!parallel) {
    for (int64_t bi = 0; bi < blocks; ++bi) block(o, bi * kNr);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t bi = 0; bi < blocks; ++bi) block(o, bi * kNr);
}

}  // namespace shoal::cpu
