// Family "function_calling": pick the right tool among several (near-miss distractors included)
// and fill its arguments from the request; some requests need two or three calls, some need none.
// The tools are simulated in-process with results derived from their arguments. Not an API
// world with state (family_api_world.cpp): here only the choice and the arguments matter.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "base/error.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

const std::vector<std::string> kCities = {"Lisbon", "Oslo",    "Nairobi", "Lima",   "Hanoi",
                                          "Quito",  "Tallinn", "Accra",   "Dublin", "Seoul",
                                          "Perth",  "Bergen",  "Porto",   "Cusco",  "Kyoto"};
const std::vector<std::string> kCurrencies = {"USD", "EUR", "GBP", "JPY", "CHF", "NOK", "INR"};
const std::vector<std::string> kLanguages = {"French", "German", "Spanish", "Japanese", "Swahili"};
const std::vector<std::string> kPeople = {"ana", "bo", "chidi", "dara", "elif", "femi", "gus"};
const std::vector<std::string> kDomains = {"example.org", "mail.test", "corp.test"};
const std::vector<std::string> kLabels = {"tea", "pasta", "laundry", "stretch", "call mum"};
const std::vector<std::string> kPhrases = {"good morning", "thank you very much",
                                           "where is the station", "the library opens at nine"};
const std::vector<std::string> kSymbols = {"ACME", "GLOBX", "INIT", "VERTA", "NOVAQ"};
const std::vector<std::string> kRooms = {"kitchen", "bedroom", "office", "living room"};
const std::vector<std::string> kAirports = {"LIS", "OSL", "NBO", "LIM", "HAN", "DUB", "ICN"};

json str(const char* description) {
  return {{"type", "string"}, {"description", description}};
}
json integer(const char* description) {
  return {{"type", "integer"}, {"description", description}};
}
json number(const char* description) {
  return {{"type", "number"}, {"description", description}};
}
json one_of(const std::vector<std::string>& values, const char* description) {
  return {{"type", "string"}, {"enum", values}, {"description", description}};
}

std::string two(int64_t v) {
  return fmt::format("{:02d}", v);
}

// A tool of the catalogue: its schema, how a request for it is phrased (from sampled
// arguments), and its simulated result.
struct ToolSpec {
  std::string name;
  json schema;
  std::function<json(Rng&)> sample_args;
  std::function<std::string(const json&, Rng&)> ask;
  std::function<json(const json&)> result;
  std::string answer_key;  // the result field a final answer must state ("" for actions)
};

uint64_t args_hash(const std::string& tool, const json& args) {
  return fnv1a(tool + args.dump());
}

