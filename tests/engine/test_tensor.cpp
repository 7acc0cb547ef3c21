// Tests for engine/tensor: views share storage and see each other's writes, strided copies land
// in the right elements, dtype conversion, and misuse raises shoal::Error.
#include "engine/tensor.h"

#include <gtest/gtest.h>

#include <numeric>

namespace shoal {
namespace {

// A [rows, cols] f32 tensor holding 0, 1, 2, ... in row-major order.
Tensor iota(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f32);
  std::iota(t.f32(), t.f32() + t.numel(), 0.0f);
  return t;
}

float at(const Tensor& t, int64_t i, int64_t j) {
  return t.f32()[i * t.stride(0) + j * t.stride(1)];
}

TEST(TensorTest, EmptyZerosAndDescribe) {
  Tensor z = Tensor::zeros({2, 3}, DType::bf16);
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.nbytes(), 12u);
  EXPECT_TRUE(z.is_contiguous());
  EXPECT_EQ(z.strides(), (Shape{3, 1}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(z.data<uint16_t>()[i], 0);
  EXPECT_EQ(z.describe(), "bf16[2, 3] cpu");
  EXPECT_FALSE(Tensor().defined());
  EXPECT_THROW(z.f32(), Error);  // wrong dtype accessor
}

TEST(TensorTest, SliceSelectTransposeShareStorage) {
  Tensor t = iota({4, 5});
  Tensor rows = t.slice(0, 1, 3);  // rows 1..2
  EXPECT_TRUE(rows.same_storage(t));
  EXPECT_EQ(rows.shape(), (Shape{2, 5}));
  EXPECT_EQ(at(rows, 0, 0), 5.0f);
  EXPECT_TRUE(rows.is_contiguous());

  Tensor cols = t.slice(1, 2, 4);  // columns 2..3: strided
  EXPECT_TRUE(cols.same_storage(t));
  EXPECT_FALSE(cols.is_contiguous());
  EXPECT_EQ(at(cols, 3, 1), 18.0f);

  Tensor row2 = t.select(0, 2);
  EXPECT_EQ(row2.shape(), (Shape{5}));
  EXPECT_EQ(row2.f32()[4], 14.0f);
  Tensor col1 = t.select(1, 1);
  EXPECT_EQ(col1.shape(), (Shape{4}));
  EXPECT_EQ(col1.stride(0), 5);
  EXPECT_EQ(col1.f32()[3 * col1.stride(0)], 16.0f);

  Tensor tt = t.transpose(0, 1);
  EXPECT_TRUE(tt.same_storage(t));
  EXPECT_EQ(tt.shape(), (Shape{5, 4}));
  EXPECT_EQ(at(tt, 4, 3), 19.0f);
  EXPECT_EQ(at(tt, 1, 2), 11.0f);

  // A write through a view is visible in the base tensor.
  cols.f32()[1 * cols.stride(0) + 0] = -1.0f;
  EXPECT_EQ(t.f32()[1 * 5 + 2], -1.0f);
}

TEST(TensorTest, ViewReshapesContiguousOnly) {
  Tensor t = iota({2, 3, 4});
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  EXPECT_TRUE(v.same_storage(t));
  EXPECT_EQ(at(v, 5, 3), 23.0f);
  EXPECT_EQ(t.view({24}).f32()[17], 17.0f);
  EXPECT_THROW(t.view({5, -1}), Error);
  EXPECT_THROW(t.view({-1, -1}), Error);
  EXPECT_THROW(t.view({25}), Error);
  EXPECT_THROW(t.transpose(0, 2).view({24}), Error);  // not contiguous
}

TEST(TensorTest, OutOfRangeViewsThrow) {
  Tensor t = iota({3, 4});
  EXPECT_THROW(t.slice(0, 2, 4), Error);
  EXPECT_THROW(t.slice(1, 3, 2), Error);
  EXPECT_THROW(t.select(1, 4), Error);
  EXPECT_THROW(t.select(2, 0), Error);
  EXPECT_NO_THROW(t.slice(-1, 0, 4));  // negative dims wrap
  EXPECT_THROW(Tensor::empty({2, -1}, DType::f32), Error);
}

TEST(TensorTest, ContiguousCopiesStridedViews) {
  Tensor t = iota({3, 4});
  EXPECT_TRUE(t.contiguous().same_storage(t));  // already contiguous: no copy

  Tensor tt = t.transpose(0, 1).contiguous();
  EXPECT_FALSE(tt.same_storage(t));
  EXPECT_TRUE(tt.is_contiguous());
  ASSERT_EQ(tt.shape(), (Shape{4, 3}));
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(tt.f32()[i * 3 + j], float(j * 4 + i));

  Tensor cols = t.slice(1, 1, 3).contiguous();  // rows with a gap between them
  ASSERT_EQ(cols.shape(), (Shape{3, 2}));
  EXPECT_EQ(std::vector<float>(cols.f32(), cols.f32() + 6),
            (std::vector<float>{1, 2, 5, 6, 9, 10}));

  Tensor cl = t.clone();
  EXPECT_FALSE(cl.same_storage(t));
  cl.f32()[0] = 100.0f;
  EXPECT_EQ(t.f32()[0], 0.0f);
}

TEST(TensorTest, CopyFromIntoStridedViews) {
  Tensor dst = Tensor::zeros({3, 4}, DType::f32);
  // Into a column block (inner stride 1, gaps between rows).
  Tensor src = iota({3, 2});
  dst.slice(1, 1, 3).copy_from(src);
  EXPECT_EQ(std::vector<float>(dst.f32(), dst.f32() + 12),
            (std::vector<float>{0, 0, 1, 0, 0, 2, 3, 0, 0, 4, 5, 0}));
  // Into a transposed view (fully strided), from a contiguous tensor.
  Tensor d2 = Tensor::zeros({2, 3}, DType::f32);
  d2.transpose(0, 1).copy_from(iota({3, 2}));
  EXPECT_EQ(std::vector<float>(d2.f32(), d2.f32() + 6), (std::vector<float>{0, 2, 4, 1, 3, 5}));
  // From a strided view with dtype conversion.
  Tensor d3 = Tensor::zeros({4, 3}, DType::f64);
  d3.copy_from(iota({3, 4}).transpose(0, 1));
  EXPECT_EQ(d3.f64()[1 * 3 + 2], 9.0);
  EXPECT_THROW(d3.copy_from(iota({3, 4})), Error);  // shape mismatch

  Tensor f = Tensor::zeros({3, 4}, DType::f32);
  f.slice(1, 3, 4).fill(7.0);
  EXPECT_EQ(std::vector<float>(f.f32(), f.f32() + 12),
            (std::vector<float>{0, 0, 0, 7, 0, 0, 0, 7, 0, 0, 0, 7}));
}

TEST(TensorTest, ToConvertsDtype) {
  Tensor t = Tensor::empty({4}, DType::f32);
  float vals[] = {1.0f, 1.0f + std::ldexp(1.0f, -8) * 3, 500.0f, -0.5f};
  std::copy(vals, vals + 4, t.f32());
  Tensor b = t.to(DType::bf16);
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_FALSE(b.same_storage(t));
  EXPECT_EQ(b.data<uint16_t>()[1], f32_to_bf16(vals[1]));
  Tensor back = b.to(DType::f32);
  EXPECT_EQ(back.f32()[1], 1.0f + std::ldexp(1.0f, -6));  // rounded to nearest even in bf16
  Tensor f8 = t.to(DType::f8e4m3).to(DType::f32);
  EXPECT_EQ(f8.f32()[2], 448.0f);  // saturated
  EXPECT_EQ(f8.f32()[3], -0.5f);
  Tensor i = t.to(DType::i64);
  EXPECT_EQ(i.i64()[2], 500);
  // Strided source.
  Tensor s = iota({2, 3}).transpose(0, 1).to(DType::f64);
  EXPECT_TRUE(s.is_contiguous());
  EXPECT_EQ(s.f64()[1 * 2 + 1], 4.0);
}

TEST(TensorTest, BorrowKeepsOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4, 5, 6});
  std::weak_ptr<std::vector<float>> weak = owner;
  Tensor t = Tensor::borrow(owner->data(), {2, 3}, DType::f32, Device::cpu, owner);
  owner.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(at(t, 1, 2), 6.0f);
  Tensor v = t.select(0, 1);
  t = Tensor();
  EXPECT_FALSE(weak.expired());  // the view still holds the storage
  EXPECT_EQ(v.f32()[0], 4.0f);
  v = Tensor();
  EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace shoal
