// Tensor: shape, strides (in elements), dtype and device over a shared, reference-counted storage.
// Views (slice, select, transpose, reshape of contiguous data) share storage and never copy.
// A Tensor holds no autograd state: the model's layers save what their backward needs explicitly.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "engine/dtype.h"

namespace shoal {

enum class Device : uint8_t { cpu, cuda };
std::string_view device_name(Device d);

// One allocator per device. The CPU one hands out 64-byte aligned host memory; the CUDA one (in the
// CUDA backend) device memory. Allocators outlive every storage they created.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  virtual Device device() const = 0;
};
Allocator& cpu_allocator();

// Memory a tensor views. Either owned (returned to its allocator) or borrowed with a keep-alive
// (e.g. an mmap'ed checkpoint file).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  Allocator* allocator = nullptr;   // owner when non-null
  std::shared_ptr<void> keepalive;  // borrowed memory stays valid while this is held
  // Derived copies: a backend may keep data computed from this storage's contents (the CUDA
  // backend's bf16 copies of parameters for its bf16 GEMMs) in `derived`, valid while `version`
  // equals `derived_version`. Every pointer taken into device memory (Tensor::raw on a CUDA
  // storage, the way every kernel reaches it) counts as a write and bumps `version`, so a write by
  // any op, test or loader invalidates the copy; a backend reading through `data` directly does
  // not. `parameter` marks storages worth a kept copy (ParamSet::add sets it).
  std::atomic<uint64_t> version{0};
  bool parameter = false;
  std::shared_ptr<void> derived;
  uint64_t derived_version = 0;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory from `alloc` (host memory by default; the CUDA backend passes its own).
  static Tensor empty(const Shape& shape, DType dtype, Allocator& alloc = cpu_allocator());
  static Tensor zeros(const Shape& shape, DType dtype);  // host memory, zero-filled
  // Wraps memory owned elsewhere (contiguous); keepalive holds it alive.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device,
                       std::shared_ptr<void> keepalive);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int ndim() const { return int(shape_.size()); }
  int64_t size(int d) const { return shape_[wrap(d)]; }
  int64_t stride(int d) const { return strides_[wrap(d)]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu; }
  bool is_contiguous() const;
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }

  // A pointer for reading or writing; on a device storage it bumps Storage::version (see there).
  void* raw() const {
    if (storage_->device != Device::cpu) storage_->version.fetch_add(1, std::memory_order_relaxed);
    return static_cast<char*>(storage_->data) + offset_ * dtype_size(dtype_);
  }
  Storage* storage() const { return storage_.get(); }
  int64_t offset() const { return offset_; }  // in elements, into storage()'s data
  template <typename T>
  T* data() const {
    check_type(sizeof(T));
    return static_cast<T*>(raw());
  }
  float* f32() const { return typed<float>(DType::f32); }
  double* f64() const { return typed<double>(DType::f64); }
  int32_t* i32() const { return typed<int32_t>(DType::i32); }
  int64_t* i64() const { return typed<int64_t>(DType::i64); }

  // Views (no copy).
  Tensor view(const Shape& shape) const;  // contiguous only; one dim may be -1
  Tensor slice(int dim, int64_t start, int64_t end) const;
  Tensor select(int dim, int64_t index) const;  // drops dim
  Tensor transpose(int d0, int d1) const;

  // Copies.
  Tensor contiguous() const;  // this when already contiguous
  Tensor clone() const;
  Tensor to(DType dtype) const;       // CPU only; converts element-wise
  void copy_from(const Tensor& src);  // same shape; converts dtype; CPU only
  void fill(double v);                // CPU only

  std::string describe() const;  // "f32[2, 3] cpu"

 private:
  int wrap(int d) const;
  void check_type(size_t elem) const;
  template <typename T>
  T* typed(DType t) const {
    SHOAL_CHECK(dtype_ == t, "tensor is {}, not {}", dtype_name(dtype_), dtype_name(t));
    return static_cast<T*>(raw());
  }

  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_, strides_;
  DType dtype_ = DType::f32;
};

Shape contiguous_strides(const Shape& shape);

}  // namespace shoal
