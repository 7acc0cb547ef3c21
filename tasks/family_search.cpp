// Family "search": multi-hop questions over a synthesized corpus of invented entities
// (organizations, people, towns, regions), one document each, with look-alike distractors. The
// `search` tool fuses SQLite FTS5 (BM25) with a Faiss inner-product index over deterministic
// hashed n-gram embeddings (reciprocal rank fusion); `open_document` returns a document. Each seed
// makes a new corpus. Not a web search: the corpus is the environment and is stored with the task.
#include <faiss/IndexFlat.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <set>

#include "base/error.h"
#include "base/sqlite.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

constexpr int kDim = 256;

// Hashed bag of words and character trigrams, L2-normalized: deterministic, no model needed.
std::vector<float> embed(const std::string& text) {
  std::vector<float> v(kDim, 0.0f);
  std::string t = " " + normalize_words(text) + " ";
  size_t start = 0;
  for (size_t i = 1; i < t.size(); ++i)
    if (t[i] == ' ') {
      std::string w = t.substr(start + 1, i - start - 1);
      if (!w.empty()) v[fnv1a(w) % kDim] += 2.0f;
      start = i;
    }
  for (size_t i = 0; i + 3 <= t.size(); ++i)
    v[fnv1a(t.substr(i, 3), 0x51ed270b27f3ac2bULL) % kDim] += 1.0f;
  double n = 0;
  for (float x : v) n += static_cast<double>(x) * x;
  if (n > 0)
    for (float& x : v) x = static_cast<float>(x / std::sqrt(n));
  return v;
}

struct SearchState : EnvState {
  SqliteDb db;
  faiss::IndexFlatIP index{kDim};
  json docs;  // [{"id", "title", "text"}]
};

// FTS5 query from free text: each word quoted, joined with OR (no operator injection).
std::string fts_query(const std::string& q) {
  std::string out;
  for (const std::string& w : [&] {
         std::vector<std::string> ws;
         std::string cur;
         for (unsigned char c : q + " ") {
           if (std::isalnum(c) || c >= 0x80) {
             cur += static_cast<char>(c);
           } else if (!cur.empty()) {
             ws.push_back(cur);
             cur.clear();
           }
         }
         return ws;
       }())
    out += (out.empty() ? "" : " OR ") + std::string("\"") + w + "\"";
  return out;
}

const std::vector<std::string> kSyllables = {
    "ka", "vel", "mor", "tan", "ris",  "quo", "len", "dar", "esh", "ul", "bri", "sto", "fen", "gal",
    "ix", "or",  "pra", "zun", "thal", "wen", "cor", "mi",  "sab", "ne", "rho", "ty",  "gu",  "lo"};

