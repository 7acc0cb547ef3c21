// Tests for engine/safetensors: write/read round trips, sharded checkpoints, the golden tiny
// checkpoint, every class of malformed file, and a seeded fuzz over header corruptions.
#include "engine/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include <unistd.h>

namespace shoal {
namespace {
namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           fmt::format("shoal_st_{}_{}_{}", info->name(), ::getpid(), std::random_device{}());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes raw bytes: 8-byte little-endian header length, the header, then the data.
  std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                        uint64_t header_len_override = UINT64_MAX) {
    uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = char((n >> (8 * i)) & 0xff);
    bytes += header + data;
    std::ofstream(path(name), std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    return path(name);
  }

  fs::path dir_;
};

Tensor f32_tensor(const Shape& shape, float start) {
  Tensor t = Tensor::empty(shape, DType::f32);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = start + float(i);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.dtype() == cb.dtype() && ca.shape() == cb.shape() &&
         std::memcmp(ca.raw(), cb.raw(), ca.nbytes()) == 0;
}

// Expects f() to throw shoal::Error whose message contains every one of `needles`.
template <typename F>
void expect_error(F f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& n : needles)
      EXPECT_NE(e.message().find(n), std::string::npos) << "'" << n << "' not in: " << e.message();
  }
}

TEST_F(SafetensorsTest, RoundTripSeveralDtypes) {
  std::vector<std::pair<std::string, Tensor>> ts;
  ts.emplace_back("a.f32", f32_tensor({2, 3}, 1.0f));
  ts.emplace_back("b.bf16", f32_tensor({5}, -2.0f).to(DType::bf16));
  ts.emplace_back("c.f8", f32_tensor({3, 1}, 0.5f).to(DType::f8e4m3));  // 3 bytes: misaligns next
  ts.emplace_back("d.i64", f32_tensor({2, 2}, 7.0f).to(DType::i64));
  ts.emplace_back("e.f16.strided", f32_tensor({3, 4}, 0.0f).to(DType::f16).transpose(0, 1));
  ts.emplace_back("f.scalar", f32_tensor({}, 42.0f));
  ts.emplace_back("g.empty", Tensor::empty({0, 4}, DType::f64));
  ts.emplace_back("h.u8", f32_tensor({3}, 250.0f).to(DType::u8));
  std::string p = path("round.safetensors");
  write_safetensors(p, ts, {{"format", "pt"}, {"note", "x"}});
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  // The data section starts 8-byte aligned.
  std::ifstream in(p, std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);

  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.path(), p);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}}));
  std::vector<std::string> names;
  for (auto& [n, t] : ts) names.push_back(n);
  EXPECT_EQ(f.names(), names);  // already sorted
  for (auto& [n, t] : ts) {
    ASSERT_TRUE(f.has(n));
    EXPECT_EQ(f.info(n).dtype, t.dtype()) << n;
    EXPECT_EQ(f.info(n).shape, t.shape()) << n;
    Tensor got = f.get(n);
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(same_bytes(got, t)) << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.raw()) % dtype_size(got.dtype()), 0u) << n;
  }
  EXPECT_FALSE(f.has("nope"));
  expect_error([&] { f.get("nope"); }, {p, "nope"});

  // Tensors outlive the file object (they hold the mapping).
  Tensor keep = f.get("a.f32");
  f = SafetensorsFile();
  EXPECT_EQ(keep.f32()[5], 6.0f);
}

TEST_F(SafetensorsTest, MisalignedDataIsCopied) {
  // Hand-made header whose f32 tensor starts at data offset 1: get() must return an aligned copy.
  std::string header = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("y":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  float vals[2] = {1.5f, -3.0f};
  std::string data(1, '\x07');
  data.append(reinterpret_cast<const char*>(vals), 8);
  SafetensorsFile f = SafetensorsFile::open(write_raw("mis.safetensors", header, data));
  Tensor y = f.get("y");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(y.raw()) % 4, 0u);
  EXPECT_EQ(y.f32()[0], 1.5f);
  EXPECT_EQ(y.f32()[1], -3.0f);
  EXPECT_EQ(f.get("x").data<uint8_t>()[0], 7);
}

