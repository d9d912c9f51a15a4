// May the next prompt start now? Admission keeps the batch near llama.cpp's throughput peak, counting
// the sequences EAGer prompts are expected to grow into, and starts a prompt only when the cells its
// tree is expected to need fit beside the cells held now and the growth expected of the prompts in
// flight (lengths learnt from the sequences finished so far). It reserves sequence ids, never cells:
// a cache that fills anyway preempts (kv_scheduler.hpp). Pure: it sees prompts as plain loads.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.hpp"

namespace eager {

// One admitted prompt as admission sees it.
struct PromptLoad {
    int max_sequences = 0;
    int n_sequences = 0;  // sequences it has now (finished ones included)
    int live = 0;         // running or paused
    bool branching = true;  // may still branch, so may still grow
    int64_t live_tokens = 0;  // tokens its live sequences have generated (inherited ones included)
};

class Admission {
public:
    Admission(Method method, int max_live_sequences, int max_new_tokens, int ids_available, int64_t cells)
        : method_(method), max_live_(max_live_sequences), max_new_tokens_(max_new_tokens),
          ids_available_(ids_available), cells_(cells) {}

    // Whether `job` may start beside the prompts in flight (in admission order), `live` live sequences
    // and `cells_held` cells in use. With nothing live, any job starts. `staggered`: its sequences may
    // start one after another as cells allow (KvScheduler::admits_staggered), so its tree need not fit now.
    bool may_admit(const PromptJob & job, const std::vector<PromptLoad> & in_flight, int live,
                   int64_t cells_held, bool staggered = false) const;

    // Per-sequence streams that preempt change how many ids there are (KvScheduler::shrink_streams).
    void set_ids_available(int ids) { ids_available_ = ids; }
    void admitted(const PromptJob & job) { ids_reserved_ += job.max_sequences; }
    void released(const PromptJob & job) { ids_reserved_ -= job.max_sequences; }
    // A prompt's sequence count became final (it closed for branching or finished): it joins the
    // growth estimate.
    void count_final(int n_sequences);
    // A sequence finished after `length` tokens: it joins the length estimate.
    void sequence_finished(int length);

    // The mean final sequence count of prompts whose count is final, -1 before any is.
    double growth_estimate() const { return final_count_ > 0 ? final_sequences_ / final_count_ : -1.0; }
    // The mean length of finished sequences, max_new_tokens before any finished.
    double expected_length() const;
    // Sequences a prompt capped at `max_sequences` is expected to end with.
    double expected_sequences(int max_sequences, double estimate) const;
    // Live sequences the prompts in flight are expected to reach.
    double expected_live(const std::vector<PromptLoad> & in_flight, double estimate) const;
    // Cells the prompts in flight are expected to add before they finish.
    double expected_growth(const std::vector<PromptLoad> & in_flight, double estimate) const;

private:
    Method method_;
    int max_live_;
    int max_new_tokens_;
    int ids_available_;
    int64_t cells_;
    int ids_reserved_ = 0;
    double final_sequences_ = 0;  // sums over prompts whose count is final, kept as they become so:
    int final_count_ = 0;         // admission stays O(prompts in flight), not O(prompts so far)
    double finished_tokens_ = 0;
    int64_t finished_sequences_ = 0;
};

}  // namespace eager
