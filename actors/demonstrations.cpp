// Demonstration variants (demonstrations.h).
#include "actors/demonstrations.h"

#include <string>

namespace shoal::actors {

using json = nlohmann::json;

tasks::Episode final_answer_only(const tasks::Episode& demo) {
  for (auto it = demo.messages.rbegin(); it != demo.messages.rend(); ++it) {
    const json& m = *it;
    if (m.value("role", "") == "assistant" && !m.contains("tool_calls")) {
      tasks::Episode out;
      out.messages.push_back(m);
      return out;
    }
  }
  return demo;
}

tasks::Episode without_answer_line(const tasks::Episode& demo) {
  const std::string* text = tasks::final_message_text(demo);
  if (!text) return demo;
  std::string kept;
  size_t pos = 0;
  while (pos < text->size()) {
    size_t nl = text->find('\n', pos);
    std::string line = text->substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    size_t b = line.find_first_not_of(" \t*`_");
    if (b == std::string::npos || line.compare(b, 7, "ANSWER:") != 0)
      kept += line + (nl == std::string::npos ? "" : "\n");
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  while (!kept.empty() && (kept.back() == '\n' || kept.back() == ' ')) kept.pop_back();
  if (kept.empty()) return demo;
  tasks::Episode out = demo;
  out.messages.back()["content"] = kept;
  return out;
}

}  // namespace shoal::actors
