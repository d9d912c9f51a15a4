#include "admission.hpp"

#include <algorithm>

#include "run_plan.hpp"

namespace eager {

bool Admission::may_admit(const PromptJob & job, const std::vector<PromptLoad> & in_flight, int live,
                          int64_t cells_held, bool staggered) const {
    if (ids_reserved_ + job.max_sequences > ids_available_) return false;
    if (live == 0) return true;
    const double estimate = growth_estimate();
    const double need = static_cast<double>(job.tokens.size()) + expected_sequences(job.max_sequences, estimate) *
                                                                   std::min<double>(expected_length(), max_new_tokens_);
    if (!staggered && cells_held + expected_growth(in_flight, estimate) + need > usable_cells(cells_))
        return false;
    // With a unified KV cache every token attends over all cells in use, so a batch far past the
    // throughput peak slows every token.
    return expected_live(in_flight, estimate) + expected_sequences(job.max_sequences, estimate) <= max_live_;
}

void Admission::count_final(int n_sequences) {
    final_sequences_ += n_sequences;
    ++final_count_;
}

void Admission::sequence_finished(int length) {
    finished_tokens_ += length;
    ++finished_sequences_;
}

double Admission::expected_length() const {
    return finished_sequences_ > 0 ? finished_tokens_ / finished_sequences_ : max_new_tokens_;
}

double Admission::expected_sequences(int max_sequences, double estimate) const {
    // EAGer prompts grow after admission, up to their cap, as long as they may branch. Before any
    // prompt's count is final (negative estimate) the cap is assumed, so the first admissions do not
    // overshoot. (Projecting the first wave's growth from its branching so far was tried: at θ = 2.5 on
    // GSM8K it admitted 14 prompts that grew to 70 live sequences, each step costing 16 ms per token
    // instead of 8.)
    if (method_ == Method::Parallel) return max_sequences;
    const double m = max_sequences;
    return estimate < 0 ? m : std::clamp(estimate, 1.0, m);
}

double Admission::expected_live(const std::vector<PromptLoad> & in_flight, double estimate) const {
    double total = 0;
    for (const PromptLoad & p : in_flight) {
        if (!p.branching) {
            total += p.live;
            continue;
        }
        const int finished = p.n_sequences - p.live;
        total += std::max<double>(p.live, expected_sequences(p.max_sequences, estimate) - finished);
    }
    return total;
}

double Admission::expected_growth(const std::vector<PromptLoad> & in_flight, double estimate) const {
    const double length = expected_length();
    double total = 0;
    for (const PromptLoad & p : in_flight) {
        total += std::max(0.0, p.live * length - static_cast<double>(p.live_tokens));
        if (p.branching) total += std::max(0.0, expected_sequences(p.max_sequences, estimate) - p.n_sequences) * length;
    }
    return total;
}

}  // namespace eager