std::string capital(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string word(Rng& r, int lo, int hi) {
  std::string w;
  for (int64_t i = 0, n = r.uniform(lo, hi); i < n; ++i) w += r.pick(kSyllables);
  return capital(w);
}

// Entity kinds and the relations between them (the hops a question can take).
enum Kind { kOrg, kPerson, kTown, kRegion };
struct Relation {
  const char* name;
  Kind from, to;
  const char* phrase;  // how a question names the target, {} = the source's description
};
const std::vector<Relation> kRelations = {
    {"founder", kOrg, kPerson, "the founder of {}"},
    {"headquarters", kOrg, kTown, "the town where {} is headquartered"},
    {"birthplace", kPerson, kTown, "the birthplace of {}"},
    {"school", kPerson, kOrg, "the organization where {} trained"},
    {"region", kTown, kRegion, "the region that {} belongs to"},
    {"governor", kRegion, kPerson, "the governor of {}"},
};

struct Entity {
  Kind kind;
  std::string name;
  std::map<std::string, int> facts;  // relation -> entity index
  int twin = -1;                     // a look-alike distractor
};

std::string describe_doc(const std::vector<Entity>& es, const Entity& e, Rng& r) {
  auto f = [&](const char* rel) { return es[static_cast<size_t>(e.facts.at(rel))].name; };
  switch (e.kind) {
    case kOrg:
      return fmt::format(
          "{} is a {} founded in {} by {}. Its headquarters are in {}. It employs about {} people.",
          e.name,
          r.pick(std::vector<std::string>{"cooperative", "research guild", "trading house",
                                          "workshop"}),
          r.uniform(1820, 2010), f("founder"), f("headquarters"), r.uniform(12, 4000));
    case kPerson:
      return fmt::format("{} was born in {}. After training at {}, {} became known for {}.", e.name,
                         f("birthplace"), f("school"), e.name.substr(0, e.name.find(' ')),
                         r.pick(std::vector<std::string>{"bridge designs", "river maps",
                                                         "glass lenses", "folk songs"}));
    case kTown:
      return fmt::format(
          "{} is a town of {} inhabitants in the {} region, known for its {}.", e.name,
          r.uniform(900, 90000), f("region"),
          r.pick(std::vector<std::string>{"market", "harbor", "old mill", "observatory"}));
    case kRegion:
      return fmt::format("{} is a region whose current governor is {}. Its climate is {}.", e.name,
                         f("governor"),
                         r.pick(std::vector<std::string>{"mild", "dry", "cold", "humid"}));
  }
  return "";
}

class SearchFamily final : public Family {
 public:
  std::string name() const override { return "search"; }
  std::string description() const override {
    return "multi-hop questions over a synthesized corpus, with BM25 (FTS5) + Faiss hybrid search";
  }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    int hops = d <= 4 ? d : 4;
    int per_kind = std::vector<int>{4, 8, 14, 24, 36}[static_cast<size_t>(d - 1)];
    std::vector<Entity> es;
    std::set<std::string> names;
    auto fresh_name = [&](Kind k) {
      for (;;) {
        std::string n;
        if (k == kOrg)
          n = word(rng, 2, 3) + " " +
              rng.pick(std::vector<std::string>{"Works", "Guild", "Institute", "Foundry"});
        if (k == kPerson) n = word(rng, 2, 2) + " " + word(rng, 2, 3);
        if (k == kTown)
          n = word(rng, 2, 3) + rng.pick(std::vector<std::string>{"holm", "ford", "mere", "stad"});
        if (k == kRegion) n = word(rng, 2, 3) + "ia";
        if (names.insert(n).second) return n;
      }
    };
    for (Kind k : {kOrg, kPerson, kTown, kRegion})
      for (int i = 0; i < per_kind; ++i) es.push_back({k, fresh_name(k), {}, -1});
    auto of_kind = [&](Kind k) {
      std::vector<int> out;
      for (size_t i = 0; i < es.size(); ++i)
        if (es[i].kind == k) out.push_back(static_cast<int>(i));
      return out;
    };
    for (auto& e : es)
      for (const auto& r : kRelations)
        if (r.from == e.kind) e.facts[r.name] = rng.pick(of_kind(r.to));
    // The question: a chain of `hops` relations from a start entity.
    std::vector<int> chain;
    std::vector<const Relation*> rels;
    for (int attempt = 0;; ++attempt) {
      SHOAL_CHECK(attempt < 1000, "search: no chain found");
      chain = {rng.pick(of_kind(kOrg))};
      rels.clear();
      std::set<int> seen = {chain[0]};
      for (int h = 0; h < hops; ++h) {
        std::vector<const Relation*> options;
        for (const auto& r : kRelations)
          if (r.from == es[static_cast<size_t>(chain.back())].kind) options.push_back(&r);
        const Relation* r = rng.pick(options);
        rels.push_back(r);
        chain.push_back(es[static_cast<size_t>(chain.back())].facts.at(r->name));
      }
      bool distinct = true;
      for (size_t i = 1; i < chain.size(); ++i) distinct = distinct && seen.insert(chain[i]).second;
      if (distinct) break;
    }
    // Look-alikes of the chain's entities (difficulty >= 2): a similar name, other facts.
    if (d >= 2)
      for (size_t i = 0; i + 1 < chain.size(); ++i) {
        Entity twin = es[static_cast<size_t>(chain[i])];
        std::string n = twin.name;
        // A letter more inside the first word: "Kavel Works" -> "Kavrel Works", "Tanholm" ->
        // "Tarnholm".
        twin.name = n.substr(0, 2) + "r" + n.substr(2);
        if (!names.insert(twin.name).second) continue;
        for (auto& [rel, target] : twin.facts) {
          int other;
          do other = rng.pick(of_kind(es[static_cast<size_t>(target)].kind));
          while (other == target);
          target = other;
        }
        es[static_cast<size_t>(chain[i])].twin = static_cast<int>(es.size());
        es.push_back(twin);
      }
    json docs = json::array();
    std::vector<int> order = rng.sample(static_cast<int>(es.size()), static_cast<int>(es.size()));
    std::vector<int> doc_of(es.size());
    for (size_t i = 0; i < order.size(); ++i) {
      const Entity& e = es[static_cast<size_t>(order[i])];
      doc_of[static_cast<size_t>(order[i])] = static_cast<int>(i + 1);
      docs.push_back({{"id", i + 1}, {"title", e.name}, {"text", describe_doc(es, e, rng)}});
    }
    std::string desc = es[static_cast<size_t>(chain[0])].name;
    for (const Relation* r : rels) desc = fmt::format(fmt::runtime(r->phrase), desc);
    t.messages = {
        message("system",
                system_prompt("Use the search tool and the documents; answer with the name only.")),
        message("user", "What is the name of " + desc + "?")};
    t.tools = json::array(
        {function_tool("search",
                       "Search the document collection (keyword and semantic). Returns ids, titles "
                       "and snippets.",
                       {{"query", {{"type", "string"}}},
                        {"k", {{"type", "integer"}, {"description", "results, 1-10 (default 5)"}}}},
                       {"query"}),
         function_tool("open_document", "The full text of a document by id.",
                       {{"id", {{"type", "integer"}}}}, {"id"})});
    json hop_docs = json::array(), hop_names = json::array(), twin_docs = json::array();
    for (size_t i = 0; i < chain.size(); ++i) {
      const Entity& e = es[static_cast<size_t>(chain[i])];
      hop_names.push_back(e.name);
      hop_docs.push_back(doc_of[static_cast<size_t>(chain[i])]);
      twin_docs.push_back(e.twin >= 0 ? json(doc_of[static_cast<size_t>(e.twin)]) : json(nullptr));
    }
    json rel_names = json::array();
    for (const Relation* r : rels) rel_names.push_back(r->name);
    t.environment = {{"documents", docs}};
    t.verifier = {{"answer", hop_names.back()},
                  {"chain", hop_names},
                  {"chain_docs", hop_docs},
                  {"twin_docs", twin_docs},
                  {"relations", rel_names}};
    t.metadata = {{"hops", hops}, {"documents", docs.size()}};
    return t;
  }

  std::unique_ptr<EnvState> open(const Task& t, sandbox::Client*) const override {
    auto s = std::make_unique<SearchState>();
    s->docs = t.environment["documents"];
    s->db.exec("CREATE VIRTUAL TABLE docs USING fts5(title, text, tokenize = 'unicode61')");
    std::vector<float> vectors;
    for (const auto& d : s->docs) {
      s->db.query("INSERT INTO docs(rowid, title, text) VALUES (?, ?, ?)",
                  {d["id"], d["title"], d["text"]});
      auto v = embed(d["title"].get<std::string>() + " " + d["text"].get<std::string>());
      vectors.insert(vectors.end(), v.begin(), v.end());
    }
    s->index.add(static_cast<faiss::Index::idx_t>(s->docs.size()), vectors.data());
    return s;
  }

  json call_tool(const Task&, EnvState* state, const std::string& name,
                 const json& args) const override {
    auto* s = static_cast<SearchState*>(state);
    if (name == "open_document") {
      SHOAL_CHECK(args.contains("id") && args["id"].is_number_integer() && args.size() == 1,
                  "open_document takes one integer 'id'");
      int64_t id = args["id"];
      SHOAL_CHECK(id >= 1 && id <= static_cast<int64_t>(s->docs.size()), "no document {}", id);
      return s->docs[static_cast<size_t>(id - 1)];
    }
    SHOAL_CHECK(name == "search", "unknown tool '{}'", name);
    SHOAL_CHECK(args.contains("query") && args["query"].is_string(),
                "search needs a string 'query'");
    for (auto it = args.begin(); it != args.end(); ++it)
      SHOAL_CHECK(it.key() == "query" || it.key() == "k", "unknown argument '{}'", it.key());
    int64_t k = 5;
    if (args.contains("k")) {
      SHOAL_CHECK(args["k"].is_number_integer() && args["k"] >= 1 && args["k"] <= 10,
                  "k must be an integer 1-10");
      k = args["k"];
    }
    std::string q = args["query"];
    SHOAL_CHECK(!trim(q).empty() && q.size() <= 500, "query must be 1-500 characters");
    // Reciprocal rank fusion of the two rankings (each its top 20).
    std::map<int64_t, double> score;
    std::string fq = fts_query(q);
    if (!fq.empty()) {
      json rows = s->db.query(
          "SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT 20", {fq});
      int rank = 0;
      for (const auto& r : rows["rows"]) score[r[0].get<int64_t>()] += 1.0 / (60 + ++rank);
    }
    auto v = embed(q);
    faiss::Index::idx_t n = std::min<faiss::Index::idx_t>(20, s->index.ntotal);
    std::vector<float> dist(static_cast<size_t>(n));
    std::vector<faiss::Index::idx_t> ids(static_cast<size_t>(n));
    s->index.search(1, v.data(), n, dist.data(), ids.data());
    for (faiss::Index::idx_t i = 0; i < n; ++i)
      if (ids[static_cast<size_t>(i)] >= 0)
        score[ids[static_cast<size_t>(i)] + 1] += 1.0 / (60 + i + 1);
    std::vector<std::pair<double, int64_t>> ranked;
    for (auto [id, sc] : score) ranked.push_back({-sc, id});
    std::sort(ranked.begin(), ranked.end());
    json out = json::array();
    for (size_t i = 0; i < ranked.size() && static_cast<int64_t>(i) < k; ++i) {
      const json& d = s->docs[static_cast<size_t>(ranked[i].second - 1)];
      std::string text = d["text"];
      out.push_back({{"id", d["id"]}, {"title", d["title"]}, {"snippet", text.substr(0, 80)}});
    }
    return out;
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    return run(t, -1, -1, sb);
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    int hops = static_cast<int>(t.verifier["relations"].size());
    std::vector<int> twins;
    for (int i = 0; i < hops; ++i)
      if (!t.verifier["twin_docs"][static_cast<size_t>(i)].is_null()) twins.push_back(i);
    int kind = rng.index(2);
    if (kind == 1 && !twins.empty())
      return run(t, -1, rng.pick(twins), sb);  // follows a look-alike
    return run(t, hops - 1, -1, sb);           // stops a hop early
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto ans = final_answer(e);
    if (!ans) return fail("no final ANSWER line", {{"answer", 0}});
    auto bare = [](std::string s) {
      s = normalize_words(s);
      if (s.rfind("the ", 0) == 0) s = s.substr(4);
      return s;
    };
    if (bare(*ans) != bare(t.verifier["answer"].get<std::string>()))
      return fail("wrong entity '" + ans->substr(0, 60) + "'", {{"answer", 0}});
    return pass("the right entity", {{"answer", 1}});
  }

 private:
  // Follows the documents: for each hop, search for the current entity, open its document (or,
  // at hop `twin_at`, its look-alike's), and read the entity the relation leads to from the text.
  // `stop_after` >= 0 answers early. Nothing is read from the gold chain but the start.
  Episode run(const Task& t, int stop_after, int twin_at, sandbox::Client* sb) const {
    Environment env(*this, t, sb);
    Trajectory tr(env);
    const json& v = t.verifier;
    const json& docs = t.environment["documents"];
    int hops = static_cast<int>(v["relations"].size());
    std::string current = v["chain"][0];
    int limit = stop_after >= 0 ? stop_after : hops;
    bool demo = stop_after < 0 && twin_at < 0;
    for (int h = 0; h < limit; ++h) {
      std::string rel = v["relations"][static_cast<size_t>(h)];
      json hits = tr.call("search", {{"query", current + " " + rel}});
      int64_t id = -1;
      for (const auto& hit : hits)
        if (hit.is_object() && hit.value("title", "") == current) id = hit["id"];
      if (demo)
        SHOAL_CHECK(id > 0, "search seed {}: '{}' is not in the top results: {}", t.seed, current,
                    hits.dump());
      if (id < 0)
        for (const auto& d : docs)
          if (d["title"] == current) id = d["id"];
      if (h == twin_at) id = v["twin_docs"][static_cast<size_t>(h)];
      json doc = tr.call("open_document", {{"id", id}});
      std::string text = doc.value("text", ""), next;
      for (const auto& d : docs) {
        std::string title = d["title"];
        if (title != doc.value("title", "") && mentions(text, title) &&
            relation_kind_matches(rel, title))
          next = title;
      }
      SHOAL_CHECK(!next.empty(), "search seed {}: document {} names no {}", t.seed, id, rel);
      current = next;
    }
    if (!demo && normalize_words(current) == normalize_words(v["answer"].get<std::string>()))
      return run(t, hops - 1, -1, sb);  // the look-alike led to the same place: stop early instead
    tr.say("Following the documents, the answer is " + current + ".\n" + answer_line(current));
    return tr.take();
  }

  // `name` appears in `text` as whole words.
  static bool mentions(const std::string& text, const std::string& name) {
    for (size_t at = text.find(name); at != std::string::npos; at = text.find(name, at + 1)) {
      bool left = at == 0 || !std::isalnum(static_cast<unsigned char>(text[at - 1]));
      size_t end = at + name.size();
      bool right = end >= text.size() || !std::isalnum(static_cast<unsigned char>(text[end]));
      if (left && right) return true;
    }
    return false;
  }

  // Whether `title` names an entity of the kind the relation leads to (by its name's shape).
  static bool relation_kind_matches(const std::string& rel, const std::string& title) {
    auto ends = [&](const std::string& s) {
      return title.size() >= s.size() && title.compare(title.size() - s.size(), s.size(), s) == 0;
    };
    bool town = ends("holm") || ends("ford") || ends("mere") || ends("stad");
    bool region = ends("ia") && title.find(' ') == std::string::npos;
    bool org = ends(" Works") || ends(" Guild") || ends(" Institute") || ends(" Foundry");
    bool person = !town && !region && !org;
    if (rel == "founder" || rel == "governor") return person;
    if (rel == "headquarters" || rel == "birthplace") return town;
    if (rel == "school") return org;
    return region;
  }
};

}  // namespace

std::unique_ptr<Family> make_search_family() {
  return std::make_unique<SearchFamily>();
}

}  // namespace shoal::tasks
