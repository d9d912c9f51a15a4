// May the next prompt start now? Admission reserves each admitted prompt's sequence ids and
// worst-case KV cells (so a branch never finds the cache full) and keeps the batch near
// llama.cpp's throughput peak, counting the sequences EAGer prompts are expected to grow into.
// Pure: it sees the prompts in flight as plain loads, never the KV cache.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.hpp"

namespace eager {

// One admitted prompt as admission sees it.
struct PromptLoad {
    int max_sequences = 0;
    int n_sequences = 0;  // sequences it has now (finished ones included)
    int live = 0;
    bool branching = true;  // may still branch, so may still grow
};

class Admission {
public:
    Admission(Method method, int max_live_sequences, int max_new_tokens, int ids_available, int64_t cells_available)
        : method_(method), max_live_(max_live_sequences), max_new_tokens_(max_new_tokens),
          ids_available_(ids_available), cells_available_(cells_available) {}

    // Cells held outside any prompt (the prefix anchor's).
    void reserve_cells(int64_t cells) { cells_reserved_ += cells; }

    // Whether `job` may start beside the prompts in flight (in admission order) and `live` live sequences.
    bool may_admit(const PromptJob & job, const std::vector<PromptLoad> & in_flight, int live) const;

    void admitted(const PromptJob & job);
    void released(const PromptJob & job);
    // A prompt's sequence count became final (it closed for branching or finished): it joins the
    // growth estimate.
    void count_final(int n_sequences);

    // The mean final sequence count of prompts whose count is final, -1 before any is.
    double growth_estimate() const { return final_count_ > 0 ? final_sequences_ / final_count_ : -1.0; }
    // Sequences a prompt capped at `max_sequences` is expected to end with.
    double expected_sequences(int max_sequences, double estimate) const;
    // Live sequences the prompts in flight are expected to reach.
    double expected_live(const std::vector<PromptLoad> & in_flight, double estimate) const;

private:
    Method method_;
    int max_live_;
    int max_new_tokens_;
    int ids_available_;
    int64_t cells_available_;
    int ids_reserved_ = 0;
    int64_t cells_reserved_ = 0;
    double final_sequences_ = 0;  // sums over prompts whose count is final, kept as they become so:
    int final_count_ = 0;         // admission stays O(prompts in flight), not O(prompts so far)
};

}  // namespace eager
