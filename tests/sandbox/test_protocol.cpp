// The sandbox's pure parts, without a server: request parsing, limits, argument checks against the
// tool schemas, the test-report parser, the exact calculator, and the files tool on a plain
// directory (escapes refused by the kernel's openat2).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "sandbox/calculator.h"
#include "sandbox/files.h"
#include "sandbox/protocol.h"
#include "sandbox/tools.h"

namespace shoal::sandbox {
namespace {

TEST(SandboxProtocol, ParsesRequestsAndNamesBadFields) {
  Request r = parse_request(
      R"({"id": "r1", "session": "s", "tool": "python", "arguments": {"code": "1"},
          "limits": {"wall_ms": 100}, "mode": "fresh", "timeout_ms": 5})");
  EXPECT_EQ(r.id, "r1");
  EXPECT_EQ(r.session, "s");
  EXPECT_EQ(r.mode, Mode::fresh);
  EXPECT_EQ(r.timeout_ms, 5);
  Request back = parse_request(to_json(r).dump());
  EXPECT_EQ(back.arguments, r.arguments);
  EXPECT_EQ(back.limits, r.limits);
  auto kind_of = [](const std::string& s) {
    try {
      parse_request(s);
    } catch (const RequestError& e) {
      return e.kind + ": " + e.message;
    }
    return std::string("accepted");
  };
  EXPECT_EQ(kind_of("{"), "bad_request: request is not valid JSON");
  EXPECT_EQ(kind_of(R"({"tool": 3})"), "bad_request: 'tool' must be a string");
  EXPECT_EQ(kind_of(R"({"tool": "x", "arguments": []})"),
            "invalid_arguments: 'arguments' must be an object, got array");
  EXPECT_NE(kind_of(R"({"tool": "x", "session": "a/b"})").find("session"), std::string::npos);
}

TEST(SandboxProtocol, LimitsApplyAndClamp) {
  Limits max;
  max.wall_ms = 1000;
  Limits l = clamp(apply_limits_json({{"wall_ms", 5000}, {"pids", 3}}, Limits{}), max);
  EXPECT_EQ(l.wall_ms, 1000);
  EXPECT_EQ(l.pids, 3);
  EXPECT_THROW(apply_limits_json({{"wall_ms", -1}}, Limits{}), shoal::Error);
  EXPECT_THROW(apply_limits_json({{"walltime", 1}}, Limits{}), shoal::Error);
}

TEST(SandboxTools, ArgumentsAreCheckedAgainstTheSchema) {
  EXPECT_EQ(check_arguments("python", {{"code", "1"}}), "");
  EXPECT_NE(check_arguments("python", json::object()).find("missing required argument 'code'"),
            std::string::npos);
  EXPECT_NE(check_arguments("files", {{"action", "burn"}}).find("must be one of"),
            std::string::npos);
  EXPECT_NE(check_arguments("run_tests", {{"files", {{"a.py", 3}}}}).find("map names to strings"),
            std::string::npos);
  EXPECT_FALSE(is_known_tool("rm"));
}

TEST(SandboxTools, ParsesUnittestAndPytestReports) {
  json u = parse_test_report(
      "test_a (m.T.test_a) ... ok\ntest_b (m.T.test_b) ... FAIL\ntest_c (m.T.test_c) ... "
      "skipped 'no'\n");
  EXPECT_EQ(u["passed"], 1);
  EXPECT_EQ(u["failed"], 1);
  EXPECT_EQ(u["skipped"], 1);
  EXPECT_EQ(u["tests"][0]["name"], "m.T.test_a");
  json p = parse_test_report("t.py::test_x PASSED [ 50%]\nt.py::test_y ERROR [100%]\n");
  EXPECT_EQ(p["passed"], 1);
  EXPECT_EQ(p["errors"], 1);
}

TEST(SandboxCalculator, ExactArithmetic) {
  auto v = [](const std::string& e) { return calculate(e)["value"].get<std::string>(); };
  EXPECT_EQ(v("1 + 2 * 3"), "7");
  EXPECT_EQ(v("2^10"), "1024");
  EXPECT_EQ(v("2**3**2"), "512");  // right-associative
  EXPECT_EQ(v("-2^2"), "-4");
  EXPECT_EQ(v("0.1 + 0.2"), "3/10");
  EXPECT_EQ(v("1e-3"), "1/1000");
  EXPECT_EQ(v("7 // 2"), "3");
  EXPECT_EQ(v("-7 // 2"), "-4");
  EXPECT_EQ(v("-7 % 3"), "2");
  EXPECT_EQ(v("20!"), "2432902008176640000");
  EXPECT_EQ(v("comb(50, 25)"), "126410606437752");
  EXPECT_EQ(v("gcd(12, 18, 27)"), "3");
  EXPECT_EQ(v("pow(2, 100, 1000000007)"), "976371285");
  EXPECT_EQ(v("sqrt(9/16)"), "3/4");
  EXPECT_EQ(v("2^-2"), "1/4");
  EXPECT_EQ(v("round(5/2)"), "3");
  EXPECT_EQ(calculate("1/3")["decimal"], "0.3333333333333333333333333333333333333333");
  EXPECT_EQ(v("2^200").size(), 61u);
  for (const char* bad :
       {"1/0", "2^(1/2)", "sqrt(2)", "10^10^10", "100000!", "(1", "1 +", "foo(1)", "1 $ 2"}) {
    EXPECT_THROW(calculate(bad), ToolError) << bad;
  }
  std::string deep(300, '(');
  EXPECT_THROW(calculate(deep + "1" + std::string(300, ')')), ToolError);
}

TEST(SandboxFiles, StaysInsideTheWorkspace) {
  namespace fs = std::filesystem;
  fs::path root = fs::temp_directory_path() / ("shoal_files_" + std::to_string(getpid()));
  fs::path outside = fs::temp_directory_path() / ("shoal_files_out_" + std::to_string(getpid()));
  fs::create_directories(root);
  std::ofstream(outside) << "secret";
  fs::create_symlink(outside, root / "abs");
  fs::create_symlink("../" + outside.filename().string(), root / "rel");
  fs::create_directories(root / "d");
  fs::create_symlink("inner.txt", root / "d" / "in");
  uid_t me = getuid();
  const size_t kMax = 1 << 20;
  json w = files_action(root, me, {{"action", "write"}, {"path", "d/inner.txt"}, {"content", "ok"}},
                        kMax, kMax);
  EXPECT_EQ(w["written"], 2);
  // A symlink that stays inside is followed.
  EXPECT_EQ(files_action(root, me, {{"action", "read"}, {"path", "d/in"}}, kMax, kMax)["content"],
            "ok");
  for (const char* p : {"abs", "rel", "../x", "/etc/passwd", "d/../../x"}) {
    EXPECT_THROW(files_action(root, me, {{"action", "read"}, {"path", p}}, kMax, kMax), ToolError)
        << p;
    EXPECT_THROW(
        files_action(root, me, {{"action", "write"}, {"path", p}, {"content", "x"}}, kMax, kMax),
        ToolError)
        << p;
  }
  std::ifstream in(outside);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "secret");
  EXPECT_THROW(
      files_action(root, me, {{"action", "write"}, {"path", "big"}, {"content", "12345"}}, kMax, 4),
      ToolError);
  json r = files_action(root, me, {{"action", "read"}, {"path", "d/inner.txt"}}, 1, kMax);
  EXPECT_EQ(r["content"], "o");
  EXPECT_EQ(r["truncated"], true);
  fs::remove_all(root);
  fs::remove(outside);
}

}  // namespace
}  // namespace shoal::sandbox
