// Probes of llama.cpp behaviour that the tests check against: forking by KV sequence copy.
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

}  // namespace eager
