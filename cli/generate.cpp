// shoal generate: completions from a checkpoint through the latent KV cache, greedy or sampled,
// as text (when the model directory has a tokenizer) or JSON with ids and log-probs.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "engine/generate/generate.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::cli {

Run add_generate(CLI::App& app) {
  struct Opts {
    std::string model, prompt, messages, prompt_ids, stop_ids;
    SamplingParams p;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  auto* prompt = app.add_option("--prompt", o->prompt, "prompt text (needs DIR/tokenizer.json)");
  auto* messages = app.add_option("--messages", o->messages,
                                  "JSON file with OpenAI-form messages (chat format; needs a "
                                  "tokenizer)")
                       ->check(CLI::ExistingFile);
  auto* ids = app.add_option("--prompt-ids", o->prompt_ids, "comma-separated prompt token ids");
  prompt->excludes(messages)->excludes(ids);
  messages->excludes(ids);
  app.add_flag("--greedy", o->p.greedy, "argmax decoding");
  app.add_option("--temperature", o->p.temperature)->capture_default_str();
  app.add_option("--top-k", o->p.top_k, "0 = off")->capture_default_str();
  app.add_option("--top-p", o->p.top_p, "1 = off")->capture_default_str();
  app.add_option("--min-p", o->p.min_p, "0 = off")->capture_default_str();
  app.add_option("--seed", o->p.seed)->capture_default_str();
  app.add_option("--max-tokens", o->p.max_tokens)->capture_default_str();
  app.add_option("--stop-ids", o->stop_ids, "comma-separated token ids that end the completion");
  app.add_flag("--json", o->json, R"(print {"ids": [...], "logprobs": [...], "text": ...})");
  return [o]() {
    namespace fs = std::filesystem;
    auto parse_ids = [](const std::string& s, const char* what) {
      std::vector<int32_t> out;
      std::stringstream ss(s);
      std::string item;
      while (std::getline(ss, item, ',')) {
        try {
          size_t used = 0;
          long v = std::stol(item, &used);
          SHOAL_CHECK(used == item.size(), "{}: '{}' is not an integer", what, item);
          out.push_back(int32_t(v));
        } catch (const std::logic_error&) {
          SHOAL_FAIL("{}: '{}' is not an integer", what, item);
        }
      }
      return out;
    };
    SHOAL_CHECK(!o->prompt.empty() || !o->messages.empty() || !o->prompt_ids.empty(),
                "give --prompt, --messages or --prompt-ids");
    std::optional<Tokenizer> tok;
    if (fs::exists(fs::path(o->model) / "tokenizer.json")) tok = Tokenizer::load(o->model);
    std::vector<int32_t> prompt;
    if (!o->prompt_ids.empty()) {
      prompt = parse_ids(o->prompt_ids, "--prompt-ids");
    } else {
      SHOAL_CHECK(tok.has_value(), "{} has no tokenizer.json: use --prompt-ids", o->model);
      if (!o->prompt.empty()) {
        prompt = tok->encode(o->prompt);
      } else {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(std::ifstream(o->messages));
        } catch (const nlohmann::json::exception& e) {
          SHOAL_FAIL("{}: invalid JSON: {}", o->messages, e.what());
        }
        ChatRenderOptions ro;
        ro.add_generation_prompt = true;
        prompt = render_chat_tokens(*tok, chat_messages_from_json(j), ro).ids;
      }
    }
    if (!o->stop_ids.empty()) o->p.stop_ids = parse_ids(o->stop_ids, "--stop-ids");
    if (tok && o->p.stop_ids.empty() && tok->eos_id()) o->p.stop_ids = {*tok->eos_id()};
    auto model = Model::from_pretrained(o->model, cpu_backend());
    Generation g = generate(*model, {prompt}, o->p)[0];
    std::string text = tok ? tok->decode(g.ids) : "";
    if (o->json) {
      nlohmann::json j = {{"ids", g.ids}, {"logprobs", g.logprobs}};
      if (tok) j["text"] = text;
      std::printf("%s\n", j.dump().c_str());
    } else if (tok) {
      std::printf("%s\n", text.c_str());
    } else {
      for (size_t i = 0; i < g.ids.size(); ++i) std::printf("%s%d", i ? " " : "", g.ids[i]);
      std::printf("\n");
    }
    return 0;
  };
}

}  // namespace shoal::cli
