// Safetensors checkpoints: read (mmap, header fully validated before any tensor is handed out) and
// write (temp file, fsync, rename), single files and Hugging Face's sharded layout with
// model.safetensors.index.json. Not a model loader: name mapping and dtype policy live in the
// model.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace shoal {

struct TensorInfo {
  DType dtype = DType::f32;
  Shape shape;
};

// One .safetensors file. The mapping is read-only and lazy (pages are read on first touch);
// tensors from get() keep it alive, so they may outlive the SafetensorsFile. Tensors that alias the
// mapping are read-only memory: clone() before writing into them.
class SafetensorsFile {
 public:
  // Maps `path` and validates the whole header; throws shoal::Error naming the path and the tensor.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  // A CPU tensor over the mapping, or a copy when the data is not aligned to its element size.
  Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    TensorInfo info;
    uint64_t begin = 0, end = 0;  // byte range within the data section
  };
  const Entry& entry(const std::string& name) const;

  std::string path_;
  std::shared_ptr<void> mapping_;  // the whole file; munmap'ed when the last holder drops it
  const char* data_ = nullptr;     // start of the data section (after the header)
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors.index.json with its shards, a single
// model.safetensors, or else every *.safetensors file in it. A path to one .safetensors file is
// accepted too. Every tensor name is in exactly one file.
class CheckpointReader {
 public:
  static CheckpointReader open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const { return file(name).info(name); }
  Tensor get(const std::string& name) const { return file(name).get(name); }
  const std::string& file_of(const std::string& name) const { return file(name).path(); }
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  const SafetensorsFile& file(const std::string& name) const;

  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Writes `tensors` (CPU, any strides) in the given order to `path` via `path + ".tmp"`, fsync and
// rename, so `path` is either the old file or the complete new one. The header is padded with
// spaces so the data section starts 8-byte aligned.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint directory the way transformers' save_pretrained does: model.safetensors when
// everything fits in max_shard_bytes, else model-0000i-of-0000N.safetensors plus
// model.safetensors.index.json. Each file carries metadata {"format": "pt"}. Files of an earlier
// layout in `dir` (a stale index, old shards or model.safetensors) are removed afterwards.
void write_checkpoint_shards(const std::string& dir,
                             const std::vector<std::pair<std::string, Tensor>>& tensors,
                             size_t max_shard_bytes);

}  // namespace shoal
