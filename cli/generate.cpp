// shoal generate: one completion from a checkpoint through the scheduler and the latent KV cache,
// greedy or sampled, streamed to stdout as it is produced (text with a tokenizer in the model
// directory, else ids), or printed once as JSON with ids and log-probs. Not a server.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "engine/device.h"
#include "engine/generate/scheduler.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::cli {

Run add_generate(CLI::App& app) {
  struct Opts {
    std::string model, prompt, messages, prompt_ids, stop_ids, device = "cpu", precision = "bf16";
    std::vector<std::string> stops;
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
  app.add_option("--device", o->device, kDeviceHelp)->capture_default_str();
  app.add_option("--precision", o->precision, kPrecisionHelp)->capture_default_str();
  app.add_flag("--greedy", o->p.greedy, "argmax decoding");
  app.add_option("--temperature", o->p.temperature)->capture_default_str();
  app.add_option("--top-k", o->p.top_k, "0 = off")->capture_default_str();
  app.add_option("--top-p", o->p.top_p, "1 = off")->capture_default_str();
  app.add_option("--min-p", o->p.min_p, "0 = off")->capture_default_str();
  app.add_option("--seed", o->p.seed)->capture_default_str();
  app.add_option("--max-tokens", o->p.max_tokens)->capture_default_str();
  app.add_option("--stop-ids", o->stop_ids, "comma-separated token ids that end the completion");
  app.add_option("--stop", o->stops, "a string that ends the completion (not printed; repeatable)");
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
    SHOAL_CHECK(o->stops.empty() || tok.has_value(),
                "{} has no tokenizer.json: --stop needs one (use --stop-ids)", o->model);
    std::unique_ptr<Backend> backend = open_backend(o->device, o->precision);
    auto model = Model::from_pretrained(o->model, *backend);
    SchedulerConfig sc;
    sc.max_sequences = 1;
    sc.max_batch_tokens = 512;
    sc.cache.page_tokens = 16;
    sc.cache.pages = (int64_t(prompt.size()) + o->p.max_tokens + 15) / 16 + 1;
    if (tok) sc.detokenize = [&](std::span<const int32_t> ids) { return tok->decode(ids); };
    Scheduler sched(*model, sc);
    GenerationRequest req;
    req.prompt = prompt;
    req.sampling = o->p;
    req.stop_strings = o->stops;
    auto handle = sched.submit(req);
    sched.start();
    // Stream: ids as they come, or text once it is complete UTF-8 and cannot be the start of a
    // stop string (the stop string itself is never printed).
    size_t hold = 0;
    for (auto& st : o->stops) hold = std::max(hold, st.size() - 1);
    std::vector<int32_t> ids;
    std::string printed;
    TokenRecord t;
    while (handle->next(0, t)) {
      ids.push_back(t.id);
      if (o->json) continue;
      if (!tok) {
        std::printf("%s%d", ids.size() > 1 ? " " : "", t.id);
      } else {
        std::string text = tok->decode_bytes(ids);
        size_t safe = text.size() > hold ? text.size() - hold : 0;
        for (auto& st : o->stops) safe = std::min(safe, text.find(st));
        // Do not cut a UTF-8 character: back off to its lead byte unless it is complete.
        size_t lead = safe;
        while (lead > printed.size() && (text[lead - 1] & 0xC0) == 0x80) --lead;
        if (lead > printed.size() && (text[lead - 1] & 0x80)) {
          unsigned char c = static_cast<unsigned char>(text[lead - 1]);
          size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
          if (lead - 1 + need > safe) safe = lead - 1;
        }
        if (safe > printed.size()) {
          std::fwrite(text.data() + printed.size(), 1, safe - printed.size(), stdout);
          printed.assign(text, 0, safe);
        }
      }
      std::fflush(stdout);
    }
    Completion g = handle->wait()[0];
    sched.stop();
    SHOAL_CHECK(g.finish != FinishReason::error, "{}", g.error);
    if (o->json) {
      nlohmann::json j = {{"ids", g.ids()}, {"logprobs", g.logprobs()}};
      if (tok) j["text"] = g.text;
      std::printf("%s\n", j.dump().c_str());
    } else {
      if (tok && g.text.size() > printed.size() && g.text.compare(0, printed.size(), printed) == 0)
        std::fwrite(g.text.data() + printed.size(), 1, g.text.size() - printed.size(), stdout);
      std::printf("\n");
    }
    return 0;
  };
}

}  // namespace shoal::cli
