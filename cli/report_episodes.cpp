// The run report's episodes (report_sections.h): per-stage statistics and sample conversations —
// each message with its role, assistant tool calls with their arguments, tool outputs, and the
// episode's reward, components and reason; everything the model or a tool wrote is HTML-escaped.
// Not the selection of samples (run_view.h).
#include <fmt/format.h>

#include "cli/report_sections.h"
#include "cli/svg_chart.h"

namespace shoal::cli {
namespace {

using nlohmann::json;

constexpr size_t kMaxChars = 6000;  // per message body; longer ones are cut with a note

std::string clipped(const std::string& text) {
  if (text.size() <= kMaxChars) return html_escape(text);
  return html_escape(text.substr(0, kMaxChars)) +
         fmt::format("<span class=\"note\">… {} more characters</span>", text.size() - kMaxChars);
}

// Message content as text: a string, OpenAI content parts ({"type":"text","text"}), or JSON.
std::string content_text(const json& content) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    std::string out;
    for (const auto& part : content)
      out += part.is_object() && part.contains("text") && part["text"].is_string()
                 ? part["text"].get<std::string>()
                 : part.dump();
    return out;
  }
  return content.dump();
}

// Arguments are a JSON string in OpenAI form; show them as compact JSON when they parse.
std::string arguments_text(const json& args) {
  if (!args.is_string()) return args.dump();
  json parsed = json::parse(args.get<std::string>(), nullptr, false);
  return parsed.is_discarded() ? args.get<std::string>() : parsed.dump();
}

std::string message_html(const json& m) {
  if (!m.is_object()) return "<div class=\"msg\"><pre>" + clipped(m.dump()) + "</pre></div>";
  std::string role =
      m.contains("role") && m["role"].is_string() ? m["role"].get<std::string>() : "?";
  std::string text = m.contains("content") ? content_text(m["content"]) : "";
  std::string out =
      fmt::format("<div class=\"msg role-{0}\"><div class=\"role\">{0}", html_escape(role));
  if (m.contains("tool_call_id") && m["tool_call_id"].is_string())
    out += " <span class=\"note\">" + html_escape(m["tool_call_id"].get<std::string>()) + "</span>";
  out += "</div>";
  if (role == "system" && text.size() > 300) {
    out += "<details><summary>system prompt (" + std::to_string(text.size()) +
           " characters)</summary><pre>" + clipped(text) + "</pre></details>";
  } else if (!text.empty()) {
    out += "<pre>" + clipped(text) + "</pre>";
  }
  if (m.contains("tool_calls") && m["tool_calls"].is_array())
    for (const auto& c : m["tool_calls"]) {
      const json& fn = c.is_object() && c.contains("function") ? c["function"] : c;
      std::string name = fn.is_object() && fn.contains("name") && fn["name"].is_string()
                             ? fn["name"].get<std::string>()
                             : "?";
      std::string args =
          fn.is_object() && fn.contains("arguments") ? arguments_text(fn["arguments"]) : "";
      out += "<div class=\"call\">→ <b>" + html_escape(name) + "</b>(<code>" + clipped(args) +
             "</code>)</div>";
    }
  return out + "</div>";
}

std::string components_text(const json& components) {
  if (!components.is_object() || components.empty()) return "";
  std::string out;
  for (const auto& [k, v] : components.items())
    out += (out.empty() ? "" : ", ") + k + " " +
           (v.is_number() ? compact_number(v.get<double>()) : v.dump());
  return out;
}

std::string episode_html(const actors::EpisodeSummary& e) {
  std::string out = fmt::format(
      "<details class=\"episode\"><summary><b>{}</b> · {} d{} · reward <b>{}</b> · {} · step {} · "
      "{} turns, {} tool calls{} · {} tokens ({} generated)</summary>",
      html_escape(e.task_id), html_escape(e.family), e.difficulty, compact_number(e.reward),
      html_escape(e.status), e.gstep, e.turns, e.tool_calls,
      e.invalid_tool_calls ? fmt::format(" ({} invalid)", e.invalid_tool_calls) : "", e.tokens,
      e.generated_tokens);
  out += "<p class=\"verdict\">reward " + compact_number(e.reward);
  std::string comps = components_text(e.components);
  if (!comps.empty()) out += " (" + html_escape(comps) + ")";
  if (!e.reason.empty()) out += ": " + html_escape(e.reason);
  out += "</p>";
  if (e.messages.is_array()) {
    for (const auto& m : e.messages) out += message_html(m);
  } else {
    out += "<p class=\"note\">messages are not a JSON array</p>";
  }
  return out + "</details>";
}

}  // namespace

std::string report_episodes(actors::RunStore& store, int per_stage) {
  auto stages = store.stage_episodes();
  if (stages.empty()) return "<p class=\"empty\">No episodes recorded yet.</p>";
  std::string out =
      "<table><tr><th>stage</th><th>episodes</th><th>mean reward</th><th>turns</th><th>tool "
      "calls</th><th>invalid calls</th><th>not ok</th><th>tokens</th></tr>";
  for (const auto& s : stages)
    out += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td></tr>",
        html_escape(s.stage), s.count, compact_number(s.mean_reward), compact_number(s.mean_turns),
        compact_number(s.mean_tool_calls), s.invalid_tool_calls, s.not_ok,
        compact_number(s.mean_tokens));
  out +=
      "</table><p class=\"note\">Means per episode; \"not ok\": truncated, turn limit or "
      "failed. Samples: the best, the worst and ones between, from each stage's last step.</p>";
  for (const auto& s : stages) {
    out += "<h3>" + html_escape(s.stage) + "</h3>";
    for (const auto& e : sample_episodes(store, s.stage, per_stage)) out += episode_html(e);
  }
  return out;
}

}  // namespace shoal::cli
