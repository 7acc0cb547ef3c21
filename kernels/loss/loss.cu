// Loss kernels (loss.h): one block per row, max / sum passes with block reductions, exponentials
// summed in f64 as the CPU reference does. Rows whose label is invalid are reported through
// KernelStatus and treated as ignored.
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/common/reduce.cuh"
#include "kernels/loss/loss.h"

namespace shoal::kernels {
namespace {

constexpr int kThreads = 512;

// The row's label, or -100 when ignored or invalid (invalid ones are reported).
__device__ int32_t checked_label(const LogitsParams& p, int64_t r) {
  const int32_t l = p.labels[r];
  if (l == -100) return -100;
  if (l < 0 || l >= p.vocab) {
    if (threadIdx.x == 0)
      report_fault(p.status, p.op, KernelFault::index_out_of_range, r, l, 0, p.vocab);
    return -100;
  }
  return l;
}

__global__ void cross_entropy_kernel(LogitsParams p, float grad_scale, double* row_loss) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.logits + r * p.ld;
    float* d = p.dlogits ? p.dlogits + r * p.d_ld : nullptr;
    const int32_t label = checked_label(p, r);
    if (label == -100) {
      if (d)
        for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) d[i] = 0.0f;
      if (threadIdx.x == 0) row_loss[r] = 0.0;
      continue;
    }
    float mx = -INFINITY;
    for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = block_max(mx, -INFINITY);
    double sum = 0;
    for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) sum += exp(double(x[i] - mx));
    sum = block_sum(sum);
    const double xl = x[label];
    if (threadIdx.x == 0) row_loss[r] = double(mx) + log(sum) - xl;
    if (d) {
      __syncthreads();  // x[label] is read by thread 0 before anyone overwrites an aliased row
      const float inv = float(1.0 / sum);
      for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x)
        d[i] = grad_scale * expf(x[i] - mx) * inv;
      __syncthreads();
      if (threadIdx.x == 0) d[label] -= grad_scale;
    }
    __syncthreads();
  }
}

__global__ void token_logprobs_kernel(LogitsParams p, float* logp, float* entropy) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.logits + r * p.ld;
    const int32_t label = checked_label(p, r);
    if (label == -100) {
      if (threadIdx.x == 0) {
        logp[r] = 0.0f;
        if (entropy) entropy[r] = 0.0f;
      }
      continue;
    }
    const bool sets = p.set_offsets != nullptr;
    const int64_t b = sets ? p.set_offsets[r] : 0, m = sets ? p.set_offsets[r + 1] - b : p.vocab;
    double mx = -INFINITY;
    int has_label = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const int64_t id = sets ? p.set_ids[b + j] : j;
      mx = fmax(mx, double(x[id]));
      has_label |= id == label;
    }
    mx = block_max(mx, double(-INFINITY));
    if (sets && block_sum(has_label) == 0) {
      if (threadIdx.x == 0) {
        report_fault(p.status, p.op, KernelFault::label_not_in_set, r, label, 0, 0);
        logp[r] = 0.0f;
        if (entropy) entropy[r] = 0.0f;
      }
      continue;
    }
    double z = 0, ex = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const double a = double(x[sets ? p.set_ids[b + j] : j]) - mx;
      const double e = exp(a);
      z += e;
      ex += e * a;
    }
    z = block_sum(z);
    ex = block_sum(ex);
    if (threadIdx.x == 0) {
      const double lz = log(z);
      logp[r] = float(double(x[label]) - mx - lz);
      if (entropy) entropy[r] = float(lz - ex / z);
    }
  }
}

__global__ void token_logprobs_backward_kernel(LogitsParams p, const float* dlogp) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.logits + r * p.ld;
    float* d = p.dlogits + r * p.d_ld;
    const int32_t label = checked_label(p, r);
    const float g = dlogp[r];
    if (label == -100 || g == 0.0f) {
      __syncthreads();
      for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) d[i] = 0.0f;
      __syncthreads();
      continue;
    }
    if (p.set_offsets == nullptr) {
      float mx = -INFINITY;
      for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) mx = fmaxf(mx, x[i]);
      mx = block_max(mx, -INFINITY);
      double z = 0;
      for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) z += exp(double(x[i] - mx));
      z = block_sum(z);
      const float inv = float(1.0 / z);
      for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) d[i] = -g * expf(x[i] - mx) * inv;
    } else {
      const int64_t b = p.set_offsets[r], e = p.set_offsets[r + 1];
      float mx = -INFINITY;
      int has_label = 0;
      for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) {
        mx = fmaxf(mx, x[p.set_ids[j]]);
        has_label |= p.set_ids[j] == label;
      }
      mx = block_max(mx, -INFINITY);
      if (block_sum(has_label) == 0) {
        if (threadIdx.x == 0)
          report_fault(p.status, p.op, KernelFault::label_not_in_set, r, label, 0, 0);
        for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) d[i] = 0.0f;
        __syncthreads();
        continue;
      }
      double z = 0;
      for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x)
        z += exp(double(x[p.set_ids[j]] - mx));
      z = block_sum(z);
      const float inv = float(1.0 / z);
      for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x)
        p.set_scratch[j] = expf(x[p.set_ids[j]] - mx) * inv;
      __syncthreads();  // every read of x (which d may alias) happens before the row is cleared
      for (int64_t i = threadIdx.x; i < p.vocab; i += blockDim.x) d[i] = 0.0f;
      __syncthreads();
      for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x)
        d[p.set_ids[j]] = -g * p.set_scratch[j];
    }
    __syncthreads();
    if (threadIdx.x == 0) d[label] += g;
    __syncthreads();
  }
}

bool valid(const LogitsParams& p) {
  return p.rows >= 0 && p.vocab >= 1 && p.logits && p.labels && p.ld >= p.vocab;
}

}  // namespace

int cross_entropy_cuda(const LogitsParams& p, float grad_scale, double* row_loss, void* stream) {
  if (p.rows == 0) return int(cudaSuccess);
  if (!valid(p) || !row_loss || (p.dlogits && p.d_ld < p.vocab)) return int(cudaErrorInvalidValue);
  cross_entropy_kernel<<<grid_for(p.rows, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, grad_scale, row_loss);
  return int(cudaGetLastError());
}

int token_logprobs_cuda(const LogitsParams& p, float* logp, float* entropy, void* stream) {
  if (p.rows == 0) return int(cudaSuccess);
  if (!valid(p) || !logp || (p.set_offsets && !p.set_ids)) return int(cudaErrorInvalidValue);
  token_logprobs_kernel<<<grid_for(p.rows, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, logp, entropy);
  return int(cudaGetLastError());
}

int token_logprobs_backward_cuda(const LogitsParams& p, const float* dlogp, void* stream) {
  if (p.rows == 0) return int(cudaSuccess);
  if (!valid(p) || !dlogp || !p.dlogits || p.d_ld < p.vocab ||
      (p.set_offsets && (!p.set_ids || !p.set_scratch)))
    return int(cudaErrorInvalidValue);
  token_logprobs_backward_kernel<<<grid_for(p.rows, 1), kThreads, 0,
                                   static_cast<cudaStream_t>(stream)>>>(p, dlogp);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
