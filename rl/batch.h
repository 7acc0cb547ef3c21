// Batch assembly for training: token sequences with a loss mask (1 = produced by the model:
// assistant text and tool calls; 0 = prompts, system text, tool outputs) become one packed Batch
// whose attention never crosses a sequence boundary (cu_seqlens) and whose labels are -100 except
// where the *next* token is model-produced. Also a first-fit packer that splits many samples into
// batches under a token budget. Rendering conversations to ids is the chat format's job.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/model.h"
#include "engine/tokenizer/chat_format.h"

namespace shoal::rl {

struct Sample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> loss_mask;  // same length; 1 where the token was produced by the model
};

// A conversation (OpenAI-form messages) rendered with the DeepSeek chat format: the loss mask
// covers exactly the assistant turns as the model produces them (content, tool calls and the
// closing end-of-sentence), never prompts, system text or tool outputs.
Sample sample_from_chat(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages);

// Packs samples (in order) into one Batch. Errors on empty samples or mask length mismatches.
Batch pack(const std::vector<Sample>& samples);

// Splits samples into groups of at most max_tokens tokens each (first fit, in decreasing length,
// so long samples are placed first); returns sample indices per batch. A sample longer than
// max_tokens is an error naming it.
std::vector<std::vector<size_t>> plan_batches(const std::vector<Sample>& samples,
                                              int64_t max_tokens);

}  // namespace shoal::rl
