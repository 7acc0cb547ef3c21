// Demonstration variants for SFT data that model an imperfect teacher (run config keys
// `tool_free_demos` and `unformatted_demos`, docs/TRAIN.md): the quickstart uses them so that the
// fine-tuned model has a habit GRPO can measurably unlearn. Pure functions over episodes.
#pragma once

#include "tasks/task.h"

namespace shoal::actors {

// The final answer alone, as from a teacher that needs no tools: the last assistant message
// without tool calls; tool calls and their outputs left out. Unchanged when there is none.
tasks::Episode final_answer_only(const tasks::Episode& demo);

// The final message without its "ANSWER: ..." lines (and the blank space they leave at the end),
// as from a teacher that does not follow the answer format. Unchanged when the episode does not
// end in an assistant message with text, or when nothing but the answer line would remain.
tasks::Episode without_answer_line(const tasks::Episode& demo);

}  // namespace shoal::actors