std::vector<ToolSpec> catalogue() {
  std::vector<ToolSpec> c;
  c.push_back(
      {"get_weather",
       function_tool("get_weather", "Current weather in a city.",
                     {{"city", str("city name")},
                      {"unit", one_of({"celsius", "fahrenheit"}, "temperature unit")}},
                     {"city", "unit"}),
       [](Rng& r) {
         return json{{"city", r.pick(kCities)},
                     {"unit", r.pick(std::vector<std::string>{"celsius", "fahrenheit"})}};
       },
       [](const json& a, Rng& r) {
         return fmt::format(fmt::runtime(r.pick(std::vector<std::string>{
                                "What's the weather in {} right now? Temperature in {}, please.",
                                "How warm is it currently in {}? Use {}."})),
                            a["city"].get<std::string>(), a["unit"].get<std::string>());
       },
       [](const json& a) {
         uint64_t h = args_hash("get_weather", a);
         int c = static_cast<int>(h % 35) - 5;
         int t = a["unit"] == "celsius" ? c : c * 9 / 5 + 32;
         return json{{"city", a["city"]},
                     {"temperature", t},
                     {"unit", a["unit"]},
                     {"conditions",
                      std::vector<std::string>{"sunny", "cloudy", "rain", "windy"}[h / 35 % 4]}};
       },
       "temperature"});
  c.push_back({"get_weather_forecast",
               function_tool("get_weather_forecast", "Daily forecast for the next days in a city.",
                             {{"city", str("city name")}, {"days", integer("how many days, 1-7")}},
                             {"city", "days"}),
               [](Rng& r) {
                 return json{{"city", r.pick(kCities)}, {"days", r.uniform(2, 7)}};
               },
               [](const json& a, Rng&) {
                 return fmt::format("Give me the {}-day forecast for {}.", a["days"].get<int>(),
                                    a["city"].get<std::string>());
               },
               [](const json& a) {
                 uint64_t h = args_hash("get_weather_forecast", a);
                 json days = json::array();
                 for (int i = 0; i < a["days"].get<int>(); ++i)
                   days.push_back(static_cast<int>((h >> (i * 5)) % 30));
                 return json{{"city", a["city"]}, {"highs_celsius", days}};
               },
               ""});
  c.push_back({"convert_currency",
               function_tool("convert_currency", "Convert an amount of money between currencies.",
                             {{"amount", number("amount to convert")},
                              {"from_currency", one_of(kCurrencies, "ISO code of the amount")},
                              {"to_currency", one_of(kCurrencies, "ISO code wanted")}},
                             {"amount", "from_currency", "to_currency"}),
               [](Rng& r) {
                 auto pair = r.sample(static_cast<int>(kCurrencies.size()), 2);
                 return json{{"amount", r.uniform(2, 5000)},
                             {"from_currency", kCurrencies[static_cast<size_t>(pair[0])]},
                             {"to_currency", kCurrencies[static_cast<size_t>(pair[1])]}};
               },
               [](const json& a, Rng&) {
                 return fmt::format("How much is {} {} in {}?", a["amount"].get<int>(),
                                    a["from_currency"].get<std::string>(),
                                    a["to_currency"].get<std::string>());
               },
               [](const json& a) {
                 uint64_t h = args_hash("convert_currency", a);
                 double rate = 0.05 + static_cast<double>(h % 20000) / 1000.0;
                 return json{
                     {"converted", std::round(a["amount"].get<double>() * rate * 100) / 100},
                     {"currency", a["to_currency"]}};
               },
               "converted"});
  c.push_back({"get_exchange_rate",
               function_tool("get_exchange_rate", "The exchange rate between two currencies.",
                             {{"base", one_of(kCurrencies, "ISO code")},
                              {"quote", one_of(kCurrencies, "ISO code")}},
                             {"base", "quote"}),
               [](Rng& r) {
                 auto pair = r.sample(static_cast<int>(kCurrencies.size()), 2);
                 return json{{"base", kCurrencies[static_cast<size_t>(pair[0])]},
                             {"quote", kCurrencies[static_cast<size_t>(pair[1])]}};
               },
               [](const json& a, Rng&) {
                 return fmt::format("What is today's exchange rate from {} to {}?",
                                    a["base"].get<std::string>(), a["quote"].get<std::string>());
               },
               [](const json& a) {
                 uint64_t h = args_hash("get_exchange_rate", a);
                 return json{{"rate", 0.05 + static_cast<double>(h % 20000) / 1000.0}};
               },
               "rate"});
  c.push_back(
      {"set_timer",
       function_tool("set_timer", "Start a countdown timer.",
                     {{"minutes", integer("duration in minutes")}, {"label", str("a name for it")}},
                     {"minutes", "label"}),
       [](Rng& r) {
         return json{{"minutes", r.uniform(1, 90)}, {"label", r.pick(kLabels)}};
       },
       [](const json& a, Rng&) {
         return fmt::format("Start a {}-minute timer labelled \"{}\".", a["minutes"].get<int>(),
                            a["label"].get<std::string>());
       },
       [](const json& a) {
         return json{{"status", "started"}, {"timer", a}};
       },
       ""});
  c.push_back({"set_alarm",
               function_tool("set_alarm", "Set an alarm at a time of day.",
                             {{"time", str("HH:MM, 24-hour")}, {"label", str("a name for it")}},
                             {"time", "label"}),
               [](Rng& r) {
                 return json{{"time", two(r.uniform(5, 23)) + ":" + two(5 * r.uniform(0, 11))},
                             {"label", r.pick(kLabels)}};
               },
               [](const json& a, Rng&) {
                 return fmt::format("Wake me at {} with an alarm called \"{}\".",
                                    a["time"].get<std::string>(), a["label"].get<std::string>());
               },
               [](const json& a) {
                 return json{{"status", "set"}, {"alarm", a}};
               },
               ""});
  c.push_back(
      {"send_email",
       function_tool("send_email", "Send an email.",
                     {{"to", str("recipient address")},
                      {"subject", str("subject line")},
                      {"body", str("text")}},
                     {"to", "subject", "body"}),
       [](Rng& r) {
         return json{{"to", r.pick(kPeople) + "@" + r.pick(kDomains)},
                     {"subject",
                      r.pick(std::vector<std::string>{"Friday plans", "Invoice", "Draft ready"})},
                     {"body", r.pick(std::vector<std::string>{"See you at noon.", "It is attached.",
                                                              "Please review it."})}};
       },
       [](const json& a, Rng&) {
         return fmt::format("Email {} with the subject \"{}\" and the text \"{}\".",
                            a["to"].get<std::string>(), a["subject"].get<std::string>(),
                            a["body"].get<std::string>());
       },
       [](const json& a) {
         return json{{"status", "sent"},
                     {"message_id", fmt::format("m{}", args_hash("send_email", a) % 100000)}};
       },
       ""});
  c.push_back(
      {"send_sms",
       function_tool("send_sms", "Send a text message to a phone number.",
                     {{"phone", str("number in international form")}, {"text", str("message")}},
                     {"phone", "text"}),
       [](Rng& r) {
         return json{
             {"phone", fmt::format("+{}{}", r.uniform(20, 99), r.uniform(1000000, 9999999))},
             {"text", r.pick(std::vector<std::string>{"Running late", "Call me", "On my way"})}};
       },
       [](const json& a, Rng&) {
         return fmt::format("Text {} saying \"{}\".", a["phone"].get<std::string>(),
                            a["text"].get<std::string>());
       },
       [](const json&) {
         return json{{"status", "delivered"}};
       },
       ""});
  c.push_back({"translate_text",
               function_tool("translate_text", "Translate text into another language.",
                             {{"text", str("text to translate")},
                              {"target_language", one_of(kLanguages, "language")}},
                             {"text", "target_language"}),
               [](Rng& r) {
                 return json{{"text", r.pick(kPhrases)}, {"target_language", r.pick(kLanguages)}};
               },
               [](const json& a, Rng&) {
                 return fmt::format("Translate \"{}\" into {}.", a["text"].get<std::string>(),
                                    a["target_language"].get<std::string>());
               },
               [](const json& a) {
                 return json{
                     {"translation",
                      fmt::format("[{}] {}", a["target_language"].get<std::string>().substr(0, 2),
                                  a["text"].get<std::string>())}};
               },
               "translation"});
  c.push_back(
      {"get_stock_price",
       function_tool("get_stock_price", "Latest price of a stock by ticker symbol.",
                     {{"symbol", str("ticker symbol")}}, {"symbol"}),
       [](Rng& r) {
         return json{{"symbol", r.pick(kSymbols)}};
       },
       [](const json& a, Rng&) {
         return fmt::format("What is {} trading at right now?", a["symbol"].get<std::string>());
       },
       [](const json& a) {
         return json{
             {"symbol", a["symbol"]},
             {"price", static_cast<double>(args_hash("get_stock_price", a) % 90000) / 100 + 10}};
       },
       "price"});
  c.push_back(
      {"search_flights",
       function_tool("search_flights", "Search flights between two airports on a date.",
                     {{"origin", str("IATA code")},
                      {"destination", str("IATA code")},
                      {"date", str("YYYY-MM-DD")}},
                     {"origin", "destination", "date"}),
       [](Rng& r) {
         auto pair = r.sample(static_cast<int>(kAirports.size()), 2);
         return json{
             {"origin", kAirports[static_cast<size_t>(pair[0])]},
             {"destination", kAirports[static_cast<size_t>(pair[1])]},
             {"date", fmt::format("2027-{}-{}", two(r.uniform(1, 12)), two(r.uniform(1, 28)))}};
       },
       [](const json& a, Rng&) {
         return fmt::format("Find me flights from {} to {} on {}.", a["origin"].get<std::string>(),
                            a["destination"].get<std::string>(), a["date"].get<std::string>());
       },
       [](const json& a) {
         uint64_t h = args_hash("search_flights", a);
         return json{
             {"flights",
              {{{"flight", fmt::format("SH{}", h % 900 + 100)}, {"price_usd", h % 700 + 90}}}}};
       },
       ""});
  c.push_back({"set_thermostat",
               function_tool("set_thermostat", "Set a room's target temperature in Celsius.",
                             {{"room", one_of(kRooms, "which room")},
                              {"celsius", integer("target temperature")}},
                             {"room", "celsius"}),
               [](Rng& r) {
                 return json{{"room", r.pick(kRooms)}, {"celsius", r.uniform(16, 26)}};
               },
               [](const json& a, Rng&) {
                 return fmt::format("Set the {} to {} degrees Celsius.",
                                    a["room"].get<std::string>(), a["celsius"].get<int>());
               },
               [](const json& a) {
                 return json{{"status", "ok"}, {"room", a["room"]}, {"target", a["celsius"]}};
               },
               ""});
  return c;
}

