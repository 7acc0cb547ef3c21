// The CUDA backend: every Backend op on device memory (f32 storage and compute by default;
// copy() converts to and from bf16/f16/FP8 storage; CudaBackendOptions put GEMMs and dense
// attention on the tensor cores with bf16/TF32 operands), with a caching stream-ordered allocator.
// Header free of CUDA includes; only built when SHOAL_HAVE_CUDA (engine/CMakeLists.txt). Not
// multi-GPU, not CUDA graphs yet.
#pragma once

#include <memory>
#include <string>

#include "engine/backend.h"

namespace shoal {

// How matmul() runs its f32 operands through cuBLAS. f32: plain FP32 GEMMs (the CPU backend's
// precision; what the f32 tests check). tf32: tensor cores with operands rounded to TF32 (10-bit
// mantissa). bf16: tensor cores on bf16 operands (8-bit mantissa, rounded to nearest even):
// parameters through a bf16 copy kept per storage and refreshed by adamw_multi, other operands
// rounded per call (docs/ENGINE.md, "On the GPU"); every mode accumulates in FP32 and stores f32.
enum class CudaGemm { f32, tf32, bf16 };
const char* cuda_gemm_name(CudaGemm g);
CudaGemm parse_cuda_gemm(const std::string& name);  // "f32", "tf32", "bf16"; throws otherwise

// How dense attention with dk <= 192, dv <= 128 multiplies. f32: the tiled f32 kernels (the CPU
// backend's precision; what the f32 tests check). tf32 / bf16: on the tensor cores with operands
// rounded to TF32 (WMMA) or bf16 (mma.sync, one-pass forward); f32 accumulation and softmax.
enum class CudaAttention { f32, tf32, bf16 };
const char* cuda_attention_name(CudaAttention a);
CudaAttention parse_cuda_attention(const std::string& name);  // "f32", "tf32", "bf16"; throws

// How grouped_matmul runs when gemm is tf32 or bf16 (with f32 GEMMs it is always one matmul per
// group). loop: one matmul per group, as the MoE layer ran before grouped_matmul. streams (bf16
// only): the operands rounded once into bf16 copies, the groups' GEMMs spread over 4 streams.
// batched: one cublasGemmGroupedBatchedEx call with TF32 operands (f32 in and out; cuBLAS has
// no grouped kernel with bf16 operands and f32 output), in bf16 mode too (TF32 is the finer
// rounding).
enum class CudaGrouped { loop, streams, batched };
const char* cuda_grouped_name(CudaGrouped g);
CudaGrouped parse_cuda_grouped(const std::string& name);  // "loop", "streams", "batched"

struct CudaBackendOptions {
  CudaGemm gemm = CudaGemm::f32;
  // The older spelling of attention = tf32: true selects TF32 when `attention` is left at f32.
  bool tf32_attention = false;
  CudaAttention attention = CudaAttention::f32;
  CudaGrouped grouped = CudaGrouped::loop;
  // bf16 mode: the grouped GEMMs with device offsets (grouped_matmul_dev*) run the device kernels
  // of kernels/moe/ and device_grouped_gemms() says so, so the MoE layers keep their group
  // boundaries and load counts on the device. false: they run the reference (host offsets), as
  // in the f32 and tf32 modes, and training's MoE layers read their counts back (the comparison
  // point of the tests and benchmarks).
  bool device_grouped_gemms = true;
};

// The backend on CUDA device `device` (its own stream, cuBLAS handle and allocator, shared by all
// backends of that device). Throws shoal::Error when the device is unusable.
std::unique_ptr<Backend> make_cuda_backend(int device = 0, const CudaBackendOptions& options = {});

// Empty when a CUDA device is usable, else why not (for skipping GPU tests with a reason).
std::string cuda_unavailable_reason();

// Waits for the work queued on `device`'s backend stream, then throws if a kernel reported bad
// input (an index out of range, a label outside its token set) since the last check. Ops that
// return host values (to_host, sum_squares, cross_entropy, indexer_kl, moe_sort) do this too.
void cuda_synchronize(int device = 0);

// Bytes held by live tensors on `device` (not counting the allocator's cache).
size_t cuda_live_bytes(int device = 0);

}  // namespace shoal
