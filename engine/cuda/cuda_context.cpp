// The CUDA backend's per-device context, allocator and fault reporting (cuda_context.h).
#include "engine/cuda/cuda_context.h"

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"

namespace shoal::cuda {
namespace {

std::string gib(size_t bytes) {
  return fmt::format("{:.2f} GiB", double(bytes) / double(size_t(1) << 30));
}

// Makes `device` current for the scope.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    cudaGetDevice(&prev_);
    if (prev_ != device) cudaSetDevice(device);
    dev_ = device;
  }
  ~DeviceScope() {
    if (prev_ != dev_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0, dev_ = 0;
};

}  // namespace

CudaAllocator::CudaAllocator(int device, cudaStream_t stream) : device_(device), stream_(stream) {
  SHOAL_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, device));
  // Keep freed blocks in the pool instead of returning them to the driver at each synchronisation:
  // the caching that makes per-op temporaries cheap.
  uint64_t keep = std::numeric_limits<uint64_t>::max();
  SHOAL_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep));
}

void* CudaAllocator::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  DeviceScope scope(device_);
  void* p = nullptr;
  cudaError_t err = cudaMallocAsync(&p, bytes, stream_);
  if (err != cudaSuccess && recording_) {  // no retry under capture: it would synchronise
    cudaGetLastError();
    SHOAL_FAIL("CUDA allocation of {} bytes while recording failed ({}: {})", bytes,
               cudaGetErrorName(err), cudaGetErrorString(err));
  }
  if (err != cudaSuccess) {
    cudaGetLastError();  // allocation failures are not sticky; clear the last-error slot
    // Return the pool's cached blocks to the driver and try once more.
    cudaStreamSynchronize(stream_);
    cudaMemPoolTrimTo(pool_, 0);
    err = cudaMallocAsync(&p, bytes, stream_);
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      cudaGetLastError();
      SHOAL_FAIL(
          "CUDA out of memory on device {}: requested {} ({} bytes); the device has {} free of {} "
          "total, shoal's live tensors hold {} ({}: {})",
          device_, gib(bytes), bytes, gib(free_b), gib(total_b), gib(live_.load()),
          cudaGetErrorName(err), cudaGetErrorString(err));
    }
  }
  live_ += bytes;
  if (recording_) {
    std::lock_guard<std::mutex> lock(recording_mu_);
    recorded_.insert(p);
  }
  return p;
}

void CudaAllocator::begin_recording() {
  std::lock_guard<std::mutex> lock(recording_mu_);
  recorded_.clear();
  foreign_frees_ = 0;
  recording_ = true;
}

CudaAllocator::RecordingCheck CudaAllocator::end_recording() {
  std::lock_guard<std::mutex> lock(recording_mu_);
  recording_ = false;
  RecordingCheck c{recorded_.size(), foreign_frees_};
  recorded_.clear();
  return c;
}

void CudaAllocator::deallocate(void* p, size_t bytes) {
  if (p == nullptr) return;
  live_ -= bytes;
  if (recording_) {
    std::lock_guard<std::mutex> lock(recording_mu_);
    if (recorded_.erase(p) == 0) ++foreign_frees_;
  }
  // Stream-ordered: the block is reusable by later work on the same stream. Errors cannot be
  // thrown from a destructor path; at process exit the runtime may already be unloading.
  DeviceScope scope(device_);
  if (cudaFreeAsync(p, stream_) != cudaSuccess) cudaGetLastError();
}

CudaContext& context(int device) {
  static std::mutex mu;
  static std::array<CudaContext*, 64> contexts{};
  std::lock_guard<std::mutex> lock(mu);
  SHOAL_CHECK(device >= 0 && device < int(contexts.size()), "CUDA device {} out of range", device);
  if (contexts[size_t(device)] != nullptr) return *contexts[size_t(device)];
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) cudaGetLastError();
  SHOAL_CHECK(err == cudaSuccess && device < count,
              "CUDA device {} is not available ({} device(s); {})", device,
              err == cudaSuccess ? count : 0,
              err == cudaSuccess ? "no such device" : cudaGetErrorString(err));
  DeviceScope scope(device);
  // Leaked on purpose: tensors freed during static destruction still find their allocator.
  auto* ctx = new CudaContext;
  ctx->device = device;
  SHOAL_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
  SHOAL_CUBLAS_CHECK(cublasCreate(&ctx->cublas));
  SHOAL_CUBLAS_CHECK(cublasSetStream(ctx->cublas, ctx->stream));
  // Plain f32 GEMMs (no TF32): the backend is checked against the CPU at f32 tolerances.
  SHOAL_CUBLAS_CHECK(cublasSetMathMode(ctx->cublas, CUBLAS_DEFAULT_MATH));
  ctx->allocator = new CudaAllocator(device, ctx->stream);
  SHOAL_CUDA_CHECK(cudaMalloc(&ctx->status, sizeof(kernels::KernelStatus)));
  SHOAL_CUDA_CHECK(cudaMemset(ctx->status, 0, sizeof(kernels::KernelStatus)));
  contexts[size_t(device)] = ctx;
  return *ctx;
}

const char* fault_op_name(int32_t op) {
  static const char* names[] = {"embedding_forward",
                                "embedding_backward",
                                "rope",
                                "attention_forward",
                                "attention_backward",
                                "attention_head_sum_probs",
                                "indexer_kl",
                                "cross_entropy",
                                "token_logprobs",
                                "token_logprobs_backward",
                                "route_noaux_tc",
                                "route_backward",
                                "moe_sort",
                                "gather_rows",
                                "scatter_add_rows",
                                "row_dot_scatter",
                                "scale_rows",
                                "scatter_rows",
                                "latent_attention",
                                "grouped_matmul_dev"};
  return op >= 0 && op < int32_t(std::size(names)) ? names[op] : "unknown op";
}

void synchronize_and_check(CudaContext& ctx) {
  kernels::KernelStatus st;
  SHOAL_CUDA_CHECK(
      cudaMemcpyAsync(&st, ctx.status, sizeof(st), cudaMemcpyDeviceToHost, ctx.stream));
  SHOAL_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  if (st.fault == 0) return;
  SHOAL_CUDA_CHECK(cudaMemset(ctx.status, 0, sizeof(st)));
  const char* op = fault_op_name(st.op);
  using kernels::KernelFault;
  switch (KernelFault(st.fault)) {
    case KernelFault::index_out_of_range:
      SHOAL_FAIL("{}: index {} at position {} is outside [{}, {}) (found on the device)", op,
                 st.value, st.where, st.lo, st.hi);
    case KernelFault::label_not_in_set:
      SHOAL_FAIL("{}: row {}'s set does not contain its label {} (found on the device)", op,
                 st.where, st.value);
    case KernelFault::sparse_no_key:
      SHOAL_FAIL("{}: sparse attention: token {} selects no key at or before itself", op, st.where);
    case KernelFault::sparse_out_of_range:
      SHOAL_FAIL("{}: sparse attention: index {} for token {} is outside its sequence [-1, {})", op,
                 st.value, st.where, st.hi);
    default:
      SHOAL_FAIL("{}: a kernel reported fault code {}", op, st.fault);
  }
}

}  // namespace shoal::cuda

namespace shoal {

std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  }
  if (count == 0) return "cudaGetDeviceCount returned 0 devices";
  return {};
}

void cuda_synchronize(int device) {
  cuda::synchronize_and_check(cuda::context(device));
}

size_t cuda_live_bytes(int device) {
  return cuda::context(device).allocator->live_bytes();
}

}  // namespace shoal