const std::vector<ToolSpec>& tools_catalogue() {
  static const std::vector<ToolSpec> c = catalogue();
  return c;
}

const ToolSpec* find_spec(const std::string& name) {
  for (const auto& s : tools_catalogue())
    if (s.name == name) return &s;
  return nullptr;
}

// The near misses of a tool: offered as distractors first at higher difficulty.
const std::vector<std::pair<std::string, std::string>> kNearMisses = {
    {"get_weather", "get_weather_forecast"},
    {"convert_currency", "get_exchange_rate"},
    {"set_timer", "set_alarm"},
    {"send_email", "send_sms"}};

// Same value for a tool argument: strings ignoring case and surrounding space, numbers by value.
bool same_value(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) return std::abs(a.get<double>() - b.get<double>()) < 1e-9;
  if (a.is_string() && b.is_string())
    return lower(trim(a.get<std::string>())) == lower(trim(b.get<std::string>()));
  return a == b;
}

bool same_args(const json& got, const json& want) {
  if (!got.is_object() || got.size() != want.size()) return false;
  for (auto it = want.begin(); it != want.end(); ++it)
    if (!got.contains(it.key()) || !same_value(got[it.key()], *it)) return false;
  return true;
}

// Requests that need no tool: the answer is checked exactly.
std::pair<std::string, std::string> no_tool_request(Rng& r) {
  switch (r.index(3)) {
    case 0: {
      int64_t a = r.uniform(2, 40), b = r.uniform(2, 40);
      return {fmt::format("Quick one, no lookup needed: what is {} plus {}?", a, b),
              std::to_string(a + b)};
    }
    case 1: {
      std::string w =
          r.pick(std::vector<std::string>{"lantern", "orbit", "meadow", "cobalt", "harbor"});
      return {fmt::format("Spell the word \"{}\" backwards.", w),
              std::string(w.rbegin(), w.rend())};
    }
    default: {
      int64_t a = r.uniform(10, 99), b = r.uniform(10, 99);
      if (a == b) ++b;
      return {fmt::format("Which number is larger, {} or {}? Reply with the number.", a, b),
              std::to_string(std::max(a, b))};
    }
  }
}

