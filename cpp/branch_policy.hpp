// The EAGer decision, built once from the run's settings and asked per row, as llama.cpp's
// common_sampler is: may a sequence branch, does this row branch (fixed θ or the p99 floor), and
// does the prompt's branching stay open after the step (the cap M and the no-branch window).
// Pure: no model, no KV cache; the engine applies what it decides.
#pragma once

#include <vector>

#include "engine.hpp"
#include "row_kernel.hpp"

namespace eager {

// What one row's branch is checked against the cap with: the prompt's sequences when the step began,
// the row's position among the prompt's rows of the step (by sequence index) and the sequences now.
struct CapCount {
    int at_step_start = 0;
    int row_position = 0;
    int now = 0;
};

// One prompt's branching state across steps.
struct BranchState {
    bool open = true;                 // closed for good once the cap or the no-branch window is reached
    int steps_without_branch = 0;
    bool branched_this_step = false;
    std::vector<float> history;       // p99 mode: the entropies of earlier steps
    std::vector<float> this_step;     // p99 mode: this step's, joining the history when it ends
};

// The 99th percentile with linear interpolation between closest ranks (numpy.percentile's default);
// -inf for no values.
float percentile_99(std::vector<float> values);

class BranchPolicy {
public:
    BranchPolicy(Method method, ThresholdMode mode, int no_branch_window, CapRule cap_rule = CapRule::Prompt)
        : method_(method), mode_(mode), no_branch_window_(no_branch_window), cap_rule_(cap_rule) {}

    // A sequence may branch while EAGer-init runs, its prompt is open and under its cap (counted as the
    // cap rule says), and the sequence has not yet generated the end-of-thinking marker.
    bool may_branch(const BranchState & prompt, bool past_marker, const CapCount & count, int max_sequences) const {
        const int counted = cap_rule_ == CapRule::Row ? count.at_step_start + count.row_position : count.now;
        return method_ == Method::EagerInit && prompt.open && !past_marker && counted < max_sequences;
    }

    // Whether a row (of a sequence that may branch) branches at threshold `theta`: entropy above θ,
    // in p99 mode also above the 99th percentile of the prompt's earlier entropies, and a second
    // token distinct from the first to give the child.
    bool branches(const RowResult & row, float theta, const BranchState & prompt) const;

    // The row's entropy, for the p99 history (NaN entropies are not kept).
    void observe(BranchState & prompt, float entropy) const;
    void mark_branch(BranchState & prompt) const { prompt.branched_this_step = true; }

    // The end of a step the prompt took part in: the window counts on, p99 entropies join the
    // history, branching closes at the cap or after no_branch_window steps without a branch.
    // Returns whether it is closed now.
    bool end_step(BranchState & prompt, int n_sequences, int max_sequences) const;

    // A prompt at its cap before any step (seeds that fill it) branches no more.
    bool close_if_capped(BranchState & prompt, int n_sequences, int max_sequences) const;

    bool p99() const { return mode_ == ThresholdMode::P99; }

private:
    Method method_;
    ThresholdMode mode_;
    int no_branch_window_;
    CapRule cap_rule_;
};

}  // namespace eager
