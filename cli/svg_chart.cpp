// Inline SVG charts for the run report (svg_chart.h).
#include "cli/svg_chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace shoal::cli {
namespace {

constexpr double kWidth = 520, kHeight = 240;
constexpr double kLeft = 56, kRight = 14, kTop = 30, kBottom = 46;
constexpr size_t kMaxPoints = 800;  // longer series are averaged into this many buckets
const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                "#9467bd", "#8c564b", "#e377c2", "#17becf"};

const char* color(size_t i) {
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return lo > hi; }
};

// Round tick steps (1, 2 or 5 times a power of ten) covering [lo, hi] with about `target` ticks.
double tick_step(double lo, double hi, int target) {
  double raw = (hi - lo) / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double r = raw / mag;
  return (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
}

void widen_if_flat(Range& r) {
  if (r.hi > r.lo) return;
  double pad = r.lo == 0 ? 1 : std::abs(r.lo) * 0.1;
  r.lo -= pad;
  r.hi += pad;
}

// Averages consecutive points into at most kMaxPoints buckets (NaN where a bucket has no value),
// so a 100k-step run still makes a small file.
ChartSeries thin(const ChartSeries& s) {
  if (s.x.size() <= kMaxPoints) return s;
  ChartSeries out{s.name, {}, {}};
  size_t n = s.x.size();
  for (size_t b = 0; b < kMaxPoints; ++b) {
    size_t begin = b * n / kMaxPoints, end = (b + 1) * n / kMaxPoints;
    double xs = 0, ys = 0;
    size_t ny = 0;
    for (size_t i = begin; i < end; ++i) {
      xs += s.x[i];
      if (std::isfinite(s.y[i])) ys += s.y[i], ++ny;
    }
    out.x.push_back(xs / static_cast<double>(end - begin));
    out.y.push_back(ny ? ys / static_cast<double>(ny) : std::nan(""));
  }
  return out;
}

// Exponential moving average over the finite values, with a span of about 1/15 of the series.
ChartSeries smoothed(const ChartSeries& s) {
  ChartSeries out{s.name + " (smoothed)", s.x, {}};
  double span = std::max(2.0, static_cast<double>(s.x.size()) / 15.0);
  double alpha = 2.0 / (span + 1.0), ema = std::nan("");
  for (double v : s.y) {
    if (std::isfinite(v)) ema = std::isfinite(ema) ? ema + alpha * (v - ema) : v;
    out.y.push_back(std::isfinite(v) ? ema : std::nan(""));
  }
  return out;
}

struct Frame {
  Range x, y;
  double px(double v) const {
    return kLeft + (v - x.lo) / (x.hi - x.lo) * (kWidth - kLeft - kRight);
  }
  double py(double v) const {
    return kHeight - kBottom - (v - y.lo) / (y.hi - y.lo) * (kHeight - kTop - kBottom);
  }
};

std::string tick_label(double v, bool percent) {
  if (std::abs(v) < 1e-12) v = 0;
  return percent ? fmt::format("{:.0f}%", v * 100) : compact_number(v);
}

std::string axes(const Frame& f, bool percent) {
  std::string out;
  double bottom = kHeight - kBottom, right = kWidth - kRight;
  double ys = tick_step(f.y.lo, f.y.hi, 5);
  for (double v = std::ceil(f.y.lo / ys - 1e-9) * ys; v <= f.y.hi + ys * 1e-9; v += ys) {
    double y = f.py(v);
    out += fmt::format(
        "<line class=\"grid\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>"
        "<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>",
        kLeft, y, right, y, kLeft - 4, y + 3.5, tick_label(v, percent));
  }
  double xs = std::max(1.0, tick_step(f.x.lo, f.x.hi, 6));
  for (double v = std::ceil(f.x.lo / xs - 1e-9) * xs; v <= f.x.hi + xs * 1e-9; v += xs) {
    double x = f.px(v);
    out += fmt::format(
        "<line class=\"axis\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>"
        "<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>",
        x, bottom, x, bottom + 4, x, bottom + 15, compact_number(v));
  }
  out += fmt::format(
      "<rect class=\"frame\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\"/>", kLeft,
      kTop, right - kLeft, bottom - kTop);
  out +=
      fmt::format("<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">step</text>",
                  right, bottom + 27);
  return out;
}

std::string markers(const Frame& f, const std::vector<ChartMarker>& ms) {
  std::string out;
  for (const auto& m : ms) {
    if (m.x < f.x.lo || m.x > f.x.hi) continue;
    double x = f.px(m.x);
    out += fmt::format(
        "<line class=\"stage\" x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\"/>"
        "<text class=\"stage-label\" x=\"{3:.1f}\" y=\"{4:.1f}\">{5}</text>",
        x, kTop, kHeight - kBottom, x + 3, kTop + 10, html_escape(m.label));
  }
  return out;
}

// One polyline per run of finite values; a lone point also gets a dot so it shows.
std::string lines(const Frame& f, const ChartSeries& s, const char* stroke, const char* extra_class,
                  bool dots) {
  std::string out, pts;
  size_t run = 0;
  auto flush = [&] {
    if (run > 0)
      out +=
          fmt::format("<polyline class=\"series{}\" data-name=\"{}\" stroke=\"{}\" points=\"{}\"/>",
                      extra_class, html_escape(s.name), stroke, pts);
    pts.clear();
    run = 0;
  };
  for (size_t i = 0; i < s.x.size(); ++i) {
    if (!std::isfinite(s.y[i])) {
      flush();
      continue;
    }
    double x = f.px(s.x[i]), y = f.py(s.y[i]);
    pts += fmt::format("{}{:.1f},{:.1f}", pts.empty() ? "" : " ", x, y);
    ++run;
    bool alone = (i == 0 || !std::isfinite(s.y[i - 1])) &&
                 (i + 1 == s.x.size() || !std::isfinite(s.y[i + 1]));
    if (dots || alone)
      out +=
          fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>", x, y, stroke);
  }
  flush();
  return out;
}

// Bands between cumulative sums, first series at the bottom (NaN counts as 0).
std::string stacked_areas(const Frame& f, const std::vector<ChartSeries>& series) {
  std::string out;
  if (series.empty()) return out;
  std::vector<double> below(series[0].x.size(), 0.0);
  for (size_t k = 0; k < series.size(); ++k) {
    const ChartSeries& s = series[k];
    std::string top, bottom;
    std::vector<double> above = below;
    for (size_t i = 0; i < s.x.size() && i < below.size(); ++i) {
      if (std::isfinite(s.y[i])) above[i] += s.y[i];
      top += fmt::format("{:.1f},{:.1f} ", f.px(s.x[i]), f.py(above[i]));
    }
    for (size_t i = std::min(s.x.size(), below.size()); i-- > 0;)
      bottom += fmt::format("{:.1f},{:.1f} ", f.px(s.x[i]), f.py(below[i]));
    out += fmt::format(
        "<polygon class=\"band\" fill=\"{}\" points=\"{}{}\"><title>{}</title></polygon>", color(k),
        top, bottom, html_escape(s.name));
    below = above;
  }
  return out;
}

std::string legend(const std::vector<ChartSeries>& series) {
  std::string out;
  double x = kLeft;
  for (size_t k = 0; k < series.size(); ++k) {
    out += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"10\" height=\"10\" fill=\"{}\"/>"
        "<text class=\"legend\" x=\"{:.1f}\" y=\"{:.1f}\">{}</text>",
        x, kHeight - 13, color(k), x + 14, kHeight - 4, html_escape(series[k].name));
    x += 24 + 6.2 * static_cast<double>(series[k].name.size());
  }
  return out;
}

}  // namespace

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string compact_number(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "—" : (v > 0 ? "inf" : "-inf");
  if (std::abs(v) < 1e-12) v = 0;  // no "-0" (a tick at zero computed as -0.0)
  double a = std::abs(v);
  if (a >= 1e9) return fmt::format("{:.3g}G", v / 1e9);
  if (a >= 1e6) return fmt::format("{:.3g}M", v / 1e6);
  if (a >= 1e4) return fmt::format("{:.3g}k", v / 1e3);
  if (a >= 1000 || v == std::round(v)) return fmt::format("{:.0f}", v);
  return fmt::format("{:.3g}", v);
}