class FunctionCallingFamily final : public Family {
 public:
  std::string name() const override { return "function_calling"; }
  std::string description() const override {
    return "choose the right tool among near-miss distractors and fill its arguments (or call "
           "none)";
  }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    const auto& cat = tools_catalogue();
    bool no_tool = rng.chance(0.2);
    int n_calls = no_tool ? 0 : (d <= 3 ? 1 : d - 2);
    int n_offered = std::min<int>(static_cast<int>(cat.size()), 1 + 2 * d);
    std::vector<int> order = rng.sample(static_cast<int>(cat.size()), static_cast<int>(cat.size()));
    std::vector<std::string> wanted;
    for (int i = 0; i < n_calls; ++i)
      wanted.push_back(cat[static_cast<size_t>(order[static_cast<size_t>(i)])].name);
    std::vector<std::string> offered = wanted;
    // Near misses of the wanted tools first (difficulty >= 2), then random others.
    if (d >= 2)
      for (const auto& [a, b] : kNearMisses)
        for (const auto& w : wanted) {
          std::string other = w == a ? b : (w == b ? a : "");
          if (!other.empty() && std::find(offered.begin(), offered.end(), other) == offered.end())
            offered.push_back(other);
        }
    for (int i : order) {
      if (static_cast<int>(offered.size()) >= std::max(n_offered, n_calls + 1)) break;
      const std::string& n = cat[static_cast<size_t>(i)].name;
      if (std::find(offered.begin(), offered.end(), n) == offered.end()) offered.push_back(n);
    }
    rng.shuffle(offered);
    json expected = json::array();
    std::string request;
    for (const auto& w : wanted) {
      const ToolSpec* s = find_spec(w);
      json args = s->sample_args(rng);
      expected.push_back({{"name", w}, {"arguments", args}});
      request +=
          (request.empty() ? "" : (rng.chance(0.5) ? " Also: " : " And ")) + s->ask(args, rng);
    }
    std::string answer;
    if (no_tool) std::tie(request, answer) = no_tool_request(rng);
    for (const auto& o : offered) t.tools.push_back(find_spec(o)->schema);
    t.messages = {
        message("system", system_prompt("Call a tool only when the request needs one. After the "
                                        "calls, report the results; for actions, confirm them.")),
        message("user", request)};
    t.verifier = {{"calls", expected}};
    if (no_tool) t.verifier["answer"] = answer;
    t.metadata = {{"offered", offered.size()}, {"calls", n_calls}};
    return t;
  }

  json call_tool(const Task&, EnvState*, const std::string& name, const json& args) const override {
    const ToolSpec* s = find_spec(name);
    SHOAL_CHECK(s, "unknown tool '{}'", name);
    const json& params = s->schema["function"]["parameters"];
    for (const auto& r : params["required"])
      SHOAL_CHECK(args.contains(r.get<std::string>()), "missing argument '{}'",
                  r.get<std::string>());
    for (auto it = args.begin(); it != args.end(); ++it) {
      SHOAL_CHECK(params["properties"].contains(it.key()), "unknown argument '{}'", it.key());
      const json& p = params["properties"][it.key()];
      std::string type = p["type"];
      bool ok = (type == "string" && it->is_string()) ||
                (type == "integer" && it->is_number_integer()) ||
                (type == "number" && it->is_number());
      SHOAL_CHECK(ok, "argument '{}' must be a {}", it.key(), type);
      if (p.contains("enum"))
        SHOAL_CHECK(std::find(p["enum"].begin(), p["enum"].end(), *it) != p["enum"].end(),
                    "argument '{}' must be one of {}", it.key(), p["enum"].dump());
    }
    return s->result(args);
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    return run(t, t.verifier["calls"], sb, "");
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    json calls = t.verifier["calls"];
    if (calls.empty()) {
      // Calls a tool although none was needed, then answers right.
      const json& tool = t.tools[static_cast<size_t>(rng.index(t.tools.size()))];
      const ToolSpec* s = find_spec(tool["function"]["name"]);
      json wrong = json::array({{{"name", s->name}, {"arguments", s->sample_args(rng)}}});
      return run(t, wrong, sb, t.verifier["answer"]);
    }
    size_t k = static_cast<size_t>(rng.index(calls.size()));
    json& call = calls[k];
    std::vector<std::string> others;
    for (const auto& tool : t.tools)
      if (tool["function"]["name"] != call["name"]) others.push_back(tool["function"]["name"]);
    switch (rng.index(4)) {
      case 0:  // a distractor chosen, with arguments for it
        if (!others.empty()) {
          std::string o = rng.pick(others);
          call = {{"name", o}, {"arguments", find_spec(o)->sample_args(rng)}};
          break;
        }
        [[fallthrough]];
      case 1: {  // one argument wrong (another plausible value)
        const ToolSpec* s = find_spec(call["name"]);
        json fresh = s->sample_args(rng);
        std::vector<std::string> keys;
        for (auto it = fresh.begin(); it != fresh.end(); ++it)
          if (!same_value(*it, call["arguments"][it.key()])) keys.push_back(it.key());
        if (keys.empty()) {
          call["arguments"].erase(call["arguments"].begin().key());  // no other value: drop one
        } else {
          std::string key = rng.pick(keys);
          call["arguments"][key] = fresh[key];
        }
        break;
      }
      case 2:  // a required argument left out
        call["arguments"].erase(
            std::next(call["arguments"].begin(), rng.index(call["arguments"].size())).key());
        break;
      default:  // no call at all: an answer made up
        if (calls.size() == 1) {
          Episode e;
          e.messages.push_back(
              message("assistant", "I have taken care of that.\n" + answer_line("done")));
          return e;
        }
        calls.erase(calls.begin() + static_cast<long>(k));
    }
    return run(t, calls, sb, "");
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto calls = tool_calls(e);
    auto ans = final_answer(e);
    const json& want = t.verifier["calls"];
    if (want.empty()) {
      if (!calls.empty()) return fail("called a tool though none was needed", {{"tool_choice", 0}});
      if (!ans) return fail("no final ANSWER line", {{"tool_choice", 1}, {"answer", 0}});
      std::string gold = t.verifier["answer"];
      bool ok = is_plain_number(gold) ? numbers_equal(*ans, gold) : lower(*ans) == lower(gold);
      if (!ok)
        return fail("wrong answer '" + ans->substr(0, 60) + "'",
                    {{"tool_choice", 1}, {"answer", 0}});
      return pass("answered without tools", {{"tool_choice", 1}, {"answer", 1}});
    }
    for (const auto& c : calls)
      if (!c.error.empty()) return fail("malformed tool call: " + c.error, {{"tool_choice", 0}});
    // Every wanted call made exactly once (any order), nothing else.
    std::vector<bool> used(calls.size(), false);
    for (const auto& w : want) {
      bool found = false, name_seen = false;
      for (size_t i = 0; i < calls.size() && !found; ++i) {
        if (used[i] || calls[i].name != w["name"]) continue;
        name_seen = true;
        if (same_args(calls[i].args, w["arguments"])) used[i] = found = true;
      }
      if (!found)
        return fail(name_seen ? "wrong arguments for " + w["name"].get<std::string>()
                              : "missing call to " + w["name"].get<std::string>(),
                    {{"tool_choice", name_seen ? 1 : 0}, {"arguments", 0}});
    }
    for (size_t i = 0; i < calls.size(); ++i)
      if (!used[i])
        return fail("unneeded call to " + calls[i].name, {{"tool_choice", 0}, {"arguments", 1}});
    if (!ans)
      return fail("no final ANSWER line", {{"tool_choice", 1}, {"arguments", 1}, {"answer", 0}});
    // Information the user asked for must reach them.
    for (const auto& w : want) {
      const ToolSpec* s = find_spec(w["name"]);
      if (s->answer_key.empty()) continue;
      json value = s->result(w["arguments"])[s->answer_key];
      std::string text = value.is_string() ? value.get<std::string>() : value.dump();
      if (lower(*ans).find(lower(text)) == std::string::npos)
        return fail("the answer does not report " + s->answer_key + " " + text,
                    {{"tool_choice", 1}, {"arguments", 1}, {"answer", 0}});
    }
    return pass("right tools, right arguments",
                {{"tool_choice", 1}, {"arguments", 1}, {"answer", 1}});
  }

 private:
  // Makes `calls` (one assistant turn with all of them), then answers from the results.
  Episode run(const Task& t, const json& calls, sandbox::Client* sb,
              const std::string& answer) const {
    Environment env(*this, t, sb);
    Trajectory tr(env);
    if (calls.empty()) {
      tr.say("No tool is needed for this.\n" + answer_line(t.verifier.value("answer", answer)));
      return tr.take();
    }
    std::vector<std::pair<std::string, json>> list;
    for (const auto& c : calls) list.emplace_back(c["name"], c["arguments"]);
    std::vector<json> results = tr.call_all(list);
    std::string summary;
    for (size_t i = 0; i < results.size(); ++i) {
      const ToolSpec* s = find_spec(list[i].first);
      if (results[i].contains("error")) {
        summary += (summary.empty() ? "" : "; ") + list[i].first + " failed";
      } else if (s && !s->answer_key.empty()) {
        const json& v = results[i][s->answer_key];
        summary += (summary.empty() ? "" : "; ") + s->answer_key + " " +
                   (v.is_string() ? v.get<std::string>() : v.dump());
      } else {
        summary += (summary.empty() ? "" : "; ") + list[i].first + " done";
      }
    }
    tr.say("Here is what I found and did: " + summary + ".\n" +
           answer_line(answer.empty() ? summary : answer));
    return tr.take();
  }
};

}  // namespace

std::unique_ptr<Family> make_function_calling_family() {
  return std::make_unique<FunctionCallingFamily>();
}

}  // namespace shoal::tasks