TEST_F(SafetensorsTest, ReadsGoldenTinyCheckpoint) {
  CheckpointReader r = CheckpointReader::open(SHOAL_TEST_DATA "/tiny_v3");
  ASSERT_TRUE(r.has("model.embed_tokens.weight"));
  EXPECT_EQ(r.info("model.embed_tokens.weight").shape, (Shape{1024, 64}));
  EXPECT_EQ(r.info("model.embed_tokens.weight").dtype, DType::f32);
  EXPECT_TRUE(r.has("model.layers.1.mlp.experts.7.down_proj.weight"));
  EXPECT_TRUE(r.has("model.layers.1.mlp.gate.e_score_correction_bias"));
  EXPECT_EQ(r.file_of("lm_head.weight"), SHOAL_TEST_DATA "/tiny_v3/model.safetensors");
  Tensor norm = r.get("model.norm.weight");
  EXPECT_EQ(norm.shape(), (Shape{64}));
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(std::isfinite(norm.f32()[i]));
}

TEST_F(SafetensorsTest, ShardedWriteAndRead) {
  std::vector<std::pair<std::string, Tensor>> ts;
  for (int i = 0; i < 7; ++i)
    ts.emplace_back(fmt::format("layer.{}.weight", i),
                    f32_tensor({4, 8}, float(i * 100)));  // 128 B
  ts.emplace_back("big", f32_tensor({100}, 0.0f));        // 400 B: larger than a shard, own shard
  std::string ckpt = path("ckpt");
  write_checkpoint_shards(ckpt, ts, 300);  // two 128-byte tensors per shard

  std::vector<std::string> expect_files = {
      "model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
      "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
      "model-00005-of-00005.safetensors", "model.safetensors.index.json"};
  std::vector<std::string> files;
  for (auto& de : fs::directory_iterator(ckpt)) files.push_back(de.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, expect_files);

  nlohmann::json index =
      nlohmann::json::parse(std::ifstream(ckpt + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 7 * 128 + 400);
  EXPECT_EQ(index["weight_map"]["layer.0.weight"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.2.weight"], "model-00002-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00005-of-00005.safetensors");
  EXPECT_EQ(
      SafetensorsFile::open(ckpt + "/model-00003-of-00005.safetensors").metadata().at("format"),
      "pt");

  CheckpointReader r = CheckpointReader::open(ckpt);
  EXPECT_EQ(r.names().size(), ts.size());
  EXPECT_EQ(r.files().size(), 5u);
  for (auto& [n, t] : ts) {
    ASSERT_TRUE(r.has(n)) << n;
    EXPECT_TRUE(same_bytes(r.get(n), t)) << n;
  }
  EXPECT_EQ(r.file_of("layer.6.weight"), ckpt + "/model-00004-of-00005.safetensors");
  expect_error([&] { r.get("missing.weight"); }, {"missing.weight"});

  // Re-saving everything into one file replaces the sharded layout (no stale index or shards).
  write_checkpoint_shards(ckpt, ts, 1 << 20);
  files.clear();
  for (auto& de : fs::directory_iterator(ckpt)) files.push_back(de.path().filename().string());
  EXPECT_EQ(files, std::vector<std::string>{"model.safetensors"});
  CheckpointReader single = CheckpointReader::open(ckpt);
  EXPECT_EQ(single.names().size(), ts.size());
  EXPECT_TRUE(same_bytes(single.get("big"), ts.back().second));
  EXPECT_EQ(SafetensorsFile::open(ckpt + "/model.safetensors").metadata().at("format"), "pt");
}

TEST_F(SafetensorsTest, DirectoryOfLooseFiles) {
  write_safetensors(path("b.safetensors"), {{"y", f32_tensor({2}, 0)}});
  write_safetensors(path("a.safetensors"), {{"x", f32_tensor({2}, 0)}});
  CheckpointReader r = CheckpointReader::open(dir_.string());
  EXPECT_EQ(r.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(r.file_of("x"), path("a.safetensors"));
  // A single-file path works too.
  EXPECT_EQ(CheckpointReader::open(path("b.safetensors")).names(), std::vector<std::string>{"y"});
  // The same name in two files is an error naming both.
  write_safetensors(path("c.safetensors"), {{"x", f32_tensor({2}, 0)}});
  expect_error([&] { CheckpointReader::open(dir_.string()); },
               {"'x'", "a.safetensors", "c.safetensors"});
}

TEST_F(SafetensorsTest, CheckpointErrors) {
  expect_error([&] { CheckpointReader::open(path("nowhere")); }, {"nowhere", "does not exist"});
  expect_error([&] { CheckpointReader::open(dir_.string()); }, {"no safetensors files in"});

  // Index pointing at a missing shard.
  std::vector<std::pair<std::string, Tensor>> ts = {{"a", f32_tensor({64}, 0)},
                                                    {"b", f32_tensor({64}, 1)}};
  std::string ckpt = path("ck");
  write_checkpoint_shards(ckpt, ts, 256);
  ASSERT_TRUE(fs::exists(ckpt + "/model-00002-of-00002.safetensors"));
  fs::remove(ckpt + "/model-00002-of-00002.safetensors");
  expect_error([&] { CheckpointReader::open(ckpt); },
               {"model-00002-of-00002.safetensors", "'b'", "missing"});

  // Index naming a tensor its shard does not hold.
  write_checkpoint_shards(ckpt, ts, 256);
  std::ofstream(ckpt + "/model.safetensors.index.json")
      << R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
      << R"("b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}})";
  expect_error([&] { CheckpointReader::open(ckpt); }, {"'c'", "model-00001-of-00002"});

  std::ofstream(ckpt + "/model.safetensors.index.json") << R"({"weight_map":{"a":"../x"}})";
  expect_error([&] { CheckpointReader::open(ckpt); }, {"'a'", "../x"});
  std::ofstream(ckpt + "/model.safetensors.index.json") << "{not json";
  expect_error([&] { CheckpointReader::open(ckpt); }, {"model.safetensors.index.json", "JSON"});
  std::ofstream(ckpt + "/model.safetensors.index.json") << R"({"metadata":{}})";
  expect_error([&] { CheckpointReader::open(ckpt); }, {"weight_map"});
}

TEST_F(SafetensorsTest, WriteErrors) {
  std::string bad = path("no/such/dir/x.safetensors");
  expect_error([&] { write_safetensors(bad, {{"x", f32_tensor({1}, 0)}}); }, {bad});
  EXPECT_FALSE(fs::exists(bad + ".tmp"));
  std::string p = path("dup.safetensors");
  expect_error(
      [&] {
        write_safetensors(p, {{"x", f32_tensor({1}, 0)}, {"x", f32_tensor({1}, 0)}});
      },
      {p, "'x'"});
  expect_error([&] { write_safetensors(p, {{"u", Tensor()}}); }, {p, "'u'", "undefined"});
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  // A failed write leaves an existing file untouched.
  write_safetensors(p, {{"x", f32_tensor({1}, 5)}});
  expect_error([&] { write_safetensors(p, {{"__metadata__", f32_tensor({1}, 0)}}); }, {p});
  EXPECT_EQ(SafetensorsFile::open(p).get("x").f32()[0], 5.0f);
}

TEST_F(SafetensorsTest, MalformedFiles) {
  const std::string ok_header =
      R"({"x.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  const std::string data16(16, '\0');
  auto open = [&](const std::string& header, const std::string& data = std::string(16, '\0')) {
    return [p = write_raw("bad.safetensors", header, data)] { SafetensorsFile::open(p); };
  };
  ASSERT_NO_THROW(open(ok_header)());

  // Truncated files.
  std::ofstream(path("short.safetensors")) << "abc";
  expect_error([&] { SafetensorsFile::open(path("short.safetensors")); },
               {"short.safetensors", "truncated"});
  std::ofstream(path("empty.safetensors"));
  expect_error([&] { SafetensorsFile::open(path("empty.safetensors")); }, {"truncated"});
  expect_error([&] { SafetensorsFile::open(path("absent.safetensors")); },
               {"absent.safetensors", "cannot open"});
  // Data section cut short: the offsets run past it.
  expect_error(open(ok_header, std::string(12, '\0')), {"'x.weight'", "past the data section"});

  // Header length past EOF (both slightly and absurdly).
  std::string p = write_raw("len.safetensors", ok_header, data16, ok_header.size() + 17);
  expect_error([&] { SafetensorsFile::open(p); }, {"len.safetensors", "header length"});
  p = write_raw("len2.safetensors", ok_header, data16, UINT64_MAX - 3);
  expect_error([&] { SafetensorsFile::open(p); }, {"header length"});

  // Invalid JSON / wrong top-level type / duplicates.
  expect_error(open(R"({"x.weight":{"dtype":"F32",)"), {"bad.safetensors", "not valid JSON"});
  expect_error(open("[1,2]"), {"not an object"});
  expect_error(open(""), {"not valid JSON"});
  expect_error(open(ok_header.substr(0, ok_header.size() - 1) + R"(,"x.weight":{}})"),
               {"'x.weight'", "twice"});

  // Per-tensor fields.
  expect_error(open(R"({"x.weight":{"dtype":"F4","shape":[2,2],"data_offsets":[0,16]}})"),
               {"'x.weight'", "unknown dtype 'F4'"});
  expect_error(open(R"({"x.weight":{"dtype":7,"shape":[2,2],"data_offsets":[0,16]}})"),
               {"'x.weight'", "dtype"});
  expect_error(open(R"({"x.weight":{"shape":[2,2],"data_offsets":[0,16]}})"),
               {"'x.weight'", "missing 'dtype'"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}})"),
               {"'x.weight'", "shape"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[2,2.5],"data_offsets":[0,16]}})"),
               {"'x.weight'", "shape"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":"2x2","data_offsets":[0,16]}})"),
               {"'x.weight'", "shape"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0]}})"),
               {"'x.weight'", "data_offsets"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[-1,15]}})"),
               {"'x.weight'", "data_offsets"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}})"),
               {"'x.weight'", "begin > end"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}})"),
               {"'x.weight'", "past the data section"});
  // Size mismatch: the exact message format.
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})"),
               {"bad.safetensors: tensor 'x.weight': data_offsets [0, 12] hold 12 bytes but "
                "F32[2, 2] needs 16"});
  // numel * size overflows 64 bits (and would wrap to 0 bytes without the check).
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[4611686018427387904,4],)"
                    R"("data_offsets":[0,0]}})"),
               {"'x.weight'", "64 bits"});
  expect_error(open(R"({"x.weight":{"dtype":"F32","shape":[18446744073709551615],)"
                    R"("data_offsets":[0,16]}})"),
               {"'x.weight'", "shape"});
  expect_error(open(R"({"x.weight":[1,2]})"), {"'x.weight'", "expected an object"});
  // __metadata__ must map strings to strings.
  expect_error(open(R"({"__metadata__":{"format":1}})"), {"__metadata__", "format"});
  expect_error(open(R"({"__metadata__":[]})"), {"__metadata__"});
  EXPECT_NO_THROW(open(R"({"__metadata__":{"format":"pt"}})", "")());
}

