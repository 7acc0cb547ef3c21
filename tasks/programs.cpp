// The program pipelines of the code families (programs.h): rendering, generation, neighbours and
// slips, code extraction and the sandboxed hidden-test check. The operations themselves (C++
// semantics, Python lines, words, slips) are in program_ops.cpp.
#include "tasks/programs.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "base/error.h"
#include "sandbox/client.h"
#include "sandbox/tools.h"
#include "tasks/program_ops.h"

namespace shoal::tasks::programs {
namespace {

std::string substitute(std::string s, const std::string& key, const std::string& value) {
  for (size_t at = s.find(key); at != std::string::npos; at = s.find(key, at + value.size()))
    s.replace(at, key.size(), value);
  return s;
}

std::string base64(std::string_view in) {
  static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16 | static_cast<uint8_t>(in[i + 1]) << 8 |
                 static_cast<uint8_t>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += abc[v >> s & 63];
  }
  if (i < in.size()) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<uint8_t>(in[i + 1]) << 8;
    out += abc[v >> 18 & 63];
    out += abc[v >> 12 & 63];
    out += i + 1 < in.size() ? abc[v >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

std::string python_list(const std::vector<std::string>& items) {
  std::string s = "[";
  for (size_t i = 0; i < items.size(); ++i) s += (i ? ", " : "") + items[i];
  return s + "]";
}

}  // namespace

std::string kind_name(Kind kind) {
  return kind == Kind::list ? "list" : kind == Kind::text ? "str" : "int";
}

std::string param_name(Kind k) {
  return k == Kind::list ? "xs" : k == Kind::text ? "s" : "n";
}

Value integer(int64_t i) {
  Value v;
  v.kind = Kind::integer;
  v.i = i;
  return v;
}
Value text(std::string s) {
  Value v;
  v.kind = Kind::text;
  v.s = std::move(s);
  return v;
}
Value list(std::vector<int64_t> l) {
  Value v;
  v.kind = Kind::list;
  v.l = std::move(l);
  return v;
}

std::string python_repr(const Value& v) {
  switch (v.kind) {
    case Kind::integer:
      return std::to_string(v.i);
    case Kind::text: {
      // As Python's repr: single quotes unless the text holds one and no double quote.
      char q =
          v.s.find('\'') != std::string::npos && v.s.find('"') == std::string::npos ? '"' : '\'';
      std::string out(1, q);
      for (unsigned char c : v.s) {
        if (c == '\\' || c == q)
          out += std::string("\\") + static_cast<char>(c);
        else if (c < 0x20 || c >= 0x7f)
          out += fmt::format("\\x{:02x}", c);
        else
          out += static_cast<char>(c);
      }
      return out + q;
    }
    default: {
      std::vector<std::string> items;
      for (int64_t x : v.l) items.push_back(std::to_string(x));
      return python_list(items);
    }
  }
}

json typed(const Value& v) {
  switch (v.kind) {
    case Kind::integer:
      return {"int", v.i};
    case Kind::text:
      return {"str", v.s};
    default: {
      json items = json::array();
      for (int64_t x : v.l) items.push_back({"int", x});
      return {"list", items};
    }
  }
}

Value value_from_typed(const json& j) {
  SHOAL_CHECK(j.is_array() && j.size() == 2 && j[0].is_string(), "programs: not a typed value: {}",
              j.dump().substr(0, 80));
  const std::string& t = j[0].get_ref<const std::string&>();
  if (t == "int" && j[1].is_number_integer()) return integer(j[1].get<int64_t>());
  if (t == "str" && j[1].is_string()) return text(j[1].get<std::string>());
  SHOAL_CHECK(t == "list" && j[1].is_array(), "programs: not a typed value: {}",
              j.dump().substr(0, 80));
  std::vector<int64_t> l;
  for (const auto& x : j[1]) l.push_back(value_from_typed(x).i);
  return list(l);
}

json to_json(const Program& p) {
  json steps = json::array();
  for (const Step& s : p.steps) steps.push_back({s.op, s.k});
  return {{"input", kind_name(p.input)}, {"steps", steps}};
}

Program program_from_json(const json& j) {
  SHOAL_CHECK(j.is_object() && j.contains("input") && j["input"].is_string() &&
                  j.contains("steps") && j["steps"].is_array(),
              "programs: not a program: {}", j.dump().substr(0, 80));
  Program p;
  std::string in = j["input"];
  SHOAL_CHECK(in == "list" || in == "str" || in == "int", "programs: unknown input kind '{}'", in);
  p.input = in == "list" ? Kind::list : in == "str" ? Kind::text : Kind::integer;
  Kind k = p.input;
  for (const auto& s : j["steps"]) {
    SHOAL_CHECK(s.is_array() && s.size() == 2 && s[0].is_string() && s[1].is_number_integer(),
                "programs: a step is [op, constant], not {}", s.dump().substr(0, 80));
    Step st{s[0].get<std::string>(), s[1].get<int64_t>()};
    const Op& op = find_op(st.op);
    SHOAL_CHECK(op.in == k, "programs: step '{}' takes a {}, not a {}", st.op, kind_name(op.in),
                kind_name(k));
    k = op.out;
    p.steps.push_back(st);
  }
  return p;
}

Kind output_kind(const Program& p) {
  return p.steps.empty() ? p.input : find_op(p.steps.back().op).out;
}

bool well_typed(const Program& p) {
  Kind k = p.input;
  for (const Step& s : p.steps) {
    const Op& op = find_op(s.op);
    if (op.in != k) return false;
    k = op.out;
  }
  return true;
}

std::optional<Value> run(const Program& p, const Value& input) {
  SHOAL_CHECK(well_typed(p) && input.kind == p.input, "programs: run of an ill-typed program");
  Value v = input;
  try {
    for (const Step& s : p.steps) v = find_op(s.op).eval(v, s.k);
  } catch (const OutOfRange&) {
    return std::nullopt;
  }
  return v;
}

std::vector<std::string> render_step(const Program& p, size_t step) {
  Kind in = p.input;
  for (size_t i = 0; i < step; ++i) in = find_op(p.steps[i].op).out;
  const Op& op = find_op(p.steps[step].op);
  std::string code = substitute(op.python, "{in}", param_name(in));
  code = substitute(code, "{out}", param_name(op.out));
  code = substitute(code, "{k}", std::to_string(p.steps[step].k));
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos <= code.size()) {
    size_t nl = code.find('\n', pos);
    lines.push_back("    " + code.substr(pos, nl == std::string::npos ? nl : nl - pos));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return lines;
}

std::string render(const Program& p) {
  std::string s = "def f(" + param_name(p.input) + "):\n";
  for (size_t i = 0; i < p.steps.size(); ++i)
    for (const auto& line : render_step(p, i)) s += line + "\n";
  return s + "    return " + param_name(output_kind(p)) + "\n";
}

std::vector<std::string> describe(const Program& p) {
  std::vector<std::string> out;
  for (const Step& s : p.steps) {
    const Op& op = find_op(s.op);
    SHOAL_CHECK(op.generated, "programs: '{}' is a slip, not a described step", s.op);
    out.push_back(substitute(op.words, "{k}", std::to_string(s.k)));
  }
  return out;
}

std::string describe_input(Kind kind) {
  return kind == Kind::list ? "a list of integers" : kind == Kind::text ? "a string" : "an integer";
}

// ---- generation ----

std::vector<Program> one_step_programs() {
  std::vector<Program> out;
  for (const Op& op : ops()) {
    out.push_back({op.in, {{op.name, takes_constant(op) ? op.kmin : 0}}});
    if (takes_constant(op)) out.push_back({op.in, {{op.name, op.kmax + 1}}});
  }
  return out;
}

Kind random_kind(Rng& rng) {
  double r = rng.real();
  return r < 0.5 ? Kind::list : r < 0.8 ? Kind::text : Kind::integer;
}

std::vector<Value> random_inputs(Kind kind, int d, size_t n, Rng& rng) {
  static const std::vector<std::string> words = {"apple", "Tea",  "sky",   "moon", "River", "kite",
                                                 "echo",  "quiz", "bread", "Zoo",  "idea",  "open",
                                                 "Lamp",  "fig",  "UP",    "go"};
  std::vector<Value> out;
  std::set<std::string> seen;
  for (int guard = 0; out.size() < n && guard < 5000; ++guard) {
    Value v;
    if (kind == Kind::list) {
      int64_t len = rng.uniform(1, 3 + d), lo = d >= 2 ? -9 : 0, hi = 12 + 2 * d;
      std::vector<int64_t> l;
      for (int64_t i = 0; i < len; ++i)
        l.push_back(!l.empty() && rng.chance(0.25) ? rng.pick(l) : rng.uniform(lo, hi));
      v = list(l);
    } else if (kind == Kind::text) {
      std::string s;
      for (int64_t i = 0, m = rng.uniform(1, 2 + d / 2); i < m; ++i)
        s += (i ? " " : "") + rng.pick(words);
      v = text(s);
    } else {
      v = integer(d == 1 ? rng.uniform(0, 99)
                         : rng.uniform(d >= 4 ? -9999 : -99, d >= 4 ? 99999 : 999));
    }
    if (seen.insert(python_repr(v)).second) out.push_back(v);
  }
  return out;
}

std::vector<Value> edge_inputs(Kind kind) {
  if (kind == Kind::list)
    return {list({}), list({0}), list({-5}), list({7, 7, 7}), list({-3, 0, 3})};
  if (kind == Kind::text) return {text(""), text("a"), text("AEIOU"), text("ab  cd"), text(" x ")};
  return {integer(0), integer(-7), integer(5), integer(-100), integer(10)};
}

std::optional<Program> random_program(Kind input, int depth, const std::vector<Value>& inputs,
                                      Rng& rng) {
  auto outputs = [&](const Program& p) -> std::optional<std::vector<json>> {
    std::vector<json> out;
    for (const Value& x : inputs) {
      auto y = run(p, x);
      if (!y) return std::nullopt;
      out.push_back(typed(*y));
    }
    return out;
  };
  for (int attempt = 0; attempt < 400; ++attempt) {
    Program p{input, {}};
    Kind k = input;
    for (int i = 0; i < depth; ++i) {
      std::vector<const Op*> choices;
      for (const Op& op : ops())
        if (op.generated && op.in == k && (p.steps.empty() || p.steps.back().op != op.name))
          choices.push_back(&op);
      const Op& op = *rng.pick(choices);
      p.steps.push_back({op.name, takes_constant(op) ? rng.uniform(op.kmin, op.kmax) : 0});
      k = op.out;
    }
    auto out = outputs(p);
    if (!out) continue;
    std::set<std::string> distinct;
    for (const auto& o : *out) distinct.insert(o.dump());
    if (distinct.size() < std::min<size_t>(3, inputs.size())) continue;
    // Not the identity, and every step that keeps the type is needed.
    bool identity = true;
    for (size_t i = 0; i < inputs.size(); ++i) identity = identity && (*out)[i] == typed(inputs[i]);
    bool needed = !identity;
    for (size_t i = 0; i < p.steps.size() && needed; ++i) {
      const Op& op = find_op(p.steps[i].op);
      if (op.in != op.out) continue;
      Program without = p;
      without.steps.erase(without.steps.begin() + static_cast<std::ptrdiff_t>(i));
      needed = outputs(without) != out;
    }
    if (needed) return p;
  }
  return std::nullopt;
}

std::vector<Step> slips(const Step& step) {
  std::vector<Step> out;
  for (const Slip& s : find_op(step.op).slips) {
    const Op& target = find_op(s.op);
    Step st{s.op, takes_constant(target) ? step.k + s.dk : 0};
    if (takes_constant(target) && st.k < std::max<int64_t>(target.kmin, 1)) continue;
    if (!(st == step)) out.push_back(st);
  }
  return out;
}

std::vector<Program> neighbours(const Program& p) {
  std::vector<Program> out;
  auto add = [&](size_t i, const Step& s) {
    Program q = p;
    q.steps[i] = s;
    if (!(q == p) && std::find(out.begin(), out.end(), q) == out.end()) out.push_back(q);
  };
  for (size_t i = 0; i < p.steps.size(); ++i) {
    const Op& op = find_op(p.steps[i].op);
    for (const Op& other : ops())
      if (other.generated && other.in == op.in && other.out == op.out)
        add(i, {other.name,
                takes_constant(other) ? std::clamp(p.steps[i].k, other.kmin, other.kmax) : 0});
    if (takes_constant(op)) {
      if (p.steps[i].k > op.kmin) add(i, {op.name, p.steps[i].k - 1});
      if (p.steps[i].k < op.kmax) add(i, {op.name, p.steps[i].k + 1});
    }
    for (const Step& s : slips(p.steps[i])) add(i, s);
  }
  return out;
}

// ---- submissions and checks ----

std::optional<std::string> submitted_code(const Episode& episode) {
  const std::string* final_text = final_message_text(episode);
  if (!final_text) return std::nullopt;
  const std::string& t = *final_text;
  std::optional<std::string> found;
  for (size_t open = t.find("```"); open != std::string::npos;) {
    size_t eol = t.find('\n', open);
    if (eol == std::string::npos) break;
    std::string lang = lower(trim(std::string_view(t).substr(open + 3, eol - open - 3)));
    size_t close = t.find("```", eol + 1);
    if (close == std::string::npos) break;
    if (lang.empty() || lang == "python" || lang == "py" || lang == "python3")
      found = t.substr(eol + 1, close - eol - 1);
    open = t.find("```", close + 3);
  }
  return found;
}

std::string example_runner(const std::string& code, const std::vector<Value>& inputs,
                           const std::vector<Value>& expected) {
  SHOAL_CHECK(inputs.size() == expected.size(), "example_runner: {} inputs, {} outputs",
              inputs.size(), expected.size());
  std::string s = trim(code) + "\n\n\ntests = [\n";
  for (size_t i = 0; i < inputs.size(); ++i)
    s += "    (" + python_repr(inputs[i]) + ", " + python_repr(expected[i]) + "),\n";
  s += "]\n"
       "for arg, want in tests:\n"
       "    shown = repr(arg)\n"
       "    got = f(arg)\n"
       "    print('ok' if got == want else 'MISMATCH', f'f({shown}) = {got!r}, expected "
       "{want!r}')\n";
  return s;
}

std::string code_block(const std::string& code) {
  return "```python\n" + trim(code) + "\n```";
}

std::vector<std::string> tool_stdouts(const Episode& episode) {
  std::vector<std::string> out;
  for (const auto& m : episode.messages)
    if (m.value("role", "") == "tool") {
      json r = json::parse(m["content"].get<std::string>(), nullptr, false);
      out.push_back(r.is_object() && r.contains("stdout") ? r["stdout"].get<std::string>()
                                                          : r.dump());
    }
  return out;
}

size_t count_lines(const std::string& text, const std::string& prefix) {
  size_t n = 0;
  for (size_t at = 0; at < text.size();) {
    size_t nl = text.find('\n', at);
    if (text.compare(at, prefix.size(), prefix) == 0) ++n;
    if (nl == std::string::npos) break;
    at = nl + 1;
  }
  return n;
}

json python_tool_schema() {
  return function_tool(
      "python",
      "Run Python 3 code in a sandbox (no network, nothing kept between calls: each call starts "
      "a fresh interpreter, so define your function in every call). Returns stdout, stderr and "
      "the exit code; the value of a final expression is printed.",
      {{"code", {{"type", "string"}, {"description", "Python source to run"}}}}, {"code"});
}

json run_python_tool(sandbox::Client& client, const json& args) {
  std::string why = sandbox::check_arguments("python", args);
  SHOAL_CHECK(why.empty(), "{}", why);
  sandbox::Request r;
  r.tool = "python";
  r.arguments = args;
  r.mode = sandbox::Mode::fork;
  r.limits = {{"wall_ms", 5000}, {"cpu_ms", 5000}, {"output_bytes", 8192}};
  sandbox::Reply reply = client.call(r);
  if (reply.status != "ok") return {{"error", reply.error_kind + ": " + reply.error_message}};
  return {
      {"exit_code", reply.exit_code}, {"stdout", reply.stdout_text}, {"stderr", reply.stderr_text}};
}

std::unique_ptr<EnvState> open_python_tool(const std::string& family, sandbox::Client* client) {
  SHOAL_CHECK(client, "family {} needs a sandbox client", family);
  auto s = std::make_unique<PythonToolState>();
  s->client = client;
  return s;
}

json call_python_tool(EnvState* state, const std::string& name, const json& args) {
  SHOAL_CHECK(name == "python", "unknown tool '{}'", name);
  return run_python_tool(*static_cast<PythonToolState*>(state)->client, args);
}

json examples_json(const std::vector<Value>& inputs, const std::vector<Value>& outputs) {
  json out = json::array();
  for (size_t i = 0; i < inputs.size(); ++i)
    out.push_back({{"input", typed(inputs[i])}, {"output", typed(outputs.at(i))}});
  return out;
}

void examples_from_json(const json& j, std::vector<Value>& inputs, std::vector<Value>& outputs) {
  for (const auto& e : j) {
    inputs.push_back(value_from_typed(e.at("input")));
    outputs.push_back(value_from_typed(e.at("output")));
  }
}

Reward check_hidden_tests(sandbox::Client& client, const std::string& code,
                          const std::vector<Value>& inputs, const std::vector<Value>& expected) {
  SHOAL_CHECK(inputs.size() == expected.size() && !inputs.empty(),
              "check_hidden_tests: {} inputs, {} outputs", inputs.size(), expected.size());
  json raw = json::array();
  for (const Value& v : inputs) {
    if (v.kind == Kind::integer) raw.push_back(v.i);
    if (v.kind == Kind::text) raw.push_back(v.s);
    if (v.kind == Kind::list) raw.push_back(v.l);
  }
  // The harness: the submission runs as module `solution` (so a __main__ block stays quiet),
  // each input is a fresh copy, and one RESULT line carries every output in typed form.
  std::string harness = fmt::format(
      "import base64, copy, json\n"
      "def _enc(v):\n"
      "    t = type(v).__name__\n"
      "    if t == 'list':\n"
      "        return ['list', [_enc(x) for x in v]]\n"
      "    if t in ('int', 'str', 'bool'):\n"
      "        return [t, v]\n"
      "    return [t, repr(v)[:60]]\n"
      "_ns = {{'__name__': 'solution'}}\n"
      "_load = None\n"
      "try:\n"
      "    exec(compile(base64.b64decode('{}').decode('utf-8', 'replace'), 'solution.py', "
      "'exec'), _ns)\n"
      "    if not callable(_ns.get('f')):\n"
      "        _load = 'no function f is defined'\n"
      "except BaseException as _e:\n"
      "    _load = type(_e).__name__ + ': ' + str(_e)[:200]\n"
      "if _load is not None:\n"
      "    print('RESULT ' + json.dumps({{'load_error': _load}}))\n"
      "else:\n"
      "    _out = []\n"
      "    for _x in json.loads(base64.b64decode('{}').decode()):\n"
      "        try:\n"
      "            _out.append(_enc(_ns['f'](copy.deepcopy(_x))))\n"
      "        except BaseException as _e:\n"
      "            _out.append(['error', type(_e).__name__ + ': ' + str(_e)[:100]])\n"
      "    print('RESULT ' + json.dumps({{'outputs': _out}}))\n",
      base64(code), base64(raw.dump()));
  sandbox::Request r;
  r.tool = "python";
  r.arguments = {{"code", harness}};
  r.mode = sandbox::Mode::fork;
  r.limits = {{"wall_ms", 5000}, {"cpu_ms", 5000}};
  sandbox::Reply reply = client.call(r);
  json counts = {{"tests", inputs.size()}, {"passed", 0}};
  if (reply.status != "ok") {
    // The code's own doing (a loop, a memory bomb, killing itself) scores 0; anything else is
    // the sandbox failing us, and must not be scored as the model's mistake.
    const std::string& k = reply.error_kind;
    if (k == sandbox::error_kind::timeout || k == sandbox::error_kind::cpu_limit ||
        k == sandbox::error_kind::memory_limit || k == sandbox::error_kind::sandbox_died)
      return fail("the code did not finish: " + k, counts);
    throw VerifierUnavailable(
        fmt::format("the sandbox could not run the hidden tests: {}: {}", k, reply.error_message),
        __FILE__, __LINE__);
  }
  // The last RESULT line (the submission may print anything before it).
  json result;
  for (size_t at = reply.stdout_text.rfind("RESULT "); at != std::string::npos;) {
    if (at == 0 || reply.stdout_text[at - 1] == '\n') {
      size_t nl = reply.stdout_text.find('\n', at);
      result =
          json::parse(reply.stdout_text.substr(at + 7, nl == std::string::npos ? nl : nl - at - 7),
                      nullptr, false);
      break;
    }
    at = at == 0 ? std::string::npos : reply.stdout_text.rfind("RESULT ", at - 1);
  }
  if (!result.is_object()) return fail("the hidden tests printed no result", counts);
  if (result.contains("load_error"))
    return fail("the code does not load: " + result["load_error"].dump(), counts);
  const json& out = result.value("outputs", json::array());
  if (!out.is_array() || out.size() != inputs.size())
    return fail("the hidden tests printed a malformed result", counts);
  int passed = 0;
  std::string first_wrong;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (out[i] == typed(expected[i])) {
      ++passed;
    } else if (first_wrong.empty()) {
      first_wrong = "f(" + python_repr(inputs[i]) + ") gave " + out[i].dump().substr(0, 80);
    }
  }
  counts["passed"] = passed;
  if (passed < std::ssize(inputs))
    return fail(fmt::format("{} of {} tests pass; {}", passed, inputs.size(), first_wrong), counts);
  return pass(fmt::format("all {} tests pass", inputs.size()), counts);
}

Reward check_submission(sandbox::Client& client, const Episode& episode, const json& shown,
                        const json& hidden) {
  auto code = submitted_code(episode);
  if (!code) return fail("no ```python code block in the final message", {{"passed", 0}});
  if (code->size() > kMaxSubmission)
    return fail(fmt::format("the code is over {} characters", kMaxSubmission), {{"passed", 0}});
  std::vector<Value> in, out;
  examples_from_json(shown, in, out);
  examples_from_json(hidden, in, out);
  return check_hidden_tests(client, *code, in, out);
}

}  // namespace shoal::tasks::programs
