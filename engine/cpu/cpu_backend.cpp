// The CPU backend: GEMMs through OpenBLAS (cblas_sgemm, which threads itself), everything else as
// plain loops over rows that the compiler vectorizes, split across cores with OpenMP. Input checks
// run before any parallel region (an exception must not escape an OpenMP region).
#include <cblas.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/backend.h"
#include "engine/backend_checks.h"
#include "engine/cpu/ordered_gemm.h"

namespace shoal {
namespace {

// The interface's contracts (backend_checks.h), for host tensors.
void check_f32(const Tensor& t, const char* what) {
  backend_checks::f32(t, Device::cpu, what);
}
void check_contig_f32(const Tensor& t, const char* what) {
  backend_checks::contig_f32(t, Device::cpu, what);
}
void check_rows(const Tensor& t, const char* what) {
  backend_checks::rows(t, Device::cpu, what);
}
using backend_checks::packed_square_size;
using backend_checks::row_stride;

inline float sigmoidf(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}

// The reference AdamW update; the gradient is multiplied by `factor` first (the clip factor, a
// f32 multiply as ParamSet::clip_grad_norm's scale; 1 is exact).
void adamw_one(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
               float weight_decay, float factor) {
  for (const Tensor* t : {(const Tensor*)&param, &grad, (const Tensor*)&m, (const Tensor*)&v})
    check_contig_f32(*t, "adamw");
  SHOAL_CHECK(
      param.shape() == grad.shape() && m.shape() == grad.shape() && v.shape() == grad.shape(),
      "adamw: shapes differ ({})", param.describe());
  SHOAL_CHECK(p.step >= 1, "adamw: step must be >= 1");
  float* pp = param.f32();
  const float* pg = grad.f32();
  float *pm = m.f32(), *pv = v.f32();
  float bc1 = float(1.0 - std::pow(double(p.beta1), double(p.step)));
  float bc2 = float(1.0 - std::pow(double(p.beta2), double(p.step)));
  float decay = 1.0f - p.lr * weight_decay;
  float step = p.lr / bc1;
  float inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
  int64_t n = param.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float g = pg[i] * factor;
    pm[i] = p.beta1 * pm[i] + (1.0f - p.beta1) * g;
    pv[i] = p.beta2 * pv[i] + (1.0f - p.beta2) * g * g;
    pp[i] = pp[i] * decay - step * pm[i] / (std::sqrt(pv[i]) * inv_sqrt_bc2 + p.eps);
  }
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  Allocator& allocator() override { return cpu_allocator(); }

  void zero(Tensor& t) override {
    if (t.is_contiguous())
      std::memset(t.raw(), 0, t.nbytes());
    else
      t.fill(0.0);
  }
  void copy(const Tensor& src, Tensor& dst) override { dst.copy_from(src); }
  Tensor to_host(const Tensor& t) override { return t.clone(); }
  Tensor from_host(const Tensor& t) override { return t.clone(); }

  void matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
              float beta) override {
    check_rows(a, "matmul a");
    check_rows(b, "matmul b");
    check_rows(c, "matmul c");
    int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
    int64_t kb = tb ? b.size(1) : b.size(0), n = tb ? b.size(0) : b.size(1);
    SHOAL_CHECK(k == kb && c.size(0) == m && c.size(1) == n, "matmul shapes: {}{} x {}{} -> {}",
                a.describe(), ta ? "^T" : "", b.describe(), tb ? "^T" : "", c.describe());
    if (m == 0 || n == 0) return;
    if (k == 0) {  // c = beta * c
      if (beta == 0.0f)
        zero(c);
      else if (beta != 1.0f)
        for (int64_t i = 0; i < m; ++i) cblas_sscal(int(n), beta, c.f32() + i * row_stride(c), 1);
      return;
    }
    if (BatchInvariance::active()) {
      cpu::ordered_gemm(ta, tb, m, n, k, alpha, a.f32(), row_stride(a), b.f32(), row_stride(b),
                        beta, c.f32(), row_stride(c));
      return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                int(m), int(n), int(k), alpha, a.f32(), int(row_stride(a)), b.f32(),
                int(row_stride(b)), beta, c.f32(), int(row_stride(c)));
  }

  // The reference: one matmul per group.
  void grouped_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
                      const std::vector<int64_t>& group_rows, float alpha, float beta) override {
    for (auto& g : backend_checks::grouped_matmul(a, b, c, group_rows, Device::cpu))
      matmul(g.a, ta, g.b, tb, g.c, alpha, beta);
  }

  // The reference: one matmul per batch index.
  void batched_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
                      float beta) override {
    const auto g = backend_checks::batched_matmul(a, ta, b, tb, c, Device::cpu);
    for (int64_t i = 0; i < g.batch; ++i) {
      Tensor ci = c.select(0, i);
      matmul(a.select(0, i), ta, b.select(0, i), tb, ci, alpha, beta);
    }
  }

  void add(Tensor& y, const Tensor& x, float alpha) override {
    check_f32(y, "add y");
    check_f32(x, "add x");
    SHOAL_CHECK(y.shape() == x.shape(), "add: {} vs {}", y.describe(), x.describe());
    if (y.is_contiguous() && x.is_contiguous()) {
      float* py = y.f32();
      const float* px = x.f32();
      int64_t n = y.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) py[i] += alpha * px[i];
      return;
    }
    // Strided views up to 3-D with unit last stride (e.g. one head's slice of [N, H, d]).
    SHOAL_CHECK(y.ndim() >= 1 && y.ndim() <= 3 && y.stride(-1) == 1 && x.stride(-1) == 1,
                "add: strided operands must be 1-3-D with unit last stride: {} += {}", y.describe(),
                x.describe());
    int64_t d0 = y.ndim() == 3 ? y.size(0) : 1, d1 = y.ndim() >= 2 ? y.size(-2) : 1,
            d2 = y.size(-1);
    int64_t ys0 = y.ndim() == 3 ? y.stride(0) : 0, xs0 = y.ndim() == 3 ? x.stride(0) : 0;
    int64_t ys1 = y.ndim() >= 2 ? y.stride(-2) : 0, xs1 = y.ndim() >= 2 ? x.stride(-2) : 0;
    float* py = y.f32();
    const float* px = x.f32();
