// Per-device state of the CUDA backend: the stream every op runs on, the cuBLAS handle, the
// caching stream-ordered allocator (cudaMallocAsync on the device's pool, which keeps freed blocks
// for reuse) and the KernelStatus record kernels report bad input into. One per device for the
// process, never destroyed (storages may be freed during static destruction). Internal.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <unordered_set>

#include "engine/tensor.h"
#include "kernels/common/kernel_status.h"

namespace shoal::cuda {

class CudaAllocator final : public Allocator {
 public:
  CudaAllocator(int device, cudaStream_t stream);
  // Throws shoal::Error on exhaustion, naming the request and the device's free/total memory.
  void* allocate(size_t bytes) override;
  void deallocate(void* p, size_t bytes) override;
  Device device() const override { return Device::cuda; }
  size_t live_bytes() const { return live_.load(); }

  // While the stream is being captured (Backend::record), allocations become the graph's own
  // (cudaMallocAsync under capture): these calls track them, so that the recording can check that
  // its body freed all it allocated and freed nothing allocated outside it.
  void begin_recording();
  struct RecordingCheck {
    size_t left_alive = 0;     // allocated while recording and not freed
    size_t foreign_frees = 0;  // frees while recording of memory allocated before
  };
  RecordingCheck end_recording();

 private:
  int device_;
  cudaStream_t stream_;
  cudaMemPool_t pool_ = nullptr;
  std::atomic<size_t> live_{0};
  std::mutex recording_mu_;
  std::atomic<bool> recording_{false};
  std::unordered_set<void*> recorded_;
  size_t foreign_frees_ = 0;
};

struct CudaContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  CudaAllocator* allocator = nullptr;
  kernels::KernelStatus* status = nullptr;  // device memory, zeroed
};

// The context of `device`, created on first use (throws when the device is unusable).
CudaContext& context(int device);

// Op names kernels report faults under (KernelStatus::op indexes this table).
enum class FaultOp : int32_t {
  embedding_forward,
  embedding_backward,
  rope,
  attention_forward,
  attention_backward,
  attention_head_sum_probs,
  indexer_kl,
  cross_entropy,
  token_logprobs,
  token_logprobs_backward,
  route_noaux_tc,
  route_backward,
  moe_sort,
  gather_rows,
  scatter_add_rows,
  row_dot_scatter,
  scale_rows,
  scatter_rows,
  latent_attention,
  grouped_matmul_dev,
};
const char* fault_op_name(int32_t op);

// Synchronises the stream and throws if a kernel reported a fault (then clears the record).
void synchronize_and_check(CudaContext& ctx);

}  // namespace shoal::cuda
