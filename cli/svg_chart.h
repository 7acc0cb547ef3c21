// Line and stacked-area charts as inline SVG text, for the run report (cli/report.h): nice axis
// ticks, gaps where a value is missing (NaN), an optional smoothed line over noisy series, stage
// boundaries as labelled vertical rules. The SVG carries its data-to-pixel mapping as data-*
// attributes so the report's small script can show values under the pointer. Not a plotting
// library: one chart shape, no interaction of its own.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace shoal::cli {

// Escapes &, <, >, " and ' for HTML and SVG text and attribute values.
std::string html_escape(std::string_view text);

struct ChartSeries {
  std::string name;
  std::vector<double> x, y;  // same length; y may be NaN (a gap)
};

struct ChartMarker {
  double x = 0;  // a vertical rule here (e.g. where a stage starts)
  std::string label;
};

struct ChartSpec {
  std::string id;     // the svg's id (and data-metric)
  std::string title;  // drawn above the plot
  std::vector<ChartSeries> series;
  std::vector<ChartMarker> markers;
  bool stacked = false;  // stacked areas (shares: values should sum to about 1 per x)
  bool smooth = false;   // a faint raw line plus an exponential moving average when long
  bool percent = false;  // y tick labels as percentages
  bool points = false;   // always mark each point (sparse series such as evals)
};

// The chart as one <svg class="chart ..."> element; a chart without any finite value says so
// inside the frame instead of drawing axes.
std::string svg_chart(const ChartSpec& spec);

// A compact number for tables and tick labels: 3 significant digits, k/M suffixes for large
// magnitudes, "—" for NaN.
std::string compact_number(double v);

}  // namespace shoal::cli
