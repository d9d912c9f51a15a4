// The CUDA alternative to the in-graph device path: one kernel that reads logits rows already
// on the GPU and writes each row's top-K (sorted, ties to the lower id) and top-K entropy.
// Built only with -DEAGER_CPP_CUDA=ON; this header has no CUDA types, so host code includes it.
#pragma once

#include <cstdint>
#include <string>

namespace eager::cuda {

constexpr int kMaxK = 64;

// Whether a CUDA device can run the kernel; `why` says why not.
bool device_available(std::string * why);

struct TopKTiming {
    double kernel_ms = 0;    // the kernel alone, by CUDA events
    double transfer_ms = 0;  // host-to-device copy of the rows and the copy back of the results
};

// Copies `n_rows` x `n_vocab` host logits to the device, runs the kernel and copies back
// `ids`/`values` (n_rows x k, best first) and `entropy` (n_rows). Throws std::runtime_error
// with CUDA's message on failure.
TopKTiming topk_entropy(const float * logits, int n_rows, int n_vocab, int k, float temperature, int32_t * ids,
                        float * values, float * entropy);

// The same on rows already resident on the device (all pointers are device pointers); `stream`
// is a cudaStream_t (nullptr: the default stream). Returns without synchronising.
void topk_entropy_device(const float * d_logits, int n_rows, int n_vocab, int k, float temperature, int32_t * d_ids,
                         float * d_values, float * d_entropy, void * stream);

}  // namespace eager::cuda
