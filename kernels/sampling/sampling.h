// Token sampling over rows of logits: greedy (argmax) or a draw from softmax(logits / temperature)
// truncated to the top_k most likely ids, then to the smallest prefix holding top_p of the mass,
// then to the ids with p >= min_p * p_max. The random number is an input (a uniform in [0, 1)
// drawn on the host from the sample's own generator), so a draw is a pure function of the row,
// the parameters and u: the plain C++ reference (sample_row_ref, exactly the engine's
// sample_token) and the GPU kernel pick the same token for the same u.
//
// The reference sorts the row (stable, descending) and walks the prefix in f64. The kernel
// (sampling.cu) never sorts: one block per draw finds each cut (the k-th id, the top-p prefix,
// the drawn id) by a radix select over the order-preserving 32-bit key of the logit, three passes
// of 10, 11 and 11 bits, where every bucket carries its count and its probability mass. The mass
// is a 64-bit fixed-point number (p * 2^mass_bits, rounded), so its sums are exact and do not
// depend on summation order: the kernel is deterministic, and differs from the reference only
// where a cut falls within ~V * 2^-mass_bits of a boundary or p is within an ulp of min_p (the
// device's exp is not glibc's) -- see docs/PERFORMANCE.md.
#pragma once

#include <cstdint>
#include <vector>

namespace shoal::kernels {

// One draw: its row of logits and how to pick from it.
struct SampleDraw {
  int64_t row = 0;
  int32_t greedy = 0;  // argmax (the first of equal maxima); temperature etc. unused
  int32_t top_k = 0;   // 0 = off
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
  double u = 0;  // uniform in [0, 1) (unused when greedy)
};

struct SampledToken {
  int32_t id = 0;
  // log p(id) under the distribution sampled from (temperature and truncation applied); greedy:
  // under the model's own distribution (temperature 1, no truncation).
  float logprob = 0;
};

// Reference (host): the draw from row x [vocab]. kept (optional) receives the truncated set as
// sorted ids, or nothing when the whole vocabulary was kept (greedy included).
SampledToken sample_row_ref(const float* x, int64_t vocab, const SampleDraw& d,
                            std::vector<int32_t>* kept = nullptr);

// The bits of the kernel's fixed-point mass for a vocabulary of `vocab` ids (the whole row's mass
// stays below 2^62).
int mass_bits(int64_t vocab);

#ifdef SHOAL_HAVE_CUDA
struct SampleRowsParams {
  const float* logits = nullptr;  // [rows, vocab], row stride ld (device)
  int64_t ld = 0, vocab = 0;
  const SampleDraw* draws = nullptr;  // [n] (device); rows checked by the caller
  int64_t n = 0;
  int32_t* ids = nullptr;     // [n] (device)
  float* logprobs = nullptr;  // [n] (device)
};
// One block per draw; asynchronous on `stream` (a cudaStream_t). Returns a CUDA error code.
int sample_rows_cuda(const SampleRowsParams& p, void* stream);
#endif

}  // namespace shoal::kernels