std::string svg_chart(const ChartSpec& spec) {
  std::vector<ChartSeries> series;
  for (const auto& s : spec.series) series.push_back(thin(s));
  std::vector<ChartSeries> drawn_smooth;
  bool smooth = spec.smooth && !spec.stacked && !series.empty() && series[0].x.size() > 30;
  if (smooth)
    for (const auto& s : spec.series) drawn_smooth.push_back(thin(smoothed(s)));

  Frame f;
  for (const auto& s : series) {
    for (double x : s.x) f.x.add(x);
    if (!spec.stacked)
      for (double y : s.y) f.y.add(y);
  }
  if (spec.stacked && !series.empty()) {
    f.y.add(0);
    for (size_t i = 0; i < series[0].x.size(); ++i) {
      double sum = 0;
      for (const auto& s : series)
        if (i < s.y.size() && std::isfinite(s.y[i])) sum += s.y[i];
      f.y.add(sum);
    }
  }
  bool empty = f.y.empty() || f.x.empty();
  std::string classes = std::string("chart") + (spec.stacked ? " stacked" : "");
  std::string out;
  if (empty) {
    out = fmt::format(
        "<svg class=\"{}\" id=\"{}\" data-metric=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" "
        "viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\">",
        classes, html_escape(spec.id), html_escape(spec.id), kWidth, kHeight, kWidth, kHeight);
    out += fmt::format("<text class=\"title\" x=\"{}\" y=\"18\">{}</text>", kLeft,
                       html_escape(spec.title));
    out += fmt::format(
        "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no values recorded</text>",
        kWidth / 2, kHeight / 2);
    return out + "</svg>";
  }
  widen_if_flat(f.x);
  widen_if_flat(f.y);
  if (!spec.stacked) {  // a little air above and below, then out to round ticks
    double data_lo = f.y.lo, data_hi = f.y.hi;
    double pad = (f.y.hi - f.y.lo) * 0.04;
    f.y.lo -= pad;
    f.y.hi += pad;
    double ys = tick_step(f.y.lo, f.y.hi, 5);
    f.y.lo = std::floor(f.y.lo / ys) * ys;
    f.y.hi = std::ceil(f.y.hi / ys) * ys;
    if (spec.percent) {  // fractions: no axis below 0 % or above 100 % when the data is inside
      if (data_lo >= 0) f.y.lo = std::max(f.y.lo, 0.0);
      if (data_hi <= 1) f.y.hi = std::min(f.y.hi, 1.0);
    }
  }
  out = fmt::format(
      "<svg class=\"{}\" id=\"{}\" data-metric=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" "
      "viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" data-x0=\"{}\" "
      "data-x1=\"{}\" data-y0=\"{}\" data-y1=\"{}\" data-px0=\"{:.1f}\" data-px1=\"{:.1f}\" "
      "data-py0=\"{:.1f}\" data-py1=\"{:.1f}\">",
      classes, html_escape(spec.id), html_escape(spec.id), kWidth, kHeight, kWidth, kHeight, f.x.lo,
      f.x.hi, f.y.lo, f.y.hi, kLeft, kWidth - kRight, kHeight - kBottom, kTop);
  out += fmt::format("<text class=\"title\" x=\"{}\" y=\"18\">{}</text>", kLeft,
                     html_escape(spec.title));
  out += axes(f, spec.percent || spec.stacked);
  out += markers(f, spec.markers);
  if (spec.stacked) {
    out += stacked_areas(f, series);
  } else {
    for (size_t k = 0; k < series.size(); ++k) {
      out += lines(f, series[k], color(k), smooth ? " raw" : "", spec.points);
      if (smooth) out += lines(f, drawn_smooth[k], color(k), "", false);
    }
  }
  if (series.size() > 1) out += legend(series);
  out += fmt::format(
      "<line class=\"cursor\" visibility=\"hidden\" x1=\"0\" y1=\"{:.1f}\" x2=\"0\" "
      "y2=\"{:.1f}\"/><text class=\"readout\" x=\"{:.1f}\" y=\"18\" text-anchor=\"end\"></text>",
      kTop, kHeight - kBottom, kWidth - kRight);
  return out + "</svg>";
}

}  // namespace shoal::cli
