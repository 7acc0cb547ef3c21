// `shoal tool` as a user runs it: list prints the OpenAI tool array; run starts a private local
// server when no endpoint is given and prints one JSON reply, exit 0 only when its status is ok.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace {

struct Result {
  int code = -1;
  std::string out;
};

Result shoal(const std::string& args) {
  std::string cmd = std::string(SHOAL_BINARY) + " " + args + " 2>/dev/null";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(SandboxToolCli, ListAndRun) {
  Result list = shoal("tool list");
  ASSERT_EQ(list.code, 0);
  auto tools = nlohmann::json::parse(list.out);
  ASSERT_TRUE(tools.is_array());
  EXPECT_EQ(tools[0]["function"]["name"], "python");

  Result ok = shoal("tool run python '{\"code\": \"print(2**100)\"}'");
  EXPECT_EQ(ok.code, 0) << ok.out;
  auto reply = nlohmann::json::parse(ok.out);
  EXPECT_EQ(reply["stdout"], "1267650600228229401496703205376\n");

  Result calc = shoal("tool run calculator '{\"expression\": \"1/3 + 1/6\"}'");
  EXPECT_EQ(nlohmann::json::parse(calc.out)["result"]["value"], "1/2");

  Result bad = shoal("tool run nope '{}'");
  EXPECT_EQ(bad.code, 1);
  EXPECT_EQ(nlohmann::json::parse(bad.out)["error"]["kind"], "unknown_tool");
  Result not_json = shoal("tool run python 'not json'");
  EXPECT_EQ(not_json.code, 1);
  Result usage = shoal("tool run");
  EXPECT_EQ(usage.code, 2);
}

}  // namespace
