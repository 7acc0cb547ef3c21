// The run report in a real browser: headless Chromium loads the page of a synthetic run without
// a single console message (errors, uncaught exceptions, blocked loads), the report's script runs
// (it marks <body data-charts=N>), every chart is in the DOM after loading and pointing at one
// shows its values. A copy of the page
// with a deliberate script error must fail the same check, so the check is known to bite. Skips
// when no Chromium is installed (scripts/install-deps installs Debian's `chromium`).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tests/cli/runs_fixture.h"

namespace shoal::test {
namespace {

// SHOAL_CHROMIUM, or the first of the usual names on PATH; "" when none.
std::string find_chromium() {
  if (const char* env = std::getenv("SHOAL_CHROMIUM"); env && *env) return env;
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    std::string cmd = std::string("command -v ") + name + " 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) continue;
    char buf[512];
    std::string out;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    if (pclose(p) == 0 && !out.empty()) return out.substr(0, out.find('\n'));
  }
  return "";
}

std::string read(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Loaded {
  int code = -1;
  std::string dom, console;  // the DOM after loading; the console lines of the browser's log
};

// Loads the page in headless Chromium (as root it needs --no-sandbox) and dumps the DOM after the
// load event; console messages appear in the log (--enable-logging=stderr) as "...:CONSOLE...".
Loaded load(const std::string& chromium, const fs::path& page, const fs::path& work) {
  fs::path dom = work / (page.stem().string() + ".dom"),
           log = work / (page.stem().string() + ".log");
  std::string cmd = "timeout 20 " + chromium +
                    " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                    "--no-first-run --disable-extensions --enable-logging=stderr --v=0 "
                    "--user-data-dir=" +
                    (work / "profile").string() + " --dump-dom 'file://" + page.string() + "' > " +
                    dom.string() + " 2> " + log.string();
  Loaded out;
  int status = std::system(cmd.c_str());
  out.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  out.dom = read(dom);
  std::istringstream lines(read(log));
  for (std::string line; std::getline(lines, line);)
    if (line.find(":CONSOLE") != std::string::npos) out.console += line + "\n";
  return out;
}

TEST(ReportBrowser, LoadsWithoutConsoleErrorsAndDrawsEveryChart) {
  std::string chromium = find_chromium();
  if (chromium.empty()) GTEST_SKIP() << "chromium is not installed (apt-get install chromium)";
  fs::path dir = fs::temp_directory_path() / ("shoal-report-browser-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  write_synthetic_run(dir / "runs", "r1");
  fs::path page = dir / "report.html";
  ShoalResult r =
      run_shoal("runs report r1 --dir " + (dir / "runs").string() + " --out " + page.string());
  ASSERT_EQ(r.code, 0) << r.out;

  Loaded good = load(chromium, page, dir);
  ASSERT_EQ(good.code, 0) << "chromium failed; its log is in " << dir;
  EXPECT_EQ(good.console, "") << "the report wrote to the console";
  EXPECT_EQ(count_of(good.dom, "<svg class=\"chart"), SyntheticRun::kCharts);
  EXPECT_NE(good.dom.find("<body data-charts=\"" + std::to_string(SyntheticRun::kCharts) + "\""),
            std::string::npos)
      << "the report's script did not run to the end";

  // Pointing at the middle of the reward chart shows the values there.
  std::string html = read(page);
  std::string hover = html;
  hover.insert(hover.rfind("</body>"),
               "<script>var c = document.getElementById('reward'), b = c.getBoundingClientRect();"
               "c.dispatchEvent(new MouseEvent('mousemove', {clientX: b.left + b.width / 2, "
               "clientY: b.top + b.height / 2}));</script>");
  fs::path hover_page = dir / "hover.html";
  std::ofstream(hover_page) << hover;
  Loaded pointed = load(chromium, hover_page, dir);
  EXPECT_EQ(pointed.console, "");
  EXPECT_NE(pointed.dom.find("<text class=\"readout\" x=\"506.0\" y=\"18\" "
                             "text-anchor=\"end\">step "),
            std::string::npos)
      << "no read-out under the pointer";
  EXPECT_NE(pointed.dom.find(": reward 0."), std::string::npos) << "the read-out names the series";

  // The same check on a page with a script error must fail.
  html.insert(html.rfind("</body>"), "<script>no_such_function();</script>");
  fs::path broken = dir / "broken.html";
  std::ofstream(broken) << html;
  Loaded bad = load(chromium, broken, dir);
  ASSERT_EQ(bad.code, 0);
  EXPECT_NE(bad.console.find("no_such_function is not defined"), std::string::npos)
      << "a deliberate script error went unnoticed; console lines:\n"
      << bad.console;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shoal::test
