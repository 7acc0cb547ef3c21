// Backend::record on the CUDA backend (CUDA graphs): a recorded body does not run when recorded,
// each replay runs it again on what its tensors then hold, and its temporaries are the graph's
// own; a body that needs the host is refused with a reason and leaves the backend usable; a body
// that fails on its own input rethrows; a body that leaks an allocation is a clear error. Skips
// without a device.
#include <gtest/gtest.h>

#include <string>

#include "base/error.h"
#include "engine/cuda/cuda_backend.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::BackendOps;
using test::Pair;

class Record : public BackendOps {};

TEST_F(Record, ReplaysRunTheBodyOnWhatItsTensorsHold) {
  Pair a = rand({37, 21}), out = rand({37, 21});
  gpu().zero(out.d);
  std::string why;
  auto graph = gpu().record(
      [&] {
        Tensor t = gpu().empty({37, 21});  // a temporary: the recording's own memory
        gpu().copy(a.d, t);
        gpu().scale(t, 2.0f);
        gpu().add(out.d, t);  // out += 2 a
      },
      why);
  ASSERT_NE(graph, nullptr) << why;
  cuda_synchronize();
  Tensor sum = Tensor::zeros({37, 21}, DType::f32);
  check("record", "nothing runs while recording", sum, out.d, 0.0, 0.0);
  // Three replays with a rewritten in between: out = 2 a0 + 2 a1 + 2 a2, added in replay order
  // as below (2x is exact, so the sums round alike).
  Tensor ar;
  for (int r = 0; r < 3; ++r) {
    ar = rand({37, 21}).h;
    gpu().copy(ar, a.d);
    graph->replay();
    for (int64_t i = 0; i < sum.numel(); ++i) sum.f32()[i] += 2.0f * ar.f32()[i];
  }
  check("record", "three replays on new inputs", sum, out.d, 0.0, 0.0);
  // Once more after other work has taken and written memory from the pool.
  Tensor other = gpu().empty({1000, 1000});
  gpu().zero(other);
  graph->replay();
  for (int64_t i = 0; i < sum.numel(); ++i) sum.f32()[i] += 2.0f * ar.f32()[i];
  check("record", "a replay after other allocations", sum, out.d, 0.0, 0.0);
}

TEST_F(Record, ABodyThatNeedsTheHostIsRefusedAndTheBackendWorksOn) {
  Pair a = rand({8, 8}), b = rand({8, 8});
  std::string why;
  auto graph = gpu().record([&] { Tensor h = gpu().to_host(a.d); }, why);
  EXPECT_EQ(graph, nullptr);
  EXPECT_FALSE(why.empty());
  std::printf("[ record ] to_host in a body: refused (%s)\n", why.c_str());
  // The stream works normally afterwards.
  gpu().copy(a.d, b.d);
  gpu().scale(b.d, 3.0f);
  Tensor want = a.h.contiguous();
  for (int64_t i = 0; i < want.numel(); ++i) want.f32()[i] *= 3.0f;
  check("record", "ops after a refused recording", want, b.d, 0.0, 0.0);
}

TEST_F(Record, BodyErrorsAndLeaksAreClearErrors) {
  Pair a = rand({4, 4}), c = rand({5, 4});
  std::string why;
  // The body's own error (mismatched shapes) is rethrown, not reported as unrecordable.
  EXPECT_THROW(gpu().record([&] { gpu().copy(a.d, c.d); }, why), Error);
  // A body that leaves an allocation alive breaks the recording's contract.
  Tensor kept;
  try {
    gpu().record([&] { kept = gpu().empty({16}); }, why);
    FAIL() << "a leaking body was recorded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("left 1 allocation"), std::string::npos) << e.what();
  }
  kept = Tensor();
  // The backend still works.
  Pair b = rand({4, 4});
  gpu().copy(a.d, b.d);
  check("record", "ops after a failed recording", a.h, b.d, 0.0, 0.0);
}

TEST(RecordCpu, TheCpuBackendDoesNotRecord) {
  std::string why;
  bool ran = false;
  EXPECT_EQ(cpu_backend().record([&] { ran = true; }, why), nullptr);
  EXPECT_FALSE(ran);
  EXPECT_NE(why.find("does not record"), std::string::npos) << why;
}

}  // namespace
}  // namespace shoal
