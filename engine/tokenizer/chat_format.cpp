// The DeepSeek-V3 chat format (see chat_format.h for the format and the deviations from the shipped
// template). Rendering builds a list of pieces, each a marker or a text, so the text and the ids
// come from one walk over the messages.
#include "engine/tokenizer/chat_format.h"

#include "base/error.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal {
namespace {

namespace mk = chat_marker;

struct Piece {
  bool is_marker = false;
  bool assistant = false;  // part of an assistant turn (the SFT loss mask)
  std::string text;
};

class PieceList {
 public:
  void marker(std::string_view m, bool assistant) {
    pieces_.push_back(Piece{true, assistant, std::string(m)});
  }
  void text(std::string_view t, bool assistant) {
    if (!t.empty()) pieces_.push_back(Piece{false, assistant, std::string(t)});
  }
  const std::vector<Piece>& pieces() const { return pieces_; }

 private:
  std::vector<Piece> pieces_;
};

// [CONTENT][<｜tool▁calls▁begin｜>CALL("\n"CALL)*<｜tool▁calls▁end｜>]<｜end▁of▁sentence｜>
void add_assistant_turn(PieceList& out, const ChatMessage& message) {
  out.text(message.content, true);
  if (!message.tool_calls.empty()) {
    out.marker(mk::kToolCallsBegin, true);
    for (size_t i = 0; i < message.tool_calls.size(); ++i) {
      const ToolCall& call = message.tool_calls[i];
      if (i > 0) out.text("\n", true);
      out.marker(mk::kToolCallBegin, true);
      out.text(call.type, true);
      out.marker(mk::kToolSep, true);
      out.text(call.name + "\n```json\n" + call.arguments + "\n```", true);
      out.marker(mk::kToolCallEnd, true);
    }
    out.marker(mk::kToolCallsEnd, true);
  }
  out.marker(mk::kEos, true);
}

PieceList render_pieces(const std::vector<ChatMessage>& messages,
                        const ChatRenderOptions& options) {
  PieceList out;
  out.marker(mk::kBos, false);
  // Every system message goes first, wherever it stands, joined by a blank line (the template).
  std::string system;
  bool first_system = true;
  for (const ChatMessage& m : messages) {
    if (m.role != ChatRole::system) continue;
    if (!first_system) system += "\n\n";
    system += m.content;
    first_system = false;
  }
  out.text(system, false);

  bool in_tool_outputs = false;  // inside <｜tool▁outputs▁begin｜> ... not yet closed
  for (const ChatMessage& m : messages) {
    switch (m.role) {
      case ChatRole::system:
        break;
      case ChatRole::user:
        if (in_tool_outputs) out.marker(mk::kToolOutputsEnd, false);  // deviation 5
        in_tool_outputs = false;
        out.marker(mk::kUser, false);
        out.text(m.content, false);
        break;
      case ChatRole::assistant:
        // After tool outputs the turn follows <｜tool▁outputs▁end｜> with no <｜Assistant｜>
        // (the template, and the golden cases, for content; deviation 5 for tool calls).
        out.marker(in_tool_outputs ? mk::kToolOutputsEnd : mk::kAssistant, false);
        in_tool_outputs = false;
        add_assistant_turn(out, m);
        break;
      case ChatRole::tool:
        if (!in_tool_outputs) {
          out.marker(mk::kToolOutputsBegin, false);
        } else {
          out.text("\n", false);
        }
        out.marker(mk::kToolOutputBegin, false);
        out.text(m.content, false);
        out.marker(mk::kToolOutputEnd, false);
        in_tool_outputs = true;
        break;
    }
  }
  // Open tool outputs are closed whether or not a generation prompt is asked for (the template);
  // that closing is then the generation prompt.
  if (in_tool_outputs) {
    out.marker(mk::kToolOutputsEnd, false);
  } else if (options.add_generation_prompt) {
    out.marker(mk::kAssistant, false);
  }
  return out;
}

std::string concat(const PieceList& pieces) {
  std::string text;
  for (const Piece& p : pieces.pieces()) text += p.text;
  return text;
}

// content: a string, null, or an array of {"type":"text","text":...} parts.
std::string content_from_json(const nlohmann::json& message, const std::string& where,
                              bool null_ok) {
  auto it = message.find("content");
  SHOAL_CHECK(it != message.end() || null_ok, "{}: missing \"content\"", where);
  if (it == message.end() || it->is_null()) {
    SHOAL_CHECK(null_ok, "{}: \"content\" is null", where);
    return {};
  }
  if (it->is_string()) return it->get<std::string>();
  SHOAL_CHECK(it->is_array(), "{}: \"content\" must be a string, null or an array of text parts",
              where);
  std::string text;
  for (size_t i = 0; i < it->size(); ++i) {
    const nlohmann::json& part = (*it)[i];
    SHOAL_CHECK(part.is_object() && part.value("type", "") == "text" && part.contains("text") &&
                    part["text"].is_string(),
                "{}: content[{}] is not a {{\"type\": \"text\", \"text\": ...}} part", where, i);
    text += part["text"].get<std::string>();
  }
  return text;
}

ToolCall tool_call_from_json(const nlohmann::json& j, const std::string& where) {
  SHOAL_CHECK(j.is_object(), "{}: a tool call must be an object", where);
  ToolCall call;
  if (j.contains("type")) {
    SHOAL_CHECK(j["type"].is_string() && j["type"] == "function",
                "{}: \"type\" must be \"function\" (got {})", where, j["type"].dump());
  }
  auto fn = j.find("function");
  SHOAL_CHECK(fn != j.end() && fn->is_object(), "{}: missing \"function\" object", where);
  SHOAL_CHECK(fn->contains("name") && (*fn)["name"].is_string(),
              "{}: \"function.name\" must be a string", where);
  call.name = (*fn)["name"].get<std::string>();
  auto args = fn->find("arguments");
  SHOAL_CHECK(args != fn->end(), "{}: missing \"function.arguments\"", where);
  if (args->is_string()) {
    call.arguments = args->get<std::string>();
  } else {
    SHOAL_CHECK(args->is_object() || args->is_array(),
                "{}: \"function.arguments\" must be a JSON string (or an object)", where);
    call.arguments = args->dump();
  }
  return call;
}

ChatMessage message_from_json(const nlohmann::json& j, const std::string& where) {
  SHOAL_CHECK(j.is_object(), "{}: a message must be a JSON object", where);
  auto role = j.find("role");
  SHOAL_CHECK(role != j.end() && role->is_string(), "{}: missing \"role\" string", where);
  ChatMessage m;
  const std::string r = role->get<std::string>();
  if (r == "system") {
    m.role = ChatRole::system;
  } else if (r == "user") {
    m.role = ChatRole::user;
  } else if (r == "assistant") {
    m.role = ChatRole::assistant;
  } else if (r == "tool") {
    m.role = ChatRole::tool;
  } else {
    SHOAL_FAIL("{}: unknown role \"{}\" (system, user, assistant or tool)", where, r);
  }
  m.content = content_from_json(j, where, m.role == ChatRole::assistant);
  auto calls = j.find("tool_calls");
  if (calls != j.end() && !calls->is_null()) {
    SHOAL_CHECK(m.role == ChatRole::assistant, "{}: only assistant messages have \"tool_calls\"",
                where);
    SHOAL_CHECK(calls->is_array(), "{}: \"tool_calls\" must be an array", where);
    for (size_t i = 0; i < calls->size(); ++i)
      m.tool_calls.push_back(
          tool_call_from_json((*calls)[i], fmt::format("{}.tool_calls[{}]", where, i)));
  }
  if (m.role == ChatRole::tool) {
    auto id = j.find("tool_call_id");
    if (id != j.end() && id->is_string()) m.tool_call_id = id->get<std::string>();
  }
  return m;
}

}  // namespace

