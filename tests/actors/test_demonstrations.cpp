// Demonstration variants (actors/demonstrations.h): what an imperfect teacher's demonstration
// keeps and loses, checked against the arithmetic family's verifier.
#include <gtest/gtest.h>

#include "actors/demonstrations.h"
#include "tasks/registry.h"

namespace shoal::actors {
namespace {

using json = nlohmann::json;

tasks::Episode sample_demo() {
  tasks::Episode e;
  e.messages = json::array(
      {{{"role", "assistant"},
        {"content", nullptr},
        {"tool_calls",
         json::array({{{"type", "function"},
                       {"function",
                        {{"name", "calculator"}, {"arguments", "{\"expression\": \"2+3\"}"}}}}})}},
       {{"role", "tool"}, {"tool_call_id", "call_0"}, {"content", "{\"value\": \"5\"}"}},
       {{"role", "assistant"}, {"content", "After 1 step the amount is exactly 5.\nANSWER: 5"}}});
  return e;
}

TEST(Demonstrations, FinalAnswerOnlyLeavesOutToolCallsAndOutputs) {
  tasks::Episode d = final_answer_only(sample_demo());
  ASSERT_EQ(d.messages.size(), 1u);
  EXPECT_EQ(d.messages[0]["content"], "After 1 step the amount is exactly 5.\nANSWER: 5");
  EXPECT_EQ(tasks::final_answer(d), "5");
  // An episode with no final text answer is left as it is.
  tasks::Episode calls_only = sample_demo();
  calls_only.messages.erase(calls_only.messages.end() - 1);
  calls_only.messages.erase(calls_only.messages.end() - 1);
  EXPECT_EQ(final_answer_only(calls_only).messages, calls_only.messages);
}

TEST(Demonstrations, WithoutAnswerLineDropsOnlyTheAnswerLine) {
  tasks::Episode d = without_answer_line(sample_demo());
  ASSERT_EQ(d.messages.size(), 3u);
  EXPECT_EQ(d.messages[0], sample_demo().messages[0]);
  EXPECT_EQ(d.messages[2]["content"], "After 1 step the amount is exactly 5.");
  EXPECT_FALSE(tasks::final_answer(d).has_value());
  // Emphasised markers go too; an answer line alone is kept (nothing else would remain).
  tasks::Episode e = sample_demo();
  e.messages.back()["content"] = "Done.\n**ANSWER:** 5\n";
  EXPECT_EQ(without_answer_line(e).messages.back()["content"], "Done.");
  e.messages.back()["content"] = "ANSWER: 5";
  EXPECT_EQ(without_answer_line(e).messages.back()["content"], "ANSWER: 5");
}

TEST(Demonstrations, TheVerifierRejectsTheVariantsOfARealDemonstration) {
  const tasks::Family& f = tasks::find_family("arithmetic");
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    tasks::Task t = f.generate(seed, 1);
    tasks::Episode demo = f.demonstrate(t, nullptr);
    ASSERT_TRUE(f.verify(t, demo, nullptr).solved()) << seed;
    tasks::Episode unformatted = without_answer_line(demo);
    EXPECT_FALSE(f.verify(t, unformatted, nullptr).solved()) << seed;
    EXPECT_NE(f.verify(t, unformatted, nullptr).reason.find("no final ANSWER line"),
              std::string::npos);
    // The tool-free variant keeps the right answer (the teacher knew it) without the calls.
    tasks::Episode tool_free = final_answer_only(demo);
    EXPECT_EQ(tool_free.messages.size(), 1u);
    EXPECT_TRUE(f.verify(t, tool_free, nullptr).solved()) << seed;
  }
}

}  // namespace
}  // namespace shoal::actors
