// `shoal tool` as a user runs it: list prints the OpenAI tool array; run starts a private local
// server when no endpoint is given and prints one JSON reply, exit 0 only when its status is ok.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/cli/cli_runner.h"

namespace {

using shoal::test::run_shoal;
using shoal::test::ShoalResult;

TEST(SandboxToolCli, ListAndRun) {
  ShoalResult list = run_shoal("tool list", false);
  ASSERT_EQ(list.code, 0);
  auto tools = nlohmann::json::parse(list.out);
  ASSERT_TRUE(tools.is_array());
  EXPECT_EQ(tools[0]["function"]["name"], "python");

  ShoalResult ok = run_shoal("tool run python '{\"code\": \"print(2**100)\"}'", false);
  EXPECT_EQ(ok.code, 0) << ok.out;
  auto reply = nlohmann::json::parse(ok.out);
  EXPECT_EQ(reply["stdout"], "1267650600228229401496703205376\n");

  ShoalResult calc = run_shoal("tool run calculator '{\"expression\": \"1/3 + 1/6\"}'", false);
  EXPECT_EQ(nlohmann::json::parse(calc.out)["result"]["value"], "1/2");

  ShoalResult bad = run_shoal("tool run nope '{}'", false);
  EXPECT_EQ(bad.code, 1);
  EXPECT_EQ(nlohmann::json::parse(bad.out)["error"]["kind"], "unknown_tool");
  ShoalResult not_json = run_shoal("tool run python 'not json'", false);
  EXPECT_EQ(not_json.code, 1);
  ShoalResult usage = run_shoal("tool run", false);
  EXPECT_EQ(usage.code, 2);
}

}  // namespace
