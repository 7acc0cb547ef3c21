// KernelStatus: how a kernel reports bad input it found on the device (an index out of range, a
// label missing from its token set) without a host round trip. The first report wins; the engine
// reads the record at its next synchronisation and throws a shoal::Error naming the op and value.
// Not an exception mechanism for device code: a reporting kernel skips the offending element.
#pragma once

#include <cstdint>

namespace shoal::kernels {

// What was wrong; the engine turns each into a message (engine/cuda/cuda_context.cpp).
enum class KernelFault : int32_t {
  none = 0,
  index_out_of_range,   // value at position `where` outside [lo, hi)
  label_not_in_set,     // token_logprobs: the row's set lacks its label (value = label)
  sparse_no_key,        // sparse attention: token `where` selects no key at or before itself
  sparse_out_of_range,  // sparse attention: index `value` for token `where` outside its sequence
};

// Lives in device memory (zeroed by the engine). `op` is a short static name chosen by the engine
// (an index into its table), not a device string.
struct KernelStatus {
  int32_t fault = 0;  // KernelFault; 0 = nothing reported
  int32_t op = 0;
  int64_t where = 0, value = 0, lo = 0, hi = 0;
};

#ifdef __CUDACC__
// Records the first fault; later ones are dropped (one clear message beats a flood).
__device__ inline void report_fault(KernelStatus* st, int32_t op, KernelFault f, int64_t where,
                                    int64_t value, int64_t lo, int64_t hi) {
  if (st == nullptr) return;
  if (atomicCAS(&st->fault, 0, -1) == 0) {
    st->op = op;
    st->where = where;
    st->value = value;
    st->lo = lo;
    st->hi = hi;
    __threadfence();
    atomicExch(&st->fault, int32_t(f));
  }
}
#endif

}  // namespace shoal::kernels
