// bench_tokenizer: single-thread encode throughput of shoal's byte-level BPE on a multi-megabyte
// mixed document, against the JS port @lenml/tokenizers (transformers.js) on the same text and
// tokenizer.json in the same run. Prints MB/s for both, the ratio, and how many documents the two
// encode differently. The document is deterministic: half real text (this repo's sources and docs,
// the golden tokenizer texts), half generated multilingual prose (seeded: Zipf-distributed words
// in Latin with diacritics, Cyrillic, Greek, Arabic, Devanagari, Hangul, kana, CJK runs, digits,
// emoji). Not a test: correctness is tests/engine/tokenizer.
//
//   bench_tokenizer [--tokenizer DIR] [--mb N] [--runs N] [--js-runs N] [--no-js] [--repo DIR]
// The JS side needs node and npm: @lenml/tokenizers is installed (npm install, pinned in
// bench/js/package.json) into <data dir>/bench-js on first use.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The documents, in a fixed order: the golden tokenizer texts (multilingual: CJK, Cyrillic, Arabic,
// emoji, code, licences), then every source/doc file of the repo sorted by path.
std::vector<std::string> unique_documents(const fs::path& repo) {
  std::vector<std::string> docs;
  std::ifstream cases(repo / "tests/data/tokenizer/deepseek_v3_cases.jsonl");
  std::string line;
  while (std::getline(cases, line)) docs.push_back(nlohmann::json::parse(line)["text"]);
  SHOAL_CHECK(!docs.empty(), "{}: no golden tokenizer cases found",
              (repo / "tests/data/tokenizer/deepseek_v3_cases.jsonl").string());
  std::vector<fs::path> files;
  for (const char* dir :
       {"base", "bench", "cli", "configs", "docs", "engine", "kernels", "scripts", "tests"}) {
    if (!fs::is_directory(repo / dir)) continue;
    for (auto& e : fs::recursive_directory_iterator(repo / dir)) {
      if (!e.is_regular_file() || e.file_size() > (1 << 20)) continue;
      std::string rel = fs::relative(e.path(), repo).string();
      if (rel.find("node_modules") != std::string::npos || rel.rfind("tests/data", 0) == 0)
        continue;
      std::string ext = e.path().extension().string();
      if (ext == ".cpp" || ext == ".h" || ext == ".cu" || ext == ".md" || ext == ".json" ||
          ext == ".mjs" || ext == ".sh" || e.path().filename() == "CMakeLists.txt" ||
          rel.rfind("scripts/", 0) == 0)
        files.push_back(e.path());
    }
  }
  for (const char* f : {"README.md", "DEVELOPERS.md", "CMakeLists.txt"})
    if (fs::exists(repo / f)) files.push_back(repo / f);
  std::sort(files.begin(), files.end());
  for (auto& f : files) {
    std::string s = read_all(f);
    if (utf8::is_valid(s)) docs.push_back(std::move(s));
  }
  return docs;
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

// Generated multilingual documents: each script has a vocabulary of random words drawn Zipf-like
// (so words repeat as in real text); CJK and kana come as unspaced runs with their own punctuation.
std::vector<std::string> generated_documents(size_t target_bytes, uint32_t seed) {
  struct Script {
    std::vector<std::pair<char32_t, char32_t>> ranges;
    bool spaced;  // words separated by spaces (not CJK/kana)
  };
  const std::vector<Script> scripts = {
      {{{'a', 'z'}, {'a', 'z'}, {'a', 'z'}, {0xE0, 0xFC}}, true},  // Latin, some diacritics
      {{{0x430, 0x44F}}, true},                                    // Cyrillic
      {{{0x3B1, 0x3C9}}, true},                                    // Greek
      {{{0x627, 0x64A}}, true},                                    // Arabic
      {{{0x915, 0x939}, {0x93E, 0x94C}}, true},                    // Devanagari with vowel signs
      {{{0xAC00, 0xB7FF}}, true},                                  // Hangul syllables
      {{{0x4E00, 0x5FFF}}, false},                                 // CJK ideographs
      {{{0x3041, 0x3096}, {0x30A1, 0x30FA}, {0x4E00, 0x4FFF}}, false},  // Japanese
  };
  std::mt19937 rng(seed);
  auto uniform = [&](size_t n) { return size_t(rng() % n); };
  // Per script, 4000 words; word k is picked with weight ~ 1/(k+1) (Zipf).
  std::vector<std::vector<std::string>> vocab(scripts.size());
  for (size_t s = 0; s < scripts.size(); ++s) {
    for (int w = 0; w < 4000; ++w) {
      std::string word;
      size_t len = 1 + uniform(scripts[s].spaced ? 9 : 4);
      for (size_t i = 0; i < len; ++i) {
        auto [lo, hi] = scripts[s].ranges[uniform(scripts[s].ranges.size())];
        append_utf8(lo + char32_t(uniform(hi - lo + 1)), word);
      }
      vocab[s].push_back(std::move(word));
    }
  }
  std::vector<double> cdf(4000);
  double acc = 0;
  for (size_t k = 0; k < cdf.size(); ++k) cdf[k] = acc += 1.0 / double(k + 1);
  auto zipf = [&]() {
    double x = std::uniform_real_distribution<double>(0, acc)(rng);
    return size_t(std::lower_bound(cdf.begin(), cdf.end(), x) - cdf.begin());
  };
  const char* emoji[] = {"😀", "🎉", "👍🏽", "🚀", "❤️", "👩‍💻"};
  std::vector<std::string> docs;
  size_t bytes = 0;
  while (bytes < target_bytes) {
    std::string doc;
    size_t s = uniform(scripts.size());
    for (int sentence = 0, n = 3 + int(uniform(8)); sentence < n; ++sentence) {
      for (int w = 0, m = 4 + int(uniform(14)); w < m; ++w) {
        if (scripts[s].spaced && w > 0) doc += ' ';
        doc += vocab[s][zipf()];
        size_t r = uniform(40);
        if (r == 0) {
          if (scripts[s].spaced) doc += ' ';
          doc += std::to_string(rng() % 100000);
        }
        if (r == 1) doc += emoji[uniform(6)];
        if (r == 2) doc += scripts[s].spaced ? "," : "，";
      }
      doc += scripts[s].spaced ? ". " : "。";
    }
    doc += "\n\n";
    bytes += doc.size();
    docs.push_back(std::move(doc));
  }
  return docs;
}

struct JsResult {
  std::vector<double> seconds;
  std::vector<int32_t> whole;
  std::vector<std::vector<int32_t>> docs;
};

// Runs bench/js/bench_tokenizer.mjs; empty result (and a line saying why) when node/npm fail.
std::optional<JsResult> run_js(const fs::path& repo, const fs::path& data,
                               const std::string& tokenizer_dir,
                               const std::vector<std::string>& docs, int runs) {
  fs::path modules = data / "bench-js";
  fs::path pkg = modules / "node_modules/@lenml/tokenizers/package.json";
  if (!fs::exists(pkg)) {
    fs::create_directories(modules);
    fs::copy_file(repo / "bench/js/package.json", modules / "package.json",
                  fs::copy_options::overwrite_existing);
    std::string cmd = "npm install --prefix '" + modules.string() +
                      "' --no-audit --no-fund --silent >/dev/null 2>&1";
    std::printf("installing @lenml/tokenizers into %s (npm install)\n", modules.c_str());
    if (std::system(cmd.c_str()) != 0 || !fs::exists(pkg)) {
      std::printf("JS baseline unavailable: '%s' failed\n", cmd.c_str());
      return std::nullopt;
    }
  }
  fs::path tmp = fs::temp_directory_path() / ("bench_tokenizer_" + std::to_string(getpid()));
  fs::create_directories(tmp);
  {
    std::ofstream out(tmp / "docs.json");
    out << nlohmann::json(docs).dump();
  }
  std::string cmd = "node '" + (repo / "bench/js/bench_tokenizer.mjs").string() + "' --modules '" +
                    modules.string() + "' --tokenizer '" + tokenizer_dir + "' --docs '" +
                    (tmp / "docs.json").string() + "' --out '" + (tmp / "out.json").string() +
                    "' --runs " + std::to_string(runs);
  int rc = std::system(cmd.c_str());
  std::optional<JsResult> r;
  if (rc != 0 || !fs::exists(tmp / "out.json")) {
    std::printf("JS baseline unavailable: node exited with %d\n", rc);
  } else {
    auto j = nlohmann::json::parse(read_all(tmp / "out.json"));
    r = JsResult{j["seconds"].get<std::vector<double>>(), j["whole"].get<std::vector<int32_t>>(),
                 j["docs"].get<std::vector<std::vector<int32_t>>>()};
  }
  fs::remove_all(tmp);
  return r;
}

int run(int argc, char** argv) {
  // The repo root: this file is <repo>/bench/bench_tokenizer.cpp.
  fs::path repo = fs::path(__FILE__).parent_path().parent_path();
  const char* env_data = std::getenv("SHOAL_DATA_DIR");
  std::string tokenizer_dir;
  double mb = 4;
  int runs = 5, js_runs = 3;
  bool js = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      SHOAL_CHECK(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--tokenizer")
      tokenizer_dir = next();
    else if (a == "--mb")
      mb = std::stod(next());
    else if (a == "--runs")
      runs = std::stoi(next());
    else if (a == "--js-runs")
      js_runs = std::stoi(next());
    else if (a == "--no-js")
      js = false;
    else if (a == "--repo")
      repo = next();
    else
      SHOAL_FAIL("unknown option {} (see the top of bench/bench_tokenizer.cpp)", a);
  }
  fs::path data = env_data ? fs::path(env_data) : repo / "data/cache";
  if (tokenizer_dir.empty()) tokenizer_dir = (data / "tokenizers/deepseek_v3").string();

  // The document: half real text (the unique real documents, repeated in seeded shuffled order),
  // half generated multilingual prose; real and generated documents alternate.
  std::vector<std::string> real = unique_documents(repo);
  size_t real_bytes = 0;
  for (auto& d : real) real_bytes += d.size();
  std::vector<std::string> generated = generated_documents(size_t(mb * 1e6 / 2), 42);
  std::vector<std::string> real_all = real;
  std::mt19937 rng(1234);
  for (size_t bytes = real_bytes; bytes < mb * 1e6 / 2;) {
    std::vector<std::string> copy = real;
    std::shuffle(copy.begin(), copy.end(), rng);
    for (auto& d : copy) {
      bytes += d.size();
      real_all.push_back(std::move(d));
    }
  }
  std::vector<std::string> all;
  for (size_t i = 0; i < std::max(real_all.size(), generated.size()); ++i) {
    if (i < real_all.size()) all.push_back(real_all[i]);
    if (i < generated.size()) all.push_back(generated[i]);
  }
  std::string text, real_text, generated_text;
  for (auto& d : all) text += d;
  for (auto& d : real_all) real_text += d;
  for (auto& d : generated) generated_text += d;
  size_t non_ascii = 0;
  for (unsigned char c : text) non_ascii += c >= 0x80;
  std::printf(
      "text: %.2f MB, %.0f%% non-ASCII bytes: %.2f MB real (%zu documents: repo sources "
      "and docs, golden tokenizer texts; %.2f MB unique), %.2f MB generated multilingual\n",
      text.size() / 1e6, 100.0 * non_ascii / text.size(), real_text.size() / 1e6, real.size(),
      real_bytes / 1e6, generated_text.size() / 1e6);

  // shoal: a freshly loaded tokenizer per run, so the word cache starts cold every time.
  auto measure = [&](const std::string& t, std::vector<int32_t>* ids_out) {
    std::vector<double> secs;
    std::vector<int32_t> ids;
    for (int r = 0; r < runs; ++r) {
      Tokenizer tok = Tokenizer::load(tokenizer_dir);
      auto t0 = Clock::now();
      ids = tok.encode(t);
      secs.push_back(since(t0));
    }
    if (ids_out) *ids_out = ids;
    return std::pair{t.size() / 1e6 / median(secs), ids.size()};
  };
  {
    auto t0 = Clock::now();
    Tokenizer tok = Tokenizer::load(tokenizer_dir);
    std::printf("shoal load: %.2f s (tokenizer.json, %d ids)\n", since(t0), tok.vocab_size());
  }
  std::vector<int32_t> ids;
  auto [shoal_mbps, n_ids] = measure(text, &ids);
  std::printf("shoal encode: %.1f MB/s (median of %d runs, one thread, %zu ids, %.2f bytes/id)\n",
              shoal_mbps, runs, n_ids, double(text.size()) / n_ids);
  std::printf("  real part alone: %.1f MB/s; generated part alone: %.1f MB/s\n",
              measure(real_text, nullptr).first, measure(generated_text, nullptr).first);
  {  // Where the time goes: the three PCRE2 split passes alone (no added tokens, no BPE).
    PreTokenizer pre(deepseek_v3_split_rules());
    std::vector<double> secs;
    size_t pieces = 0;
    for (int r = 0; r < runs; ++r) {
      pieces = 0;
      auto t0 = Clock::now();
      pre.split(text, [&](std::string_view) { ++pieces; });
      secs.push_back(since(t0));
    }
    std::printf("  pre-tokenizer alone: %.1f MB/s (%zu pieces, %.1f ns/piece)\n",
                text.size() / 1e6 / median(secs), pieces, median(secs) * 1e9 / pieces);
  }
  if (!js) return 0;

  auto r = run_js(repo, data, tokenizer_dir, all, js_runs);
  if (!r) return 0;
  double js_mbps = text.size() / 1e6 / median(r->seconds);
  std::printf("@lenml/tokenizers encode: %.2f MB/s (median of %d runs, %.3f s)\n", js_mbps, js_runs,
              median(r->seconds));
  std::printf("ratio shoal / JS: %.1fx\n", shoal_mbps / js_mbps);

  Tokenizer tok = Tokenizer::load(tokenizer_dir);
  size_t differ = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    if (tok.encode(all[i]) == r->docs[i]) continue;
    if (++differ <= 3)
      std::printf("  differs: document %zu (%.60s...)\n", i, all[i].substr(0, 60).c_str());
  }
  std::printf("ids identical: whole text %s; documents encoded differently: %zu of %zu\n",
              r->whole == ids ? "yes" : "NO", differ, all.size());
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  try {
    return shoal::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
    return 1;
  }
}
