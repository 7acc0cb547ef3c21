// The shoal binary as a user runs it: usage errors exit 2 with a usage message, check-model passes
// on the goldens and fails with one clear message on bad checkpoints, pretrain refuses to
// overwrite.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/cli/cli_runner.h"

namespace {

using shoal::test::run_shoal;
using shoal::test::ShoalResult;

namespace fs = std::filesystem;

std::string data(const std::string& rel) {
  return std::string(SHOAL_TEST_DATA) + "/" + rel;
}

fs::path temp_copy_of(const std::string& model, const std::string& tag) {
  fs::path dst = fs::temp_directory_path() / ("shoal_cli_" + tag + "_" + std::to_string(getpid()));
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (auto* f : {"config.json", "model.safetensors"})
    fs::copy_file(data(model) + "/" + f, dst / f);
  return dst;
}

TEST(Cli, NoSubcommandIsAUsageError) {
  ShoalResult r = run_shoal("");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--help"), std::string::npos) << r.out;
}

TEST(Cli, UnknownSubcommandIsAUsageError) {
  ShoalResult r = run_shoal("frobnicate");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("unknown subcommand 'frobnicate'"), std::string::npos) << r.out;
}

TEST(Cli, BadFlagIsAUsageError) {
  EXPECT_EQ(run_shoal("check-model --no-such-flag").code, 2);
  EXPECT_EQ(run_shoal("check-model --model /nonexistent --reference /nonexistent").code, 2);
  EXPECT_EQ(run_shoal("pretrain --steps notanumber").code, 2);
}

TEST(Cli, HelpAndVersionExitZero) {
  ShoalResult r = run_shoal("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("check-model"), std::string::npos);
  EXPECT_NE(r.out.find("pretrain"), std::string::npos);
  EXPECT_EQ(run_shoal("--version").code, 0);
}

TEST(Cli, CheckModelPassesOnGolden) {
  ShoalResult r = run_shoal("check-model --model " + data("tiny_v3") + " --reference " +
                            data("tiny_v3/reference.safetensors") + " --grads " +
                            data("tiny_v3/grads.safetensors"));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("PASS: logits, loss and 45 gradients"), std::string::npos) << r.out;
}

TEST(Cli, CheckModelFailsOutsideTolerance) {
  // An absurdly tight tolerance must fail: the exit code follows the comparison.
  ShoalResult r = run_shoal("check-model --model " + data("tiny_v3") + " --reference " +
                            data("tiny_v3/reference.safetensors") + " --logits-tol 1e-12");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("FAIL"), std::string::npos) << r.out;
}

TEST(Cli, CheckModelOnTruncatedCheckpointNamesTheFile) {
  fs::path dir = temp_copy_of("tiny_v3", "trunc");
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") / 2);
  ShoalResult r = run_shoal("check-model --model " + dir.string() + " --reference " +
                            data("tiny_v3/reference.safetensors"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("model.safetensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("error:"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(Cli, CheckModelOnWrongConfigNamesTheTensor) {
  fs::path dir = temp_copy_of("tiny_v3", "shape");
  std::string cfg;
  {
    std::ifstream f(dir / "config.json");
    cfg.assign(std::istreambuf_iterator<char>(f), {});
  }
  auto pos = cfg.find("\"kv_lora_rank\": 16");
  ASSERT_NE(pos, std::string::npos);
  cfg.replace(pos, 18, "\"kv_lora_rank\": 12");
  std::ofstream(dir / "config.json") << cfg;
  ShoalResult r = run_shoal("check-model --model " + dir.string() + " --reference " +
                            data("tiny_v3/reference.safetensors"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("kv_a_"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shape"), std::string::npos) << r.out;

  cfg.replace(cfg.find("\"deepseek_v3\""), 13, "\"llama\"");
  std::ofstream(dir / "config.json") << cfg;
  r = run_shoal("check-model --model " + dir.string() + " --reference " +
                data("tiny_v3/reference.safetensors"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("unknown model_type 'llama'"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(Cli, GenerateGreedyJsonAndBadInput) {
  ShoalResult r = run_shoal("generate --model " + data("tiny_v3") +
                            " --prompt-ids 618 --greedy --max-tokens 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find(R"("ids":[140,404,472,246])"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("logprobs"), std::string::npos) << r.out;
  r = run_shoal("generate --model " + data("tiny_v3") + " --prompt-ids 5,x");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("'x' is not an integer"), std::string::npos) << r.out;
  r = run_shoal("generate --model " + data("tiny_v3") + " --prompt-ids 5 --temperature -1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("temperature"), std::string::npos) << r.out;
}

TEST(Cli, PretrainRefusesToOverwriteARun) {
  fs::path out = fs::temp_directory_path() / ("shoal_cli_run_" + std::to_string(getpid()));
  fs::remove_all(out);
  std::string args = "pretrain --task copy --steps 3 --batch 2 --log-every 1 --out " + out.string();
  ShoalResult r = run_shoal(args);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("step     3/3"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(out / "checkpoints/step_3/model.safetensors"));
  r = run_shoal(args);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--resume"), std::string::npos) << r.out;
  r = run_shoal(args + " --resume");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
  // Resuming with other options would silently change the run: refused, naming the option.
  r = run_shoal(args + " --resume --lr 0.5");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("lr"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("run.json"), std::string::npos) << r.out;
  fs::remove_all(out);
}

}  // namespace