#pragma omp parallel for schedule(static) if (d0 * d1 * d2 > 65536)
    for (int64_t i = 0; i < d0; ++i)
      for (int64_t j = 0; j < d1; ++j) {
        float* yr = py + i * ys0 + j * ys1;
        const float* xr = px + i * xs0 + j * xs1;
        for (int64_t k = 0; k < d2; ++k) yr[k] += alpha * xr[k];
      }
  }

  void scale(Tensor& y, float s) override {
    check_contig_f32(y, "scale");
    float* p = y.f32();
    int64_t n = y.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) p[i] *= s;
  }

  double sum_squares(const Tensor& x) override {
    check_contig_f32(x, "sum_squares");
    const float* p = x.f32();
    int64_t n = x.numel();
    // Fixed blocks summed in order, so that the result (the gradient norm, hence clipping and
    // every later step) does not depend on the number of threads.
    constexpr int64_t block = 65536;
    int64_t nb = (n + block - 1) / block;
    std::vector<double> part(size_t(std::max<int64_t>(nb, 1)), 0.0);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; ++b) {
      double a = 0;
      for (int64_t i = b * block, e = std::min(n, i + block); i < e; ++i) a += double(p[i]) * p[i];
      part[size_t(b)] = a;
    }
    double acc = 0;
    for (double a : part) acc += a;
    return acc;
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                       Tensor& rstd) override {
    backend_checks::rmsnorm(x, w, y, rstd, Device::cpu);
    int64_t n = x.size(0), d = x.size(1);
    const float* px = x.f32();
    const float* pw = w.f32();
    float* py = y.f32();
    float* pr = rstd.f32();
    int64_t sx = row_stride(x), sy = row_stride(y);
#pragma omp parallel for schedule(static) if (n * d > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = px + r * sx;
      float* yr = py + r * sy;
      double ss = 0;
      for (int64_t i = 0; i < d; ++i) ss += double(xr[i]) * xr[i];
      float inv = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
      pr[r] = inv;
      for (int64_t i = 0; i < d; ++i) yr[i] = pw[i] * (xr[i] * inv);
    }
  }

  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override {
    check_rows(dy, "rmsnorm dy");
    check_rows(x, "rmsnorm x");
    check_rows(dx, "rmsnorm dx");
    check_contig_f32(w, "rmsnorm w");
    check_contig_f32(dw, "rmsnorm dw");
    check_contig_f32(rstd, "rmsnorm rstd");
    int64_t n = x.size(0), d = x.size(1);
    SHOAL_CHECK(dy.shape() == x.shape() && dx.shape() == x.shape() && dw.numel() == d &&
                    w.numel() == d && rstd.numel() == n,
                "rmsnorm backward shapes");
    const float *pdy = dy.f32(), *px = x.f32(), *pw = w.f32(), *pr = rstd.f32();
    float *pdx = dx.f32(), *pdw = dw.f32();
    int64_t sdy = row_stride(dy), sx = row_stride(x), sdx = row_stride(dx);
    // dw is summed over fixed chunks of rows, then the chunks in order: the same result for
    // any number of threads.
    constexpr int64_t chunk = 128;
    int64_t nc = (n + chunk - 1) / chunk;
    std::vector<float> dw_part(size_t(nc) * size_t(d), 0.0f);
#pragma omp parallel for schedule(static) if (n * d > 16384)
    for (int64_t c = 0; c < nc; ++c) {
      float* my_dw = dw_part.data() + size_t(c) * size_t(d);
      for (int64_t r = c * chunk, r_end = std::min(n, r + chunk); r < r_end; ++r) {
        const float* dyr = pdy + r * sdy;
        const float* xr = px + r * sx;
        float* dxr = pdx + r * sdx;
        float inv = pr[r];
        double dot = 0;  // sum(dy * w * xhat)
        for (int64_t i = 0; i < d; ++i) {
          float xh = xr[i] * inv;
          dot += double(dyr[i]) * pw[i] * xh;
          my_dw[i] += dyr[i] * xh;
        }
        float mean = float(dot / double(d));
        for (int64_t i = 0; i < d; ++i) dxr[i] = inv * (dyr[i] * pw[i] - xr[i] * inv * mean);
      }
    }
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t i = 0; i < d; ++i) pdw[i] += dw_part[size_t(c) * size_t(d) + size_t(i)];
  }

  void rope(Tensor& x, const Tensor& positions, const Tensor& cos_sin, bool interleaved,
            bool inverse) override {
    check_f32(x, "rope x");
    check_contig_f32(cos_sin, "rope table");
    SHOAL_CHECK(x.ndim() == 3 && x.stride(2) == 1,
                "rope: x must be [N, H, d] with unit last "
                "stride, got {}",
                x.describe());
    SHOAL_CHECK(positions.dtype() == DType::i32 && positions.numel() == x.size(0),
                "rope: positions must be i32[{}], got {}", x.size(0), positions.describe());
    int64_t n = x.size(0), h = x.size(1), d = x.size(2), half = d / 2;
    SHOAL_CHECK(
        d % 2 == 0 && cos_sin.ndim() == 3 && cos_sin.size(1) == half && cos_sin.size(2) == 2,
        "rope: table {} does not match head dim {}", cos_sin.describe(), d);
    const int32_t* pos = positions.i32();
    int64_t max_pos = cos_sin.size(0);
    for (int64_t i = 0; i < n; ++i)
      SHOAL_CHECK(pos[i] >= 0 && pos[i] < max_pos, "rope: position {} outside the table of {}",
                  pos[i], max_pos);
    float* px = x.f32();
    const float* tab = cos_sin.f32();
    int64_t sn = x.stride(0), sh = x.stride(1);
    float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (n * h * d > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* cs = tab + int64_t(pos[r]) * half * 2;
      for (int64_t hh = 0; hh < h; ++hh) {
        float* v = px + r * sn + hh * sh;
        for (int64_t i = 0; i < half; ++i) {
          float c = cs[2 * i], s = sign * cs[2 * i + 1];
          int64_t i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + half;
          float a = v[i0], b = v[i1];
          v[i0] = a * c - b * s;
          v[i1] = b * c + a * s;
        }
      }
    }
  }

  void check_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::vector<int64_t>& cu, const Tensor& out, const Tensor& lse) {
    backend_checks::attention(q, k, v, cu, out, lse, Device::cpu);
  }

  // Scores S = scale * Q_h K_h^T for one sequence and head, causal, into p (L x L).
  void scores(const float* q, int64_t sq, const float* k, int64_t sk, int64_t len, int64_t dk,
              float scale, float* p) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(len), int(len), int(dk), scale, q,
                int(sq), k, int(sk), 0.0f, p, int(len));
  }

  // Validates a DSA selection: i32 [N, K], entries -1 or a position inside the token's sequence,
  // and every token keeps at least one key at or before itself.
  void check_sparse(const Tensor* idx, const std::vector<int64_t>& cu, int64_t n) {
    if (!idx) return;
    backend_checks::sparse_layout(*idx, n);
    int64_t kk = idx->size(1);
    const int32_t* pi = idx->i32();
    for (size_t s = 0; s + 1 < cu.size(); ++s)
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
        int64_t pos = t - cu[s];
        bool any = false;
        for (int64_t j = 0; j < kk; ++j) {
          int32_t v = pi[t * kk + j];
          SHOAL_CHECK(v >= -1 && v < cu[s + 1] - cu[s],
                      "sparse attention: index {} for token {} is outside its sequence", v, t);
          any = any || (v >= 0 && v <= pos);
        }
        SHOAL_CHECK(any, "sparse attention: token {} selects no key at or before itself", t);
      }
  }

  // allowed[i * len + j] = 1 when query i of the sequence at offset o selected key j <= i; empty
  // when attention is dense.
  static void allowed_keys(const Tensor* idx, int64_t o, int64_t len,
                           std::vector<uint8_t>& allowed) {
    allowed.clear();
    if (!idx) return;
    allowed.assign(size_t(len * len), 0);
    int64_t kk = idx->size(1);
    const int32_t* pi = idx->i32();
    for (int64_t i = 0; i < len; ++i)
      for (int64_t j = 0; j < kk; ++j) {
        int32_t v = pi[(o + i) * kk + j];
        if (v >= 0 && v <= i) allowed[size_t(i * len + v)] = 1;
      }
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const std::vector<int64_t>& cu, float scale, Tensor& out, Tensor& lse,
                         const Tensor* sparse_idx) override {
    check_attention(q, k, v, cu, out, lse);
    check_sparse(sparse_idx, cu, q.size(0));
    int64_t n = q.size(0), heads = q.size(1), dk = q.size(2), dv = v.size(2);
    float* plse = lse.f32();
    std::vector<float> p;
    std::vector<uint8_t> allowed;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      if (len == 0) continue;
      p.resize(size_t(len * len));
      allowed_keys(sparse_idx, o, len, allowed);
      for (int64_t h = 0; h < heads; ++h) {
        const float* qh = q.f32() + o * q.stride(0) + h * q.stride(1);
        const float* kh = k.f32() + o * k.stride(0) + h * k.stride(1);
        const float* vh = v.f32() + o * v.stride(0) + h * v.stride(1);
        float* oh = out.f32() + o * out.stride(0) + h * out.stride(1);
        scores(qh, q.stride(0), kh, k.stride(0), len, dk, scale, p.data());
        float* lse_h = plse + h * n + o;
        const uint8_t* allow = allowed.empty() ? nullptr : allowed.data();
#pragma omp parallel for schedule(static) if (len >= 64)
        for (int64_t i = 0; i < len; ++i) {
          float* row = p.data() + i * len;
          const uint8_t* ok = allow ? allow + i * len : nullptr;
          float mx = -INFINITY;
          for (int64_t j = 0; j <= i; ++j)
            if (!ok || ok[j]) mx = std::max(mx, row[j]);
          double sum = 0;
          for (int64_t j = 0; j <= i; ++j) {
            row[j] = (!ok || ok[j]) ? std::exp(row[j] - mx) : 0.0f;
            sum += row[j];
          }
          float inv = float(1.0 / sum);
          for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
          for (int64_t j = i + 1; j < len; ++j) row[j] = 0.0f;
          lse_h[i] = mx + float(std::log(sum));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(len), int(dv), int(len), 1.0f,
                    p.data(), int(len), vh, int(v.stride(0)), 0.0f, oh, int(out.stride(0)));
      }
    }
  }

  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& dout, const Tensor& lse, const std::vector<int64_t>& cu,
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          const Tensor* sparse_idx) override {
    check_attention(q, k, v, cu, out, lse);
    check_attention(dq, dk, dv, cu, dout, lse);
    check_sparse(sparse_idx, cu, q.size(0));
    int64_t n = q.size(0), heads = q.size(1), dkd = q.size(2), dvd = v.size(2);
    const float* plse = lse.f32();
    std::vector<float> p, dp, dsum;
    std::vector<uint8_t> allowed;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      if (len == 0) continue;
      p.resize(size_t(len * len));
      dp.resize(size_t(len * len));
      dsum.resize(size_t(len));
      allowed_keys(sparse_idx, o, len, allowed);
      const uint8_t* allow = allowed.empty() ? nullptr : allowed.data();
      for (int64_t h = 0; h < heads; ++h) {
        auto at = [&](const Tensor& t) { return t.f32() + o * t.stride(0) + h * t.stride(1); };
        const float *qh = at(q), *kh = at(k), *vh = at(v), *oh = at(out), *doh = at(dout);
        float *dqh = at(dq), *dkh = at(dk), *dvh = at(dv);
        scores(qh, q.stride(0), kh, k.stride(0), len, dkd, scale, p.data());
        const float* lse_h = plse + h * n + o;
        // dP = dO V^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(len), int(len), int(dvd), 1.0f,
                    doh, int(dout.stride(0)), vh, int(v.stride(0)), 0.0f, dp.data(), int(len));
#pragma omp parallel for schedule(static) if (len >= 64)
        for (int64_t i = 0; i < len; ++i) {
          const float* dor = doh + i * dout.stride(0);
          const float* orow = oh + i * out.stride(0);
          double acc = 0;
          for (int64_t j = 0; j < dvd; ++j) acc += double(dor[j]) * orow[j];
          float di = float(acc);
          float* row = p.data() + i * len;
          float* drow = dp.data() + i * len;
          const uint8_t* ok = allow ? allow + i * len : nullptr;
          for (int64_t j = 0; j <= i; ++j) {
            row[j] = (!ok || ok[j]) ? std::exp(row[j] - lse_h[i]) : 0.0f;
            drow[j] = row[j] * (drow[j] - di);
          }
          for (int64_t j = i + 1; j < len; ++j) row[j] = drow[j] = 0.0f;
        }
        // dV = P^T dO ; dQ = scale dS K ; dK = scale dS^T Q
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(len), int(dvd), int(len), 1.0f,
                    p.data(), int(len), doh, int(dout.stride(0)), 0.0f, dvh, int(dv.stride(0)));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(len), int(dkd), int(len), scale,
                    dp.data(), int(len), kh, int(k.stride(0)), 0.0f, dqh, int(dq.stride(0)));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(len), int(dkd), int(len), scale,
                    dp.data(), int(len), qh, int(q.stride(0)), 0.0f, dkh, int(dk.stride(0)));
      }
    }
  }

  void attention_head_sum_probs(const Tensor& q, const Tensor& k, const Tensor& lse,
                                const std::vector<int64_t>& cu, float scale,
                                const Tensor* sparse_idx, Tensor& p) override {
    int64_t n = q.size(0), heads = q.size(1), dk = q.size(2);
    SHOAL_CHECK(q.ndim() == 3 && k.ndim() == 3 && q.stride(2) == 1 && k.stride(2) == 1 &&
                    k.size(0) == n && k.size(1) == heads && k.size(2) == dk,
                "attention_head_sum_probs: q {} k {}", q.describe(), k.describe());
    check_contig_f32(lse, "attention_head_sum_probs lse");
    check_contig_f32(p, "attention_head_sum_probs p");
    SHOAL_CHECK(p.numel() == packed_square_size(cu),
                "attention_head_sum_probs: p holds {}, "
                "the batch needs {}",
                p.numel(), packed_square_size(cu));
    check_sparse(sparse_idx, cu, n);
    std::vector<float> sc;
    std::vector<uint8_t> allowed;
    int64_t off = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      float* blk = p.f32() + off;
      off += len * len;
      if (len == 0) continue;
      std::fill(blk, blk + len * len, 0.0f);
      sc.resize(size_t(len * len));
      allowed_keys(sparse_idx, o, len, allowed);
      for (int64_t h = 0; h < heads; ++h) {
        scores(q.f32() + o * q.stride(0) + h * q.stride(1), q.stride(0),
               k.f32() + o * k.stride(0) + h * k.stride(1), k.stride(0), len, dk, scale, sc.data());
        const float* lse_h = lse.f32() + h * n + o;
        for (int64_t i = 0; i < len; ++i)
          for (int64_t j = 0; j <= i; ++j)
            if (allowed.empty() || allowed[size_t(i * len + j)])
              blk[i * len + j] += std::exp(sc[size_t(i * len + j)] - lse_h[i]);
      }
      for (int64_t i = 0; i < len; ++i) {
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += blk[i * len + j];
        float inv = sum > 0 ? float(1.0 / sum) : 0.0f;
        for (int64_t j = 0; j <= i; ++j) blk[i * len + j] *= inv;
      }
    }
  }

  void check_indexer(const Tensor& q, const Tensor& k, const Tensor& w,
                     const std::vector<int64_t>& cu) {
    backend_checks::indexer(q, k, w, cu, Device::cpu);
  }

  void indexer_scores(const Tensor& q, const Tensor& k, const Tensor& w,
                      const std::vector<int64_t>& cu, float scale, Tensor& out) override {
    check_indexer(q, k, w, cu);
    check_contig_f32(out, "indexer scores");
    SHOAL_CHECK(out.numel() == packed_square_size(cu), "indexer scores: {} for {} packed",
                out.describe(), packed_square_size(cu));
    int64_t heads = q.size(1), d = q.size(2);
    std::vector<float> g;
    int64_t off = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      float* blk = out.f32() + off;
      off += len * len;
      if (len == 0) continue;
      g.resize(size_t(len * len));
      for (int64_t i = 0; i < len; ++i)
        for (int64_t j = 0; j < len; ++j) blk[i * len + j] = j <= i ? 0.0f : -INFINITY;
      for (int64_t h = 0; h < heads; ++h) {
        scores(q.f32() + o * q.stride(0) + h * q.stride(1), q.stride(0),
               k.f32() + o * row_stride(k), row_stride(k), len, d, 1.0f, g.data());
        for (int64_t i = 0; i < len; ++i) {
          float wh = scale * w.f32()[(o + i) * row_stride(w) + h];
          for (int64_t j = 0; j <= i; ++j)
            blk[i * len + j] += wh * std::max(g[size_t(i * len + j)], 0.0f);
        }
      }
    }
  }

  void indexer_scores_backward(const Tensor& q, const Tensor& k, const Tensor& w,
                               const std::vector<int64_t>& cu, float scale, const Tensor& dsc,
                               Tensor& dq, Tensor& dk, Tensor& dw) override {
    check_indexer(q, k, w, cu);
    check_indexer(dq, dk, dw, cu);
    check_contig_f32(dsc, "indexer dscores");
    SHOAL_CHECK(dsc.numel() == packed_square_size(cu), "indexer dscores size");
    int64_t heads = q.size(1), d = q.size(2);
    std::vector<float> g, dg;
    int64_t off = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      const float* dblk = dsc.f32() + off;
      off += len * len;
      if (len == 0) continue;
      g.resize(size_t(len * len));
      dg.resize(size_t(len * len));
      float* dk_seq = dk.f32() + o * row_stride(dk);
      for (int64_t i = 0; i < len; ++i)
        std::fill(dk_seq + i * row_stride(dk), dk_seq + i * row_stride(dk) + d, 0.0f);
      for (int64_t h = 0; h < heads; ++h) {
        const float* qh = q.f32() + o * q.stride(0) + h * q.stride(1);
        scores(qh, q.stride(0), k.f32() + o * row_stride(k), row_stride(k), len, d, 1.0f, g.data());
        for (int64_t i = 0; i < len; ++i) {
          float wh = w.f32()[(o + i) * row_stride(w) + h];
          double acc = 0;
          for (int64_t j = 0; j < len; ++j) {
            float gij = g[size_t(i * len + j)];
            float dij = j <= i ? dblk[i * len + j] : 0.0f;
            acc += double(dij) * std::max(gij, 0.0f);
            dg[size_t(i * len + j)] = gij > 0.0f ? dij * scale * wh : 0.0f;
          }
          dw.f32()[(o + i) * row_stride(dw) + h] = float(scale * acc);
        }
        // dq_h = dG K ; dk += dG^T Q_h
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(len), int(d), int(len), 1.0f,
                    dg.data(), int(len), k.f32() + o * row_stride(k), int(row_stride(k)), 0.0f,
                    dq.f32() + o * dq.stride(0) + h * dq.stride(1), int(dq.stride(0)));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(len), int(d), int(len), 1.0f,
                    dg.data(), int(len), qh, int(q.stride(0)), 1.0f, dk_seq, int(row_stride(dk)));
      }
    }
  }

  void topk_rows(const Tensor& sc, const std::vector<int64_t>& cu, int64_t k,
                 Tensor& idx) override {
    check_contig_f32(sc, "topk scores");
    SHOAL_CHECK(k >= 1, "topk_rows: k must be >= 1, got {}", k);
    int64_t n = cu.back();
    SHOAL_CHECK(sc.numel() == packed_square_size(cu) && idx.dtype() == DType::i32 &&
                    idx.numel() == n * k && idx.is_contiguous(),
                "topk_rows: scores {} idx {} for k {}", sc.describe(), idx.describe(), k);
    int32_t* out = idx.i32();
    int64_t off = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      const float* blk = sc.f32() + off;
      off += len * len;
      // Exactly equal scores are common (ReLU zeros in every head), so the tie-break decides
      // what is attended. transformers' reference is torch.topk on the CPU over the whole row with
      // the later (future) positions masked to the lowest double: it runs std::nth_element (or
      // std::partial_sort when k * 64 <= row length) on (value, position) pairs comparing values
      // only. Doing the same here picks the same set, ties included.
      int64_t kk = std::min<int64_t>(k, len);
#pragma omp parallel for schedule(static) if (len * len > 65536)
      for (int64_t i = 0; i < len; ++i) {
        std::vector<std::pair<double, int64_t>> row(static_cast<size_t>(len));
        for (int64_t j = 0; j < len; ++j)
          row[size_t(j)] = {j <= i ? double(blk[i * len + j]) : -DBL_MAX, j};
        auto greater = [](const std::pair<double, int64_t>& x,
                          const std::pair<double, int64_t>& y) {
          return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first;
        };
        if (kk * 64 <= len)
          std::partial_sort(row.begin(), row.begin() + kk, row.end(), greater);
        else
          std::nth_element(row.begin(), row.begin() + kk - 1, row.end(), greater);
        std::sort(row.begin(), row.begin() + kk, greater);  // best first (order only)
        int32_t* dst = out + (o + i) * k;
        int64_t w = 0;
        for (int64_t j = 0; j < kk; ++j)
          if (row[size_t(j)].second <= i) dst[w++] = int32_t(row[size_t(j)].second);
        for (; w < k; ++w) dst[w] = -1;
      }
    }
  }

  double indexer_kl(const Tensor& p, const Tensor& sc, const std::vector<int64_t>& cu,
                    const Tensor* sparse_idx, float grad_scale, Tensor& dsc) override {
    check_contig_f32(p, "indexer_kl p");
    check_contig_f32(sc, "indexer_kl scores");
    check_contig_f32(dsc, "indexer_kl dscores");
    int64_t total = packed_square_size(cu);
    SHOAL_CHECK(p.numel() == total && sc.numel() == total && dsc.numel() == total,
                "indexer_kl: p {} scores {} dscores {} for {} packed", p.describe(), sc.describe(),
                dsc.describe(), total);
    check_sparse(sparse_idx, cu, cu.back());
    double kl = 0;
    std::vector<uint8_t> allowed;
    int64_t off = 0;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      const float* pb = p.f32() + off;
      const float* ib = sc.f32() + off;
      float* db = dsc.f32() + off;
      off += len * len;
      allowed_keys(sparse_idx, o, len, allowed);
      for (int64_t i = 0; i < len; ++i) {
        auto in_set = [&](int64_t j) {
          return j <= i && (allowed.empty() || allowed[size_t(i * len + j)]);
        };
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j)
          if (in_set(j)) mx = std::max(mx, double(ib[i * len + j]));
        double z = 0;
        for (int64_t j = 0; j <= i; ++j)
          if (in_set(j)) z += std::exp(double(ib[i * len + j]) - mx);
        double lz = mx + std::log(z);
        for (int64_t j = 0; j < len; ++j) {
          if (!in_set(j)) {
            db[i * len + j] = 0.0f;
            continue;
          }
          double logq = double(ib[i * len + j]) - lz, pj = pb[i * len + j];
          if (pj > 0) kl += pj * (std::log(pj) - logq);
          db[i * len + j] = float(grad_scale * (std::exp(logq) - pj));
        }
      }
    }
    return kl;
  }

  void hadamard_fp8(Tensor& x, bool hadamard, bool fp8) override {
    check_rows(x, "hadamard_fp8");
    int64_t rows = x.size(0), d = x.size(1);
    SHOAL_CHECK(!hadamard || (d > 0 && (d & (d - 1)) == 0),
                "hadamard_fp8: the Hadamard transform needs a power-of-two width, got {}", d);
    float norm = float(1.0 / std::sqrt(double(d)));
#pragma omp parallel for schedule(static) if (rows * d > 16384)
    for (int64_t r = 0; r < rows; ++r) {
      float* v = x.f32() + r * row_stride(x);
      if (hadamard) {
        for (int64_t h = 1; h < d; h *= 2)
          for (int64_t i = 0; i < d; i += 2 * h)
            for (int64_t j = i; j < i + h; ++j) {
              float a = v[j], b = v[j + h];
              v[j] = a + b;
              v[j + h] = a - b;
            }
        for (int64_t i = 0; i < d; ++i) v[i] *= norm;
      }
      if (fp8) {
        float amax = 1e-4f;
        for (int64_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(v[i]));
        float sc = amax / 448.0f;
        for (int64_t i = 0; i < d; ++i) v[i] = f8e4m3_to_f32(f32_to_f8e4m3(v[i] / sc)) * sc;
      }
    }
  }

  void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y,
                         Tensor& mean, Tensor& rstd) override {
    backend_checks::layernorm(x, w, b, y, mean, rstd, Device::cpu);
    int64_t n = x.size(0), d = x.size(1);
#pragma omp parallel for schedule(static) if (n * d > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x.f32() + r * row_stride(x);
      float* yr = y.f32() + r * row_stride(y);
      double m = 0, v = 0;
      for (int64_t i = 0; i < d; ++i) m += xr[i];
      m /= double(d);
      for (int64_t i = 0; i < d; ++i) v += (xr[i] - m) * (xr[i] - m);
      float inv = float(1.0 / std::sqrt(v / double(d) + double(eps)));
      mean.f32()[r] = float(m);
      rstd.f32()[r] = inv;
      for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - float(m)) * inv * w.f32()[i] + b.f32()[i];
    }
  }

  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db) override {
    check_rows(dy, "layernorm dy");
    check_rows(x, "layernorm x");
    check_rows(dx, "layernorm dx");
    for (const Tensor* t : {&w, &mean, &rstd, (const Tensor*)&dw, (const Tensor*)&db})
      check_contig_f32(*t, "layernorm backward");
    int64_t n = x.size(0), d = x.size(1);
    SHOAL_CHECK(
        dy.shape() == x.shape() && dx.shape() == x.shape() && dw.numel() == d && db.numel() == d,
        "layernorm backward shapes");
    // Serial over rows: the indexer's keys are narrow (index_head_dim) and dw/db accumulate.
    for (int64_t r = 0; r < n; ++r) {
      const float* dyr = dy.f32() + r * row_stride(dy);
      const float* xr = x.f32() + r * row_stride(x);
      float* dxr = dx.f32() + r * row_stride(dx);
      float m = mean.f32()[r], inv = rstd.f32()[r];
      double s1 = 0, s2 = 0;  // mean(dxhat), mean(dxhat * xhat)
      for (int64_t i = 0; i < d; ++i) {
        float xh = (xr[i] - m) * inv, g = dyr[i] * w.f32()[i];
        s1 += g;
        s2 += double(g) * xh;
        dw.f32()[i] += dyr[i] * xh;
        db.f32()[i] += dyr[i];
      }
      float a = float(s1 / double(d)), c = float(s2 / double(d));
      for (int64_t i = 0; i < d; ++i) {
        float xh = (xr[i] - m) * inv;
        dxr[i] = inv * (dyr[i] * w.f32()[i] - a - xh * c);
      }
    }
  }

  void swiglu_forward(const Tensor& gu, Tensor& h) override {
    check_rows(gu, "swiglu gate_up");
    check_rows(h, "swiglu h");
    int64_t n = gu.size(0), inter = h.size(1);
    SHOAL_CHECK(gu.size(1) == 2 * inter && h.size(0) == n, "swiglu shapes: {} -> {}", gu.describe(),
                h.describe());
    const float* pg = gu.f32();
    float* ph = h.f32();
    int64_t sg = row_stride(gu), sh = row_stride(h);
#pragma omp parallel for schedule(static) if (n * inter > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* g = pg + r * sg;
      const float* u = g + inter;
      float* o = ph + r * sh;
      for (int64_t i = 0; i < inter; ++i) o[i] = g[i] * sigmoidf(g[i]) * u[i];
    }
  }

  void swiglu_backward(const Tensor& dh, const Tensor& gu, Tensor& dgu) override {
    check_rows(dh, "swiglu dh");
    check_rows(gu, "swiglu gate_up");
    check_rows(dgu, "swiglu dgate_up");
    int64_t n = gu.size(0), inter = dh.size(1);
    SHOAL_CHECK(gu.size(1) == 2 * inter && dgu.shape() == gu.shape() && dh.size(0) == n,
                "swiglu backward shapes");
    const float *pdh = dh.f32(), *pg = gu.f32();
    float* pd = dgu.f32();
    int64_t sdh = row_stride(dh), sg = row_stride(gu), sd = row_stride(dgu);
#pragma omp parallel for schedule(static) if (n * inter > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* g = pg + r * sg;
      const float* u = g + inter;
      const float* d = pdh + r * sdh;
      float* dg = pd + r * sd;
      float* du = dg + inter;
      for (int64_t i = 0; i < inter; ++i) {
        float sg_ = sigmoidf(g[i]);
        float silu = g[i] * sg_;
        du[i] = d[i] * silu;
        dg[i] = d[i] * u[i] * sg_ * (1.0f + g[i] * (1.0f - sg_));
      }
    }
  }

  void check_ids(const Tensor& ids, int64_t limit, const char* what) {
    SHOAL_CHECK(ids.dtype() == DType::i32 && ids.is_contiguous(),
                "{}: ids must be contiguous "
                "i32, got {}",
                what, ids.describe());
    const int32_t* p = ids.i32();
    for (int64_t i = 0; i < ids.numel(); ++i)
      SHOAL_CHECK(p[i] >= 0 && p[i] < limit, "{}: id {} at position {} is outside [0, {})", what,
                  p[i], i, limit);
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) override {
    check_rows(table, "embedding table");
    check_rows(out, "embedding out");
    check_ids(ids, table.size(0), "embedding");
    int64_t n = ids.numel(), d = table.size(1);
    SHOAL_CHECK(out.size(0) == n && out.size(1) == d, "embedding out {}", out.describe());
    const int32_t* pi = ids.i32();
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(out.f32() + r * row_stride(out), table.f32() + pi[r] * row_stride(table),
                  size_t(d) * 4);
  }

  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override {
    check_rows(dtable, "embedding dtable");
    check_rows(dout, "embedding dout");
    check_ids(ids, dtable.size(0), "embedding backward");
    int64_t n = ids.numel(), d = dtable.size(1);
    const int32_t* pi = ids.i32();
    for (int64_t r = 0; r < n; ++r) {
      float* dst = dtable.f32() + pi[r] * row_stride(dtable);
      const float* src = dout.f32() + r * row_stride(dout);
      for (int64_t i = 0; i < d; ++i) dst[i] += src[i];
    }
  }

  double cross_entropy(const Tensor& logits, const Tensor& labels, float grad_scale,
                       Tensor* dlogits) override {
    check_rows(logits, "cross_entropy logits");
    int64_t n = logits.size(0), vocab = logits.size(1);
    SHOAL_CHECK(labels.dtype() == DType::i32 && labels.numel() == n && labels.is_contiguous(),
                "cross_entropy: labels must be contiguous i32[{}], got {}", n, labels.describe());
    const int32_t* pl = labels.i32();
    for (int64_t i = 0; i < n; ++i)
      SHOAL_CHECK(pl[i] == -100 || (pl[i] >= 0 && pl[i] < vocab),
                  "cross_entropy: label {} at row {} is outside [0, {})", pl[i], i, vocab);
    if (dlogits) {
      check_rows(*dlogits, "cross_entropy dlogits");
      SHOAL_CHECK(dlogits->shape() == logits.shape(), "cross_entropy: dlogits shape");
    }
    const float* px = logits.f32();
    int64_t sx = row_stride(logits);
    float* pd = dlogits ? dlogits->f32() : nullptr;
    int64_t sd = dlogits ? row_stride(*dlogits) : 0;
    // Per-row losses summed in row order afterwards: the total does not depend on the number of
    // threads.
    std::vector<double> row_loss(size_t(n), 0.0);
#pragma omp parallel for schedule(static) if (n * vocab > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* x = px + r * sx;
      float* d = pd ? pd + r * sd : nullptr;
      if (pl[r] == -100) {
        if (d) std::memset(d, 0, size_t(vocab) * 4);
        continue;
      }
      float mx = x[0];
      for (int64_t i = 1; i < vocab; ++i) mx = std::max(mx, x[i]);
      double sum = 0;
      for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(x[i] - mx));
      double lse = double(mx) + std::log(sum);
      double xl = x[pl[r]];
      row_loss[size_t(r)] = lse - xl;
      if (d) {
        float inv = float(1.0 / sum);
        for (int64_t i = 0; i < vocab; ++i) d[i] = grad_scale * std::exp(x[i] - mx) * inv;
        d[pl[r]] -= grad_scale;
      }
    }
    double total = 0;
    for (double l : row_loss) total += l;
    return total;
  }

  // Validates labels and token sets for token_logprobs*; returns the set bounds per row (or
  // [0, V) as a null set).
  void check_logprob_args(const Tensor& logits, const Tensor& labels, const TokenSets* sets) {
    check_rows(logits, "token_logprobs logits");
    int64_t n = logits.size(0), vocab = logits.size(1);
    SHOAL_CHECK(labels.dtype() == DType::i32 && labels.numel() == n && labels.is_contiguous(),
                "token_logprobs: labels must be contiguous i32[{}], got {}", n, labels.describe());
    const int32_t* pl = labels.i32();
    for (int64_t i = 0; i < n; ++i)
      SHOAL_CHECK(pl[i] == -100 || (pl[i] >= 0 && pl[i] < vocab),
                  "token_logprobs: label {} at row {} is outside [0, {})", pl[i], i, vocab);
    if (!sets) return;
    SHOAL_CHECK(sets->offsets.dtype() == DType::i64 && sets->offsets.numel() == n + 1 &&
                    sets->ids.dtype() == DType::i32,
                "token_logprobs: sets need i64 offsets[{}] and i32 ids, got {} and {}", n + 1,
                sets->offsets.describe(), sets->ids.describe());
    const int64_t* off = sets->offsets.i64();
    SHOAL_CHECK(off[0] == 0 && off[n] == sets->ids.numel(),
                "token_logprobs: set offsets must run from 0 to {}", sets->ids.numel());
    for (int64_t i = 0; i < n; ++i) {
      SHOAL_CHECK(off[i + 1] >= off[i], "token_logprobs: set offsets decrease at row {}", i);
      bool has_label = pl[i] == -100;
      for (int64_t j = off[i]; j < off[i + 1]; ++j) {
        int32_t id = sets->ids.i32()[j];
        SHOAL_CHECK(id >= 0 && id < vocab, "token_logprobs: set id {} at row {} outside [0, {})",
                    id, i, vocab);
        has_label = has_label || id == pl[i];
      }
      SHOAL_CHECK(has_label, "token_logprobs: row {}'s set does not contain its label {}", i,
                  pl[i]);
    }
  }

  void token_logprobs(const Tensor& logits, const Tensor& labels, const TokenSets* sets,
                      Tensor& logp, Tensor* entropy) override {
    check_logprob_args(logits, labels, sets);
    int64_t n = logits.size(0), vocab = logits.size(1), sx = row_stride(logits);
    check_contig_f32(logp, "token_logprobs logp");
    SHOAL_CHECK(logp.numel() == n && (!entropy || entropy->numel() == n),
                "token_logprobs: outputs must hold {} rows", n);
    if (entropy) check_contig_f32(*entropy, "token_logprobs entropy");
    const int32_t* pl = labels.i32();
    const int64_t* off = sets ? sets->offsets.i64() : nullptr;
    const int32_t* ids = sets ? sets->ids.i32() : nullptr;
#pragma omp parallel for schedule(static) if (n * vocab > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* x = logits.f32() + r * sx;
      if (pl[r] == -100) {
        logp.f32()[r] = 0.0f;
        if (entropy) entropy->f32()[r] = 0.0f;
        continue;
      }
      int64_t m = off ? off[r + 1] - off[r] : vocab;
      auto at = [&](int64_t j) { return off ? x[ids[off[r] + j]] : x[j]; };
      double mx = -INFINITY;
      for (int64_t j = 0; j < m; ++j) mx = std::max(mx, double(at(j)));
      double z = 0, ex = 0;
      for (int64_t j = 0; j < m; ++j) {
        double e = std::exp(double(at(j)) - mx);
        z += e;
        ex += e * (double(at(j)) - mx);
      }
      double lz = std::log(z);
      logp.f32()[r] = float(double(x[pl[r]]) - mx - lz);
      if (entropy) entropy->f32()[r] = float(lz - ex / z);  // -sum p log p
    }
  }

  void token_logprobs_backward(const Tensor& logits, const Tensor& labels, const TokenSets* sets,
                               const Tensor& dlogp, Tensor& dlogits) override {
    check_logprob_args(logits, labels, sets);
    check_contig_f32(dlogp, "token_logprobs_backward dlogp");
    check_rows(dlogits, "token_logprobs_backward dlogits");
    int64_t n = logits.size(0), vocab = logits.size(1), sx = row_stride(logits),
            sd = row_stride(dlogits);
    SHOAL_CHECK(dlogp.numel() == n && dlogits.shape() == logits.shape(),
                "token_logprobs_backward shapes");
    const int32_t* pl = labels.i32();
    const int64_t* off = sets ? sets->offsets.i64() : nullptr;
    const int32_t* ids = sets ? sets->ids.i32() : nullptr;
#pragma omp parallel for schedule(static) if (n * vocab > 16384)
    for (int64_t r = 0; r < n; ++r) {
      const float* x = logits.f32() + r * sx;
      float* d = dlogits.f32() + r * sd;
      float g = dlogp.f32()[r];
      if (pl[r] == -100 || g == 0.0f) {
        std::memset(d, 0, size_t(vocab) * 4);
        continue;
      }
      if (!off) {
        float mx = x[0];
        for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, x[j]);
        double z = 0;
        for (int64_t j = 0; j < vocab; ++j) z += std::exp(double(x[j] - mx));
        float inv = float(1.0 / z);
        for (int64_t j = 0; j < vocab; ++j) d[j] = -g * std::exp(x[j] - mx) * inv;
      } else {
        int64_t b = off[r], e = off[r + 1];
        float mx = -INFINITY;
        for (int64_t j = b; j < e; ++j) mx = std::max(mx, x[ids[j]]);
        double z = 0;
        for (int64_t j = b; j < e; ++j) z += std::exp(double(x[ids[j]] - mx));
        float inv = float(1.0 / z);
        std::vector<float> p(static_cast<size_t>(e - b));
        for (int64_t j = b; j < e; ++j) p[size_t(j - b)] = std::exp(x[ids[j]] - mx) * inv;
        std::memset(d, 0, size_t(vocab) * 4);  // (after reading x: d may alias it)
        for (int64_t j = b; j < e; ++j) d[ids[j]] = -g * p[size_t(j - b)];
      }
      d[pl[r]] += g;
    }
  }

  void route_noaux_tc(const Tensor& logits, const Tensor& bias, const RouterParams& p,
                      Tensor& scores, Tensor& topk_idx, Tensor& topk_w,
                      bool use_given_idx) override {
    check_contig_f32(logits, "router logits");
    check_contig_f32(bias, "router bias");
    check_contig_f32(scores, "router scores");
    check_contig_f32(topk_w, "router weights");
    int64_t n = logits.size(0), e = p.n_experts, kk = p.top_k;
    SHOAL_CHECK(logits.ndim() == 2 && logits.size(1) == e && bias.numel() == e &&
                    scores.shape() == logits.shape(),
                "router shapes: logits {} bias {} scores {}", logits.describe(), bias.describe(),
                scores.describe());
    SHOAL_CHECK(topk_idx.dtype() == DType::i32 && topk_idx.numel() == n * kk &&
                    topk_w.numel() == n * kk && topk_idx.is_contiguous(),
                "router outputs: idx {} w {}", topk_idx.describe(), topk_w.describe());
    SHOAL_CHECK(p.n_group > 0 && e % p.n_group == 0 && e / p.n_group >= 2 && p.topk_group >= 1 &&
                    p.topk_group <= p.n_group && kk >= 1 && kk <= p.topk_group * (e / p.n_group),
                "router parameters: {} experts, {} groups, top {} groups, top {}", e, p.n_group,
                p.topk_group, kk);
    if (use_given_idx) {
      const int32_t* pi = topk_idx.i32();
      for (int64_t i = 0; i < n * kk; ++i)
        SHOAL_CHECK(pi[i] >= 0 && pi[i] < e, "router replay: expert id {} outside [0, {})", pi[i],
                    e);
    }
    const float *pl = logits.f32(), *pb = bias.f32();
    float *ps = scores.f32(), *pw = topk_w.f32();
    int32_t* pi = topk_idx.i32();
    int64_t gsize = e / p.n_group;
#pragma omp parallel for schedule(static) if (n * e > 8192)
    for (int64_t t = 0; t < n; ++t) {
      const float* lg = pl + t * e;
      float* s = ps + t * e;
      for (int64_t i = 0; i < e; ++i) s[i] = sigmoidf(lg[i]);
      int32_t* idx = pi + t * kk;
      if (!use_given_idx) {
        std::vector<float> choice(static_cast<size_t>(e));
        for (int64_t i = 0; i < e; ++i) choice[size_t(i)] = s[i] + pb[i];
        // Group score: sum of the two best choice scores in the group.
        std::vector<std::pair<float, int64_t>> groups(size_t(p.n_group));
        for (int64_t g = 0; g < p.n_group; ++g) {
          float b1 = -INFINITY, b2 = -INFINITY;
          for (int64_t i = g * gsize; i < (g + 1) * gsize; ++i) {
            float c = choice[size_t(i)];
            if (c > b1) {
              b2 = b1;
              b1 = c;
            } else if (c > b2) {
              b2 = c;
            }
          }
          groups[size_t(g)] = {b1 + b2, g};
        }
        auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
          return a.first > b.first || (a.first == b.first && a.second < b.second);
        };
        std::partial_sort(groups.begin(), groups.begin() + p.topk_group, groups.end(), better);
        std::vector<char> keep(size_t(p.n_group), 0);
        for (int64_t g = 0; g < p.topk_group; ++g) keep[size_t(groups[size_t(g)].second)] = 1;
        // Experts of dropped groups compete with score 0.0, as transformers' masked_fill does.
        std::vector<std::pair<float, int64_t>> cand(static_cast<size_t>(e));
        for (int64_t i = 0; i < e; ++i)
          cand[size_t(i)] = {keep[size_t(i / gsize)] ? choice[size_t(i)] : 0.0f, i};
        std::partial_sort(cand.begin(), cand.begin() + kk, cand.end(), better);
        for (int64_t k = 0; k < kk; ++k) idx[k] = int32_t(cand[size_t(k)].second);
      }
      float* w = pw + t * kk;
      double sum = 0;
      for (int64_t k = 0; k < kk; ++k) {
        w[k] = s[idx[k]];
        sum += w[k];
      }
      float norm = p.norm_topk_prob ? float(1.0 / (sum + 1e-20)) : 1.0f;
      for (int64_t k = 0; k < kk; ++k) w[k] = w[k] * norm * p.routed_scaling_factor;
    }
  }

  void route_backward(const Tensor& dw, const Tensor& scores, const Tensor& topk_idx,
                      const RouterParams& p, Tensor& dlogits) override {
    check_contig_f32(dw, "router dweights");
    check_contig_f32(scores, "router scores");
    check_contig_f32(dlogits, "router dlogits");
    int64_t n = scores.size(0), e = p.n_experts, kk = p.top_k;
    SHOAL_CHECK(
        dlogits.shape() == scores.shape() && dw.numel() == n * kk && topk_idx.numel() == n * kk,
        "router backward shapes");
    const float *pdw = dw.f32(), *ps = scores.f32();
    const int32_t* pi = topk_idx.i32();
    float* pd = dlogits.f32();
#pragma omp parallel for schedule(static) if (n * e > 8192)
    for (int64_t t = 0; t < n; ++t) {
      const float* s = ps + t * e;
      const int32_t* idx = pi + t * kk;
      const float* g = pdw + t * kk;
      float* d = pd + t * e;
      for (int64_t i = 0; i < e; ++i) d[i] = 0.0f;
      float rsf = p.routed_scaling_factor;
      if (p.norm_topk_prob) {
        double sum = 1e-20, gs = 0;
        for (int64_t k = 0; k < kk; ++k) {
          sum += s[idx[k]];
          gs += double(g[k]) * s[idx[k]];
        }
        for (int64_t k = 0; k < kk; ++k) {
          double ds = rsf * (g[k] / sum - gs / (sum * sum));
          float sk = s[idx[k]];
          d[idx[k]] = float(ds) * sk * (1.0f - sk);
        }
      } else {
        for (int64_t k = 0; k < kk; ++k) {
          float sk = s[idx[k]];
          d[idx[k]] = rsf * g[k] * sk * (1.0f - sk);
        }
      }
    }
  }

  void moe_sort(const Tensor& topk_idx, int64_t n_experts, Tensor& order,
                std::vector<int64_t>& counts) override {
    SHOAL_CHECK(topk_idx.dtype() == DType::i32 && topk_idx.is_contiguous() &&
                    order.dtype() == DType::i32 && order.numel() == topk_idx.numel(),
                "moe_sort: idx {} order {}", topk_idx.describe(), order.describe());
    const int32_t* pi = topk_idx.i32();
    int64_t m = topk_idx.numel();
    counts.assign(size_t(n_experts), 0);
    for (int64_t i = 0; i < m; ++i) {
      SHOAL_CHECK(pi[i] >= 0 && pi[i] < n_experts, "moe_sort: expert {} outside [0, {})", pi[i],
                  n_experts);
      ++counts[size_t(pi[i])];
    }
    std::vector<int64_t> next(size_t(n_experts), 0);
    for (int64_t e = 1; e < n_experts; ++e)
      next[size_t(e)] = next[size_t(e - 1)] + counts[size_t(e - 1)];
    int32_t* po = order.i32();
    for (int64_t i = 0; i < m; ++i) po[next[size_t(pi[i])]++] = int32_t(i);
  }

  void gather_rows(const Tensor& src, const Tensor& idx, int64_t div, Tensor& dst) override {
    check_rows(src, "gather src");
    check_rows(dst, "gather dst");
    SHOAL_CHECK(idx.dtype() == DType::i32 && idx.numel() == dst.size(0) &&
                    dst.size(1) == src.size(1) && div >= 1,
                "gather_rows: src {} idx {} dst {}", src.describe(), idx.describe(),
                dst.describe());
    const int32_t* pi = idx.i32();
    int64_t m = dst.size(0), d = src.size(1);
    for (int64_t i = 0; i < m; ++i)
      SHOAL_CHECK(pi[i] >= 0 && pi[i] / div < src.size(0), "gather_rows: index {} out of range",
                  pi[i]);
#pragma omp parallel for schedule(static) if (m * d > 16384)
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(dst.f32() + i * row_stride(dst), src.f32() + (pi[i] / div) * row_stride(src),
                  size_t(d) * 4);
  }

  void scatter_add_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                        Tensor& dst) override {
    check_rows(src, "scatter src");
    check_rows(dst, "scatter dst");
    SHOAL_CHECK(idx.dtype() == DType::i32 && idx.numel() == src.size(0) &&
                    dst.size(1) == src.size(1) && div >= 1,
                "scatter_add_rows: src {} idx {} dst {}", src.describe(), idx.describe(),
                dst.describe());
    const int32_t* pi = idx.i32();
    int64_t m = src.size(0), d = src.size(1);
    for (int64_t i = 0; i < m; ++i)
      SHOAL_CHECK(pi[i] >= 0 && pi[i] / div < dst.size(0) && (!w || pi[i] < w->numel()),
                  "scatter_add_rows: index {} out of range", pi[i]);
    const float* pw = w ? w->f32() : nullptr;
    for (int64_t i = 0; i < m; ++i) {
      float wi = pw ? pw[pi[i]] : 1.0f;
      const float* s = src.f32() + i * row_stride(src);
      float* o = dst.f32() + (pi[i] / div) * row_stride(dst);
      for (int64_t j = 0; j < d; ++j) o[j] += wi * s[j];
    }
  }

  void row_dot_scatter(const Tensor& a, const Tensor& b, const Tensor& idx, Tensor& out) override {
    check_rows(a, "row_dot a");
    check_rows(b, "row_dot b");
    check_contig_f32(out, "row_dot out");
    SHOAL_CHECK(a.shape() == b.shape() && idx.numel() == a.size(0) && idx.dtype() == DType::i32,
                "row_dot_scatter shapes");
    const int32_t* pi = idx.i32();
    int64_t m = a.size(0), d = a.size(1);
    for (int64_t i = 0; i < m; ++i)
      SHOAL_CHECK(pi[i] >= 0 && pi[i] < out.numel(), "row_dot_scatter: index {} out of range",
                  pi[i]);
#pragma omp parallel for schedule(static) if (m * d > 16384)
    for (int64_t i = 0; i < m; ++i) {
      const float* x = a.f32() + i * row_stride(a);
      const float* y = b.f32() + i * row_stride(b);
      double acc = 0;
      for (int64_t j = 0; j < d; ++j) acc += double(x[j]) * y[j];
      out.f32()[pi[i]] = float(acc);
    }
  }

  void scale_rows(Tensor& x, const Tensor& idx, const Tensor& w) override {
    check_rows(x, "scale_rows x");
    check_contig_f32(w, "scale_rows w");
    const int32_t* pi = idx.i32();
    int64_t m = x.size(0), d = x.size(1);
    SHOAL_CHECK(idx.numel() == m, "scale_rows: idx {} for {} rows", idx.numel(), m);
    for (int64_t i = 0; i < m; ++i)
      SHOAL_CHECK(pi[i] >= 0 && pi[i] < w.numel(), "scale_rows: index {} out of range", pi[i]);
#pragma omp parallel for schedule(static) if (m * d > 16384)
    for (int64_t i = 0; i < m; ++i) {
      float wi = w.f32()[pi[i]];
      float* r = x.f32() + i * row_stride(x);
      for (int64_t j = 0; j < d; ++j) r[j] *= wi;
    }
  }

  void scatter_rows(const Tensor& src, const Tensor& idx, Tensor& dst) override {
    backend_checks::scatter_rows(src, idx, dst, Device::cpu);
    const int32_t* pi = idx.i32();
    int64_t m = src.size(0), d = src.size(1);
    for (int64_t i = 0; i < m; ++i)
      SHOAL_CHECK(pi[i] >= -1 && pi[i] < dst.size(0), "scatter_rows: index {} out of range", pi[i]);
    for (int64_t i = 0; i < m; ++i)
      if (pi[i] != -1)
        std::memcpy(dst.f32() + pi[i] * row_stride(dst), src.f32() + i * row_stride(src),
                    size_t(d) * 4);
  }

  // The reference: scores and sums in f64, one row and head at a time.
  void latent_attention(const Tensor& q, const Tensor& pool, int64_t page_tokens,
                        const Tensor& block_table, const Tensor& row_seq, const Tensor& row_len,
                        int64_t max_len, const Tensor* key_idx, float scale, Tensor& out) override {
    backend_checks::latent_attention(q, pool, page_tokens, block_table, row_seq, row_len, key_idx,
                                     out, Device::cpu);
    const int64_t n = q.size(0), h = q.size(1), dim = q.size(2), r = out.size(2);
    const int64_t np = block_table.size(1), ns = block_table.size(0), slots = pool.size(0);
    const int64_t kk = key_idx ? key_idx->size(1) : 0;
    const int32_t *bt = block_table.i32(), *rs = row_seq.i32(), *rl = row_len.i32();
    const float* lat = pool.f32();
    std::vector<std::vector<const float*>> rows(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      SHOAL_CHECK(rs[i] >= 0 && rs[i] < ns, "latent_attention: row {} names sequence {} of {}", i,
                  rs[i], ns);
      SHOAL_CHECK(rl[i] >= 0 && rl[i] <= max_len && rl[i] <= np * page_tokens,
                  "latent_attention: row {} length {} (bound {}, {} pages of {})", i, rl[i],
                  max_len, np, page_tokens);
      auto add = [&](int64_t t) {
        int64_t page = bt[rs[i] * np + t / page_tokens];
        int64_t slot = page * page_tokens + t % page_tokens;
        SHOAL_CHECK(page >= 0 && slot < slots,
                    "latent_attention: row {} position {} is on page {} (pool of {} slots)", i, t,
                    page, slots);
        rows[size_t(i)].push_back(lat + slot * dim);
      };
      if (key_idx) {
        for (int64_t j = 0; j < kk; ++j) {
          int32_t t = key_idx->i32()[i * kk + j];
          SHOAL_CHECK(t >= -1 && t < rl[i], "latent_attention: row {} key {} outside [0, {})", i, t,
                      rl[i]);
          if (t >= 0) add(t);
        }
      } else {
        for (int64_t t = 0; t < rl[i]; ++t) add(t);
      }
    }
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) {
      const std::vector<const float*>& keys = rows[size_t(i)];
      std::vector<double> sc(keys.size()), acc(static_cast<size_t>(r));
      for (int64_t hh = 0; hh < h; ++hh) {
        const float* qh = q.f32() + i * q.stride(0) + hh * q.stride(1);
        double mx = -INFINITY;
        for (size_t j = 0; j < keys.size(); ++j) {
          double dot = 0;
          for (int64_t c = 0; c < dim; ++c) dot += double(qh[c]) * keys[j][c];
          sc[j] = dot * scale;
          mx = std::max(mx, sc[j]);
        }
        double z = 0;
        for (double& v : sc) z += v = std::exp(v - mx);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (size_t j = 0; j < keys.size(); ++j)
          for (int64_t c = 0; c < r; ++c) acc[size_t(c)] += sc[j] * keys[j][c];
        float* o = out.f32() + i * out.stride(0) + hh * out.stride(1);
        for (int64_t c = 0; c < r; ++c) o[c] = keys.empty() ? 0.0f : float(acc[size_t(c)] / z);
      }
    }
  }

  // The reference draw (kernels/sampling/sampling_ref.cpp, which sample_token also runs), draws in
  // parallel.
  void sample_rows(const Tensor& logits, const std::vector<TokenDraw>& draws,
                   std::vector<int32_t>& ids, std::vector<float>& logprobs) override {
    backend_checks::sample_rows(logits, draws, Device::cpu);
    const int64_t n = int64_t(draws.size()), v = logits.size(1), ld = row_stride(logits);
    ids.assign(draws.size(), 0);
    logprobs.assign(draws.size(), 0.0f);
#pragma omp parallel for schedule(dynamic) if (n > 1)
    for (int64_t i = 0; i < n; ++i) {
      const TokenDraw& d = draws[size_t(i)];
      kernels::SampledToken t =
          kernels::sample_row_ref(logits.f32() + d.row * ld, v, backend_checks::sample_draw(d, v));
      ids[size_t(i)] = t.id;
      logprobs[size_t(i)] = t.logprob;
    }
  }

  void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
             const AdamWParams& p) override {
    adamw_one(param, grad, m, v, p, p.weight_decay, 1.0f);
  }

  void grad_clip_factor(const std::vector<Tensor>& grads, double max_norm, Tensor& clip) override {
    SHOAL_CHECK(clip.defined() && clip.device() == Device::cpu && clip.dtype() == DType::f64 &&
                    clip.numel() == 2 && clip.is_contiguous(),
                "grad_clip_factor: clip must be a contiguous f64[2] host tensor, got {}",
                clip.defined() ? clip.describe() : "undefined");
    double ss = 0;  // per tensor, in order: ParamSet::grad_norm's sum
    for (const Tensor& g : grads) ss += sum_squares(g);
    const double norm = std::sqrt(ss);
    clip.f64()[0] = norm;
    clip.f64()[1] = max_norm > 0 && norm > max_norm ? double(float(max_norm / (norm + 1e-6))) : 1.0;
  }

  void adamw_multi(const std::vector<AdamWTensor>& ts, const AdamWParams& p,
                   const Tensor* clip) override {
    float factor = 1.0f;
    if (clip) {
      SHOAL_CHECK(clip->device() == Device::cpu && clip->dtype() == DType::f64 &&
                      clip->numel() == 2 && clip->is_contiguous(),
                  "adamw_multi: clip must be a contiguous f64[2] host tensor, got {}",
                  clip->describe());
      factor = float(clip->f64()[1]);
    }
    for (const AdamWTensor& t : ts) {
      Tensor param = t.param, m = t.m, v = t.v;
      adamw_one(param, t.grad, m, v, p, t.weight_decay, factor);
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<CpuBackend>();
}

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

}  // namespace shoal
