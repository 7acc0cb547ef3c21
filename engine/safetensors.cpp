// Safetensors reading and writing. The header is untrusted input: every field is checked (types,
// ranges, overflow, sizes) before a tensor is handed out, and every error names the file and the
// tensor. Writes go through a temporary file and a rename so a crash never leaves a partial file.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace shoal {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string errno_text() {
  return std::strerror(errno);
}

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// The entries of a directory, without the throwing iterator increments of a range-for.
std::vector<fs::path> list_dir(const std::string& dir) {
  std::vector<fs::path> r;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) r.push_back(it->path());
  SHOAL_CHECK(!ec, "{}: cannot list directory: {}", dir, ec.message());
  return r;
}

// The whole file, mapped read-only; unmapped when the last tensor or file object lets go.
struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr) munmap(addr, size);
  }
};

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

const char* json_type(const json& v) {
  return v.type_name();
}

// A non-negative JSON integer as uint64 (shapes and offsets); false for anything else.
bool as_index(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    *out = uint64_t(s);
    return true;
  }
  return false;
}

// Parses a header, rejecting duplicate keys (nlohmann would silently keep the last one).
json parse_header(const char* begin, const char* end, const std::string& path) {
  std::vector<std::set<std::string>> open_objects;
  std::string top_key;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (depth == 1) top_key = key;
        if (!open_objects.empty() && !open_objects.back().insert(key).second) {
          if (depth == 1) SHOAL_FAIL("{}: header has key '{}' twice", path, key);
          SHOAL_FAIL("{}: tensor '{}': key '{}' appears twice", path, top_key, key);
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    SHOAL_FAIL("{}: header is not valid JSON: {}", path, e.what());
  }
}

// Overflow-checked numel * element size of a validated shape.
bool byte_size(const Shape& shape, DType dtype, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, uint64_t(d), &n)) return false;
  return !__builtin_mul_overflow(n, uint64_t(dtype_size(dtype)), out);
}

std::string type_and_shape(const TensorInfo& info) {
  return fmt::format("{}{}", safetensors_name(info.dtype), shape_str(info.shape));
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) SHOAL_FAIL("{}: write failed: {}", path, errno_text());
    if (w == 0) SHOAL_FAIL("{}: short write (no space left?)", path);
    p += w;
    n -= size_t(w);
  }
}