// ~2000 seeded corruptions of a valid file: open() either succeeds with consistent results or
// throws shoal::Error. Anything else (another exception type, a crash) fails the test.
TEST_F(SafetensorsTest, FuzzedHeadersNeverCrash) {
  std::string good = path("good.safetensors");
  write_safetensors(good,
                    {{"a", f32_tensor({2, 3}, 0)},
                     {"b", f32_tensor({4}, 1).to(DType::bf16)},
                     {"c", f32_tensor({3}, 2).to(DType::f8e4m3)}},
                    {{"format", "pt"}});
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  std::mt19937_64 rng(20240611);
  const std::string fuzz = path("fuzz.safetensors");
  int opened = 0, rejected = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string b = bytes;
    int kind = int(rng() % 5);
    size_t region = size_t(8 + header_len);
    if (kind == 0) {  // flip 1-4 random bits in the length + header
      for (int k = 0, n = 1 + int(rng() % 4); k < n; ++k)
        b[rng() % region] ^= char(1 << (rng() % 8));
    } else if (kind == 1) {  // overwrite header bytes with interesting characters
      const char chars[] = "{}[]\":,-0123456789eE.\\ \x80\xff\0";
      for (int k = 0, n = 1 + int(rng() % 4); k < n; ++k)
        b[8 + rng() % header_len] = chars[rng() % (sizeof chars - 1)];
    } else if (kind == 2) {  // truncate anywhere
      b.resize(rng() % b.size());
    } else if (kind == 3) {  // random header length: small, near the real one, or huge
      uint64_t n = rng() % 3 == 0   ? rng()
                   : rng() % 3 == 0 ? header_len + (rng() % 64) - 32
                                    : rng() % (b.size() + 16);
      std::memcpy(b.data(), &n, 8);
    } else {  // change a digit inside the header (shapes / offsets stay syntactically valid)
      std::vector<size_t> digits;
      for (size_t i = 8; i < region; ++i)
        if (b[i] >= '0' && b[i] <= '9') digits.push_back(i);
      b[digits[rng() % digits.size()]] = char('0' + rng() % 10);
    }
    std::ofstream(fuzz, std::ios::binary | std::ios::trunc)
        .write(b.data(), std::streamsize(b.size()));
    try {
      SafetensorsFile f = SafetensorsFile::open(fuzz);
      ++opened;
      for (const auto& n : f.names()) {
        Tensor t = f.get(n);
        ASSERT_EQ(t.shape(), f.info(n).shape);
        ASSERT_EQ(t.dtype(), f.info(n).dtype);
        // Touch every byte: it must be inside the mapping.
        volatile unsigned char sink = 0;
        const auto* p = static_cast<const unsigned char*>(t.raw());
        for (size_t i = 0; i < t.nbytes(); ++i) sink = sink ^ p[i];
        (void)sink;
      }
    } catch (const Error& e) {
      ++rejected;
      ASSERT_NE(e.message().find(fuzz), std::string::npos) << e.message();
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": non-shoal exception: " << e.what();
    }
  }
  EXPECT_GT(opened, 0);
  EXPECT_GT(rejected, 1000);
}

}  // namespace
}  // namespace shoal
