// Probes of llama.cpp behaviour that the tests check against: forking by KV sequence copy, and
// the device top-K ops against the host kernel on the very same logits; and the bare decode that the
// engine-efficiency benchmark measures the engine against.
#pragma once

#include <cstdint>
#include <vector>

#include "model.hpp"

namespace eager {

struct ForkProbe {
    std::vector<float> parent;  // last logits row of the parent after the continuation
    std::vector<float> child;   // the same for the child forked before the continuation
    std::vector<float> fresh;   // one prefill of prefix + continuation in a clean cache
};

// Prefills `prefix` as sequence 0, forks it into sequence 1 with llama_memory_seq_cp, feeds
// `continuation` one token per step to both in the same batch, and compares with a fresh
// prefill of the whole token list.
ForkProbe probe_fork(Model & model, const std::vector<int32_t> & prefix, const std::vector<int32_t> & continuation,
                     int n_threads);

struct DeviceRowProbe {
    std::vector<float> logits;      // the full row, as llama.cpp copied it back to the host
    std::vector<int32_t> ids;       // the device's C candidates (unordered)
    std::vector<float> cand_logits; // their logits
    std::vector<float> cand_probs;  // their full-row probabilities at the sample temperature
    float entropy = 0.0f;           // the device's top-K entropy
};

// Prefills each prompt as its own sequence in one batch twice: once with the device top-K
// samplers on every sequence, once without, which copies the raw rows back. The two passes
// run the same model graph on the same batch, so the logits match (the test checks that the
// candidates' logits equal the raw row's at their ids). Mixing sequences with and without a
// sampler in one batch is no substitute: llama.cpp may then reuse the raw logits' buffer.
std::vector<DeviceRowProbe> probe_device_topk(Model & model, const std::vector<std::vector<int32_t>> & prompts,
                                              const DeviceTopKParams & params, int n_threads);

// Bare llama_decode throughput for the engine-efficiency benchmark: prefill `prompt`, fork it
// into n_sequences, then decode n_steps steps of one token per sequence with logits for each.
// Returns the seconds spent in those decode steps.
double bench_bare_decode(Model & model, const std::vector<int32_t> & prompt, int n_sequences, int n_steps,
                         int n_threads);

}  // namespace eager
