// The CUDA backend: every Backend op on device memory (f32 compute; copy() converts to and from
// bf16/f16/FP8 storage), with a caching stream-ordered allocator. Header free of CUDA includes;
// only built when SHOAL_HAVE_CUDA (engine/CMakeLists.txt). Not multi-GPU, not CUDA graphs yet.
#pragma once

#include <memory>
#include <string>

#include "engine/backend.h"

namespace shoal {

// The backend on CUDA device `device` (its own stream, cuBLAS handle and allocator, shared by all
// backends of that device). Throws shoal::Error when the device is unusable.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

// Empty when a CUDA device is usable, else why not (for skipping GPU tests with a reason).
std::string cuda_unavailable_reason();

// Waits for the work queued on `device`'s backend stream, then throws if a kernel reported bad
// input (an index out of range, a label outside its token set) since the last check. Ops that
// return host values (to_host, sum_squares, cross_entropy, indexer_kl, moe_sort) do this too.
void cuda_synchronize(int device = 0);

// Bytes held by live tensors on `device` (not counting the allocator's cache).
size_t cuda_live_bytes(int device = 0);

}  // namespace shoal