// Writes `path` atomically: `fill(fd, tmp_path)` writes the contents of `path + ".tmp"`, which is
// then fsync'ed and renamed over `path`. Any failure removes the temporary file and rethrows.
template <typename Fill>
void write_file_atomically(const std::string& path, Fill fill) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SHOAL_CHECK(fd >= 0, "{}: cannot open {} for writing: {}", path, tmp, errno_text());
  try {
    fill(fd, tmp);
    SHOAL_CHECK(::fsync(fd) == 0, "{}: fsync failed: {}", tmp, errno_text());
    int rc = ::close(fd);
    fd = -1;
    SHOAL_CHECK(rc == 0, "{}: close failed: {}", tmp, errno_text());
    SHOAL_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot rename {} over it: {}", path,
                tmp, errno_text());
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable (best effort: some filesystems refuse fsync on directories).
  fs::path parent = fs::path(path).parent_path();
  int dfd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SHOAL_CHECK(fd >= 0, "{}: cannot open: {}", path, errno_text());
  FdCloser closer{fd};
  struct stat st;
  SHOAL_CHECK(::fstat(fd, &st) == 0, "{}: cannot stat: {}", path, errno_text());
  SHOAL_CHECK(S_ISREG(st.st_mode), "{}: not a regular file", path);
  uint64_t file_size = uint64_t(st.st_size);
  SHOAL_CHECK(file_size >= 8,
              "{}: truncated: {} bytes, but a safetensors file starts with an 8-byte header length",
              path, file_size);

  auto mapping = std::make_shared<Mapping>();
  void* addr = ::mmap(nullptr, size_t(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  SHOAL_CHECK(addr != MAP_FAILED, "{}: mmap of {} bytes failed: {}", path, file_size, errno_text());
  mapping->addr = addr;
  mapping->size = size_t(file_size);
  const auto* bytes = static_cast<const unsigned char*>(addr);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  SHOAL_CHECK(header_len <= file_size - 8,
              "{}: header length {} runs past the end of the file ({} bytes): truncated or not a "
              "safetensors file",
              path, header_len, file_size);
  const char* header = reinterpret_cast<const char*>(bytes) + 8;
  json j = parse_header(header, header + header_len, path);
  SHOAL_CHECK(j.is_object(), "{}: header is a JSON {}, not an object", path, json_type(j));

  uint64_t data_size = file_size - 8 - header_len;
  for (auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      SHOAL_CHECK(v.is_object(), "{}: key '__metadata__': expected an object of strings, got {}",
                  path, json_type(v));
      for (auto& [k, mv] : v.items()) {
        SHOAL_CHECK(mv.is_string(), "{}: key '__metadata__': value of '{}' is a {}, not a string",
                    path, k, json_type(mv));
        f.metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    SHOAL_CHECK(v.is_object(), "{}: tensor '{}': expected an object, got {}", path, name,
                json_type(v));
    Entry e;
    auto dt = v.find("dtype");
    SHOAL_CHECK(dt != v.end(), "{}: tensor '{}': missing 'dtype'", path, name);
    SHOAL_CHECK(dt->is_string(), "{}: tensor '{}': 'dtype' is a {}, not a string", path, name,
                json_type(*dt));
    const auto& dtype_name = dt->get_ref<const std::string&>();
    SHOAL_CHECK(dtype_from_safetensors(dtype_name, &e.info.dtype),
                "{}: tensor '{}': unknown dtype '{}'", path, name, dtype_name);

    auto sh = v.find("shape");
    SHOAL_CHECK(sh != v.end(), "{}: tensor '{}': missing 'shape'", path, name);
    SHOAL_CHECK(sh->is_array(), "{}: tensor '{}': 'shape' is a {}, not an array", path, name,
                json_type(*sh));
    for (const auto& d : *sh) {
      uint64_t n = 0;
      SHOAL_CHECK(as_index(d, &n) && n <= uint64_t(std::numeric_limits<int64_t>::max()),
                  "{}: tensor '{}': shape {} has an entry that is not a non-negative integer", path,
                  name, sh->dump());
      e.info.shape.push_back(int64_t(n));
    }

    auto off = v.find("data_offsets");
    SHOAL_CHECK(off != v.end(), "{}: tensor '{}': missing 'data_offsets'", path, name);
    SHOAL_CHECK(off->is_array() && off->size() == 2 && as_index((*off)[0], &e.begin) &&
                    as_index((*off)[1], &e.end),
                "{}: tensor '{}': data_offsets {} is not [begin, end] of non-negative integers",
                path, name, off->dump());
    SHOAL_CHECK(e.begin <= e.end, "{}: tensor '{}': data_offsets [{}, {}] has begin > end", path,
                name, e.begin, e.end);
    SHOAL_CHECK(e.end <= data_size,
                "{}: tensor '{}': data_offsets [{}, {}] run past the data section ({} bytes)", path,
                name, e.begin, e.end, data_size);
    uint64_t need = 0;
    SHOAL_CHECK(byte_size(e.info.shape, e.info.dtype, &need),
                "{}: tensor '{}': {} has more bytes than fit in 64 bits", path, name,
                type_and_shape(e.info));
    SHOAL_CHECK(e.end - e.begin == need,
                "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {} needs {}", path, name,
                e.begin, e.end, e.end - e.begin, type_and_shape(e.info), need);
    f.entries_.emplace(name, std::move(e));
  }
  f.data_ = reinterpret_cast<const char*>(bytes) + 8 + header_len;
  f.mapping_ = std::move(mapping);
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> r;
  r.reserve(entries_.size());
  for (const auto& kv : entries_) r.push_back(kv.first);
  return r;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  SHOAL_CHECK(it != entries_.end(), "{}: no tensor '{}'", path_, name);
  return it->second;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  return entry(name).info;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const Entry& e = entry(name);
  const char* p = data_ + e.begin;
  size_t elem = dtype_size(e.info.dtype);
  if (reinterpret_cast<uintptr_t>(p) % elem != 0) {
    // Safetensors does not promise alignment; typed access to a misaligned pointer is undefined.
    Tensor t = Tensor::empty(e.info.shape, e.info.dtype);
    std::memcpy(t.raw(), p, size_t(e.end - e.begin));
    return t;
  }
  // The mapping is PROT_READ: the const_cast only satisfies Tensor's interface (see the header).
  return Tensor::borrow(const_cast<char*>(p), e.info.shape, e.info.dtype, Device::cpu, mapping_);
}

// ---------------------------------------------------------------------------------------------
// CheckpointReader

CheckpointReader CheckpointReader::open(const std::string& dir) {
  CheckpointReader r;
  r.dir_ = dir;
  std::error_code ec;
  auto status = fs::status(dir, ec);
  SHOAL_CHECK(fs::exists(status), "checkpoint '{}' does not exist", dir);

  std::string index_path = (fs::path(dir) / kIndexName).string();
  if (fs::is_regular_file(status)) {
    r.files_.push_back(SafetensorsFile::open(dir));
  } else {
    SHOAL_CHECK(fs::is_directory(status), "checkpoint '{}' is neither a directory nor a file", dir);
    if (path_exists(index_path)) {
      json index;
      {
        int fd = ::open(index_path.c_str(), O_RDONLY | O_CLOEXEC);
        SHOAL_CHECK(fd >= 0, "{}: cannot open: {}", index_path, errno_text());
        FdCloser closer{fd};
        std::string text;
        char buf[65536];
        for (;;) {
          ssize_t n = ::read(fd, buf, sizeof buf);
          if (n < 0 && errno == EINTR) continue;
          SHOAL_CHECK(n >= 0, "{}: read failed: {}", index_path, errno_text());
          if (n == 0) break;
          text.append(buf, size_t(n));
        }
        try {
          index = json::parse(text);
        } catch (const json::exception& e) {
          SHOAL_FAIL("{}: not valid JSON: {}", index_path, e.what());
        }
      }
      SHOAL_CHECK(index.is_object(), "{}: expected a JSON object", index_path);
      auto wm = index.find("weight_map");
      SHOAL_CHECK(wm != index.end() && wm->is_object(),
                  "{}: key 'weight_map' missing or not an object", index_path);
      std::map<std::string, size_t> shard_index;  // shard file name -> files_ index
      for (auto& [name, shard] : wm->items()) {
        SHOAL_CHECK(shard.is_string(), "{}: weight_map: tensor '{}' maps to a {}, not a file name",
                    index_path, name, json_type(shard));
        const auto& file = shard.get_ref<const std::string&>();
        fs::path rel(file);
        bool escapes =
            rel.is_absolute() || file.empty() ||
            std::any_of(rel.begin(), rel.end(), [](const fs::path& c) { return c == ".."; });
        SHOAL_CHECK(!escapes,
                    "{}: weight_map: tensor '{}' maps to '{}', which is not a file inside {}",
                    index_path, name, file, dir);
        std::string shard_path = (fs::path(dir) / rel).string();
        if (!shard_index.count(file)) {
          SHOAL_CHECK(path_exists(shard_path),
                      "{}: weight_map: tensor '{}' is in shard '{}', which is missing", index_path,
                      name, shard_path);
          shard_index[file] = r.files_.size();
          r.files_.push_back(SafetensorsFile::open(shard_path));
        }
        const SafetensorsFile& f = r.files_[shard_index[file]];
        SHOAL_CHECK(f.has(name),
                    "{}: weight_map: tensor '{}' is mapped to {}, which does not hold it",
                    index_path, name, f.path());
      }
    } else if (path_exists(fs::path(dir) / kSingleName)) {
      r.files_.push_back(SafetensorsFile::open((fs::path(dir) / kSingleName).string()));
    } else {
      std::vector<std::string> paths;
      for (const auto& p : list_dir(dir))
        if (p.extension() == ".safetensors" && fs::is_regular_file(p, ec))
          paths.push_back(p.string());
      SHOAL_CHECK(!paths.empty(), "no safetensors files in {}", dir);
      std::sort(paths.begin(), paths.end());
      for (const auto& p : paths) r.files_.push_back(SafetensorsFile::open(p));
    }
  }

  for (size_t i = 0; i < r.files_.size(); ++i) {
    for (const auto& name : r.files_[i].names()) {
      auto [it, inserted] = r.where_.emplace(name, i);
      SHOAL_CHECK(inserted, "{}: tensor '{}' is in both {} and {}", dir, name,
                  r.files_[it->second].path(), r.files_[i].path());
    }
  }
  return r;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> r;
  r.reserve(where_.size());
  for (const auto& kv : where_) r.push_back(kv.first);
  return r;
}

const SafetensorsFile& CheckpointReader::file(const std::string& name) const {
  auto it = where_.find(name);
  SHOAL_CHECK(it != where_.end(), "{}: no tensor '{}' in the checkpoint", dir_, name);
  return files_[it->second];
}

// ---------------------------------------------------------------------------------------------
// Writing

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    SHOAL_CHECK(name != "__metadata__", "{}: '__metadata__' cannot be a tensor name", path);
    SHOAL_CHECK(seen.insert(name).second, "{}: tensor '{}' given twice", path, name);
    SHOAL_CHECK(t.defined(), "{}: tensor '{}' is undefined", path, name);
    SHOAL_CHECK(t.device() == Device::cpu, "{}: tensor '{}' is on {}; copy it to the CPU first",
                path, name, device_name(t.device()));
    uint64_t bytes = t.nbytes();
    header[name] = {{"dtype", safetensors_name(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not UTF-8
    SHOAL_FAIL("{}: cannot encode the header: {}", path, e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  write_file_atomically(path, [&](int fd, const std::string& tmp) {
    unsigned char len[8];
    for (int i = 0; i < 8; ++i)
      len[i] = static_cast<unsigned char>(uint64_t(text.size()) >> (8 * i));
    write_all(fd, len, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (const auto& [name, t] : tensors) {
      Tensor c = t.contiguous();
      if (c.nbytes() > 0) write_all(fd, c.raw(), c.nbytes(), tmp);
    }
  });
}

void write_checkpoint_shards(const std::string& dir,
                             const std::vector<std::pair<std::string, Tensor>>& tensors,
                             size_t max_shard_bytes) {
  SHOAL_CHECK(max_shard_bytes > 0, "{}: max_shard_bytes must be positive", dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  SHOAL_CHECK(!ec, "{}: cannot create directory: {}", dir, ec.message());

  // Greedy, in order, like transformers: a tensor larger than the limit gets a shard of its own.
  std::vector<std::vector<size_t>> shards;
  size_t current = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    size_t bytes = tensors[i].second.defined() ? tensors[i].second.nbytes() : 0;
    if (shards.empty() || (current > 0 && current + bytes > max_shard_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += bytes;
    total += bytes;
  }
  const std::map<std::string, std::string> meta{{"format", "pt"}};
  fs::path root(dir);
  std::set<std::string> written;

  if (shards.size() <= 1) {
    write_safetensors((root / kSingleName).string(), tensors, meta);
    written.insert(kSingleName);
  } else {
    std::set<std::string> names;
    for (const auto& [name, t] : tensors)
      SHOAL_CHECK(names.insert(name).second, "{}: tensor '{}' given twice", dir, name);
    json weight_map = json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
      std::vector<std::pair<std::string, Tensor>> part;
      for (size_t i : shards[s]) {
        part.push_back(tensors[i]);
        weight_map[tensors[i].first] = file;
      }
      write_safetensors((root / file).string(), part, meta);
      written.insert(file);
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::string text = index.dump(2) + "\n";
    write_file_atomically((root / kIndexName).string(), [&](int fd, const std::string& tmp) {
      write_all(fd, text.data(), text.size(), tmp);
    });
    written.insert(kIndexName);
  }

  // Remove files of an earlier layout that would otherwise be read instead of (or along with)
  // the new one: the index first, so a reader never sees an index pointing at missing shards.
  auto stale = [&](const std::string& name) {
    if (written.count(name)) return false;
    if (name == kIndexName || name == kSingleName) return true;
    return name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos &&
           fs::path(name).extension() == ".safetensors";
  };
  if (stale(kIndexName)) fs::remove(root / kIndexName, ec);
  for (const auto& p : list_dir(dir))
    if (stale(p.filename().string())) fs::remove(p, ec);
}

}  // namespace shoal