std::string_view chat_role_name(ChatRole role) {
  switch (role) {
    case ChatRole::system:
      return "system";
    case ChatRole::user:
      return "user";
    case ChatRole::assistant:
      return "assistant";
    case ChatRole::tool:
      return "tool";
  }
  return "?";
}

nlohmann::json ToolCall::arguments_json() const {
  nlohmann::json j = nlohmann::json::parse(arguments, nullptr, /*allow_exceptions=*/false);
  SHOAL_CHECK(!j.is_discarded(), "tool call '{}': arguments are not valid JSON: {}", name,
              arguments);
  return j;
}

ChatMessage chat_message_from_json(const nlohmann::json& message) {
  return message_from_json(message, "message");
}

std::vector<ChatMessage> chat_messages_from_json(const nlohmann::json& messages) {
  SHOAL_CHECK(messages.is_array(), "messages must be a JSON array (got {})", messages.type_name());
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i)
    out.push_back(message_from_json(messages[i], fmt::format("messages[{}]", i)));
  return out;
}

nlohmann::json chat_message_to_json(const ChatMessage& m) {
  nlohmann::json j;
  j["role"] = chat_role_name(m.role);
  if (m.role == ChatRole::assistant && !m.tool_calls.empty() && m.content.empty()) {
    j["content"] = nullptr;
  } else {
    j["content"] = m.content;
  }
  if (!m.tool_calls.empty()) {
    nlohmann::json calls = nlohmann::json::array();
    for (const ToolCall& c : m.tool_calls)
      calls.push_back(
          {{"type", c.type}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
    j["tool_calls"] = std::move(calls);
  }
  if (m.role == ChatRole::tool && !m.tool_call_id.empty()) j["tool_call_id"] = m.tool_call_id;
  return j;
}

nlohmann::json chat_messages_to_json(const std::vector<ChatMessage>& messages) {
  nlohmann::json j = nlohmann::json::array();
  for (const ChatMessage& m : messages) j.push_back(chat_message_to_json(m));
  return j;
}

std::string render_chat(const std::vector<ChatMessage>& messages,
                        const ChatRenderOptions& options) {
  return concat(render_pieces(messages, options));
}

std::string render_chat(const nlohmann::json& messages, const ChatRenderOptions& options) {
  return render_chat(chat_messages_from_json(messages), options);
}

std::string render_assistant_turn(const ChatMessage& message) {
  SHOAL_CHECK(message.role == ChatRole::assistant, "render_assistant_turn: a {} message",
              chat_role_name(message.role));
  PieceList out;
  add_assistant_turn(out, message);
  return concat(out);
}

ChatTokens render_chat_tokens(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                              const ChatRenderOptions& options) {
  ChatTokens out;
  const PieceList pieces = render_pieces(messages, options);
  for (const Piece& p : pieces.pieces()) {
    if (p.is_marker) {
      std::optional<int32_t> id = tokenizer.token_to_id(p.text);
      SHOAL_CHECK(id.has_value(),
                  "{}: the tokenizer has no token {} (not a DeepSeek-V3 chat "
                  "tokenizer?)",
                  tokenizer.path(), p.text);
      out.ids.push_back(*id);
    } else {
      tokenizer.encode_append(p.text, out.ids, SpecialText::plain);
    }
    out.assistant_mask.resize(out.ids.size(), p.assistant ? 1 : 0);
  }
  return out;
}

std::string render_tools_system_prompt(const nlohmann::json& tools) {
  SHOAL_CHECK(tools.is_array(), "tools must be a JSON array (got {})", tools.type_name());
  std::string out =
      "## Tools\n\nYou can call the functions below. To call them, end your turn with a tool-calls "
      "block; each call names one function and gives its arguments as a JSON object matching the "
      "function's parameters. The results come back as tool outputs.\n";
  for (size_t i = 0; i < tools.size(); ++i) {
    const nlohmann::json& t = tools[i];
    const std::string where = fmt::format("tools[{}]", i);
    SHOAL_CHECK(t.is_object(), "{}: must be an object", where);
    if (t.contains("type"))
      SHOAL_CHECK(t["type"] == "function", "{}: \"type\" must be \"function\"", where);
    SHOAL_CHECK(t.contains("function") && t["function"].is_object(),
                "{}: missing \"function\" object", where);
    const nlohmann::json& fn = t["function"];
    SHOAL_CHECK(fn.contains("name") && fn["name"].is_string(),
                "{}: \"function.name\" must be a "
                "string",
                where);
    out += "\n### " + fn["name"].get<std::string>() + "\n";
    if (fn.contains("description")) {
      SHOAL_CHECK(fn["description"].is_string(), "{}: \"function.description\" must be a string",
                  where);
      out += fn["description"].get<std::string>() + "\n";
    }
    if (fn.contains("parameters"))
      out += "Parameters (JSON Schema): " + fn["parameters"].dump() + "\n";
  }
  return out;
}

}  // namespace shoal
