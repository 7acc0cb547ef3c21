// Tensor views and the CPU allocator.
#include "engine/tensor.h"

#include <cstdlib>
#include <cstring>

namespace shoal {

std::string_view device_name(Device d) {
  return d == Device::cpu ? "cpu" : "cuda";
}

namespace {
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded ? rounded : 64);
    SHOAL_CHECK(p != nullptr, "out of host memory allocating {} bytes", bytes);
    return p;
  }
  void deallocate(void* p, size_t) override { std::free(p); }
  Device device() const override { return Device::cpu; }
};
}  // namespace

Allocator& cpu_allocator() {
  static CpuAllocator a;
  return a;
}

Storage::~Storage() {
  if (allocator && data) allocator->deallocate(data, bytes);
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Allocator& alloc) {
  for (auto d : shape) SHOAL_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  t.storage_->allocator = &alloc;
  t.storage_->data = alloc.allocate(t.storage_->bytes);
  t.storage_->device = alloc.device();
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.storage_->data, 0, t.storage_->bytes);
  return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device,
                      std::shared_ptr<void> keepalive) {
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->data = data;
  t.storage_->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  t.storage_->device = device;
  t.storage_->keepalive = std::move(keepalive);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

int Tensor::wrap(int d) const {
  int n = ndim();
  SHOAL_CHECK(d >= -n && d < n, "dimension {} out of range for {}", d, describe());
  return d < 0 ? d + n : d;
}

void Tensor::check_type(size_t elem) const {
  SHOAL_CHECK(defined(), "use of an undefined tensor");
  SHOAL_CHECK(dtype_size(dtype_) == elem, "tensor element size {} != requested {}",
              dtype_size(dtype_), elem);
}

bool Tensor::is_contiguous() const {
  return strides_ == contiguous_strides(shape_);
}

Tensor Tensor::view(const Shape& shape) const {
  SHOAL_CHECK(is_contiguous(), "view of a non-contiguous tensor {}", describe());
  Shape s = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      SHOAL_CHECK(infer < 0, "view shape {} has two -1", shape_str(shape));
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    SHOAL_CHECK(known > 0 && numel() % known == 0, "cannot view {} as {}", describe(),
                shape_str(shape));
    s[infer] = numel() / known;
  }
  SHOAL_CHECK(shape_numel(s) == numel(), "cannot view {} as {}", describe(), shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int dim, int64_t start, int64_t end) const {
  int d = wrap(dim);
  SHOAL_CHECK(0 <= start && start <= end && end <= shape_[d], "slice [{}, {}) of dim {} of {}",
              start, end, d, describe());
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int dim, int64_t index) const {
  int d = wrap(dim);
  SHOAL_CHECK(0 <= index && index < shape_[d], "select {} of dim {} of {}", index, d, describe());
  Tensor t = *this;
  t.offset_ += index * strides_[d];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
  Tensor t = *this;
  std::swap(t.shape_[wrap(d0)], t.shape_[wrap(d1)]);
  std::swap(t.strides_[wrap(d0)], t.strides_[wrap(d1)]);
  return t;
}

namespace {
// Visits every element of a strided CPU tensor in row-major order: fn(element offset, linear
// index).
template <typename Fn>
void for_each_offset(const Shape& shape, const Shape& strides, Fn fn) {
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  int nd = int(shape.size());
  std::vector<int64_t> idx(nd, 0);
  int64_t off = 0;
  for (int64_t i = 0; i < n; ++i) {
    fn(off, i);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}
}  // namespace

void Tensor::copy_from(const Tensor& src) {
  SHOAL_CHECK(shape_ == src.shape_, "copy between shapes {} and {}", shape_str(shape_),
              shape_str(src.shape_));
  SHOAL_CHECK(device() == Device::cpu && src.device() == Device::cpu,
              "Tensor::copy_from is for CPU tensors; use the backend for {} -> {}",
              device_name(src.device()), device_name(device()));
  if (is_contiguous() && src.is_contiguous()) {
    convert(src.raw(), src.dtype_, raw(), dtype_, size_t(numel()));
    return;
  }
  // Strided: copy the innermost rows one by one (rows are contiguous in the common cases).
  int nd = ndim();
  if (nd > 0 && strides_[nd - 1] == 1 && src.strides_[nd - 1] == 1) {
    Shape outer(shape_.begin(), shape_.end() - 1);
    Shape dst_st(strides_.begin(), strides_.end() - 1),
        src_st(src.strides_.begin(), src.strides_.end() - 1);
    int64_t row = shape_[nd - 1];
    size_t ds = dtype_size(dtype_), ss = dtype_size(src.dtype_);
    std::vector<int64_t> src_offsets;
    src_offsets.reserve(size_t(shape_numel(outer)));
    for_each_offset(outer, src_st, [&](int64_t o, int64_t) { src_offsets.push_back(o); });
    for_each_offset(outer, dst_st, [&](int64_t o, int64_t i) {
      convert(static_cast<const char*>(src.raw()) + src_offsets[i] * ss, src.dtype_,
              static_cast<char*>(raw()) + o * ds, dtype_, size_t(row));
    });
    return;
  }
  size_t ds = dtype_size(dtype_), ss = dtype_size(src.dtype_);
  std::vector<int64_t> src_offsets;
  for_each_offset(src.shape_, src.strides_, [&](int64_t o, int64_t) { src_offsets.push_back(o); });
  for_each_offset(shape_, strides_, [&](int64_t o, int64_t i) {
    convert(static_cast<const char*>(src.raw()) + src_offsets[i] * ss, src.dtype_,
            static_cast<char*>(raw()) + o * ds, dtype_, 1);
  });
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  SHOAL_CHECK(device() == Device::cpu, "Tensor::clone is for CPU tensors");
  Tensor t = empty(shape_, dtype_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  SHOAL_CHECK(device() == Device::cpu, "Tensor::to is for CPU tensors");
  Tensor t = empty(shape_, dtype);
  t.copy_from(*this);
  return t;
}

void Tensor::fill(double v) {
  SHOAL_CHECK(device() == Device::cpu, "Tensor::fill is for CPU tensors");
  size_t es = dtype_size(dtype_);
  std::vector<char> one(es);
  convert(&v, DType::f64, one.data(), dtype_, 1);
  for_each_offset(shape_, strides_, [&](int64_t o, int64_t) {
    std::memcpy(static_cast<char*>(raw()) + o * es, one.data(), es);
  });
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_str(shape_), device_name(device()));
}

}  // namespace shoal
