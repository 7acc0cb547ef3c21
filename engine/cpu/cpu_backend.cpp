// The CPU backend: GEMMs through OpenBLAS (cblas_sgemm, which threads itself), everything else as
// plain loops over rows that the compiler vectorizes, split across cores with OpenMP. Input checks
// run before any parallel region (an exception must not escape an OpenMP region).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/backend.h"

namespace shoal {
namespace {

void check_f32(const Tensor& t, const char* what) {
  SHOAL_CHECK(t.defined(), "{}: undefined tensor", what);
  SHOAL_CHECK(t.dtype() == DType::f32, "{}: expected f32, got {}", what, t.describe());
  SHOAL_CHECK(t.device() == Device::cpu, "{}: tensor on {}", what, device_name(t.device()));
}
void check_contig_f32(const Tensor& t, const char* what) {
  check_f32(t, what);
  SHOAL_CHECK(t.is_contiguous(), "{}: expected a contiguous tensor, got {}", what, t.describe());
}
void check_rows(const Tensor& t, const char* what) {  // 2-D, last stride 1
  check_f32(t, what);
  SHOAL_CHECK(t.ndim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1),
              "{}: expected a 2-D tensor with unit last stride, got {} strides {}", what,
              t.describe(), shape_str(t.strides()));
}
int64_t row_stride(const Tensor& t) {
  return std::max<int64_t>(t.stride(0), t.size(1));
}

inline float sigmoidf(float x) {
  return 1.0f / (1.0f + std::exp(-x));
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
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                int(m), int(n), int(k), alpha, a.f32(), int(row_stride(a)), b.f32(),
                int(row_stride(b)), beta, c.f32(), int(row_stride(c)));
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
    double acc = 0;
#pragma omp parallel for reduction(+ : acc) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) acc += double(p[i]) * p[i];
    return acc;
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                       Tensor& rstd) override {
    check_rows(x, "rmsnorm x");
    check_rows(y, "rmsnorm y");
    check_contig_f32(w, "rmsnorm w");
    check_contig_f32(rstd, "rmsnorm rstd");
    int64_t n = x.size(0), d = x.size(1);
    SHOAL_CHECK(w.numel() == d && y.shape() == x.shape() && rstd.numel() == n,
                "rmsnorm shapes: x {} w {} y {} rstd {}", x.describe(), w.describe(), y.describe(),
                rstd.describe());
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
    int nt = omp_get_max_threads();
    std::vector<float> dw_part(size_t(nt) * size_t(d), 0.0f);
#pragma omp parallel if (n * d > 16384)
    {
      float* my_dw = dw_part.data() + size_t(omp_get_thread_num()) * size_t(d);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; ++r) {
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
    for (int t = 0; t < nt; ++t)
      for (int64_t i = 0; i < d; ++i) pdw[i] += dw_part[size_t(t) * size_t(d) + size_t(i)];
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
    for (const Tensor* t : {&q, &k, &v, &out}) {
      check_f32(*t, "attention");
      SHOAL_CHECK(t->ndim() == 3 && t->stride(2) == 1,
                  "attention: operands must be [N, H, d] with unit last stride, got {}",
                  t->describe());
    }
    int64_t n = q.size(0), h = q.size(1);
    SHOAL_CHECK(k.size(0) == n && v.size(0) == n && k.size(1) == h && v.size(1) == h &&
                    k.size(2) == q.size(2) && out.size(0) == n && out.size(1) == h &&
                    out.size(2) == v.size(2),
                "attention shapes: q {} k {} v {} out {}", q.describe(), k.describe(), v.describe(),
                out.describe());
    check_contig_f32(lse, "attention lse");
    SHOAL_CHECK(lse.numel() == h * n, "attention: lse {} must hold H*N = {}", lse.describe(),
                h * n);
    SHOAL_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == n,
                "attention: cu_seqlens must run from 0 to N = {}", n);
    for (size_t i = 1; i < cu.size(); ++i)
      SHOAL_CHECK(cu[i] >= cu[i - 1], "attention: cu_seqlens must be non-decreasing");
  }

  // Scores S = scale * Q_h K_h^T for one sequence and head, causal, into p (L x L).
  void scores(const float* q, int64_t sq, const float* k, int64_t sk, int64_t len, int64_t dk,
              float scale, float* p) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(len), int(len), int(dk), scale, q,
                int(sq), k, int(sk), 0.0f, p, int(len));
  }

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const std::vector<int64_t>& cu, float scale, Tensor& out,
                         Tensor& lse) override {
    check_attention(q, k, v, cu, out, lse);
    int64_t n = q.size(0), heads = q.size(1), dk = q.size(2), dv = v.size(2);
    float* plse = lse.f32();
    std::vector<float> p;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      if (len == 0) continue;
      p.resize(size_t(len * len));
      for (int64_t h = 0; h < heads; ++h) {
        const float* qh = q.f32() + o * q.stride(0) + h * q.stride(1);
        const float* kh = k.f32() + o * k.stride(0) + h * k.stride(1);
        const float* vh = v.f32() + o * v.stride(0) + h * v.stride(1);
        float* oh = out.f32() + o * out.stride(0) + h * out.stride(1);
        scores(qh, q.stride(0), kh, k.stride(0), len, dk, scale, p.data());
        float* lse_h = plse + h * n + o;
#pragma omp parallel for schedule(static) if (len >= 64)
        for (int64_t i = 0; i < len; ++i) {
          float* row = p.data() + i * len;
          float mx = row[0];
          for (int64_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
          double sum = 0;
          for (int64_t j = 0; j <= i; ++j) {
            row[j] = std::exp(row[j] - mx);
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
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv) override {
    check_attention(q, k, v, cu, out, lse);
    check_attention(dq, dk, dv, cu, dout, lse);
    int64_t n = q.size(0), heads = q.size(1), dkd = q.size(2), dvd = v.size(2);
    const float* plse = lse.f32();
    std::vector<float> p, dp, dsum;
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      int64_t o = cu[s], len = cu[s + 1] - cu[s];
      if (len == 0) continue;
      p.resize(size_t(len * len));
      dp.resize(size_t(len * len));
      dsum.resize(size_t(len));
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
          for (int64_t j = 0; j <= i; ++j) {
            row[j] = std::exp(row[j] - lse_h[i]);
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
    double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (n * vocab > 16384)
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
      total += lse - xl;
      if (d) {
        float inv = float(1.0 / sum);
        for (int64_t i = 0; i < vocab; ++i) d[i] = grad_scale * std::exp(x[i] - mx) * inv;
        d[pl[r]] -= grad_scale;
      }
    }
    return total;
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

  void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
             const AdamWParams& p) override {
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
    float decay = 1.0f - p.lr * p.weight_decay;
    float step = p.lr / bc1;
    float inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
    int64_t n = param.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      float g = pg[i];
      pm[i] = p.beta1 * pm[i] + (1.0f - p.beta1) * g;
      pv[i] = p.beta2 * pv[i] + (1.0f - p.beta2) * g * g;
      pp[i] = pp[i] * decay - step * pm[i] / (std::sqrt(pv[i]) * inv_sqrt_bc2 + p.eps);
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
