#include "branch_policy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace eager {

float percentile_99(std::vector<float> values) {
    if (values.empty()) return -std::numeric_limits<float>::infinity();
    const double rank = 0.99 * (values.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(rank));
    std::nth_element(values.begin(), values.begin() + lo, values.end());
    const float a = values[lo];
    if (lo + 1 >= values.size()) return a;
    const float b = *std::min_element(values.begin() + lo + 1, values.end());
    return static_cast<float>(a + (b - a) * (rank - lo));
}

bool BranchPolicy::branches(const RowResult & row, float theta, const BranchState & prompt) const {
    if (row.top2 == row.top1 || row.top2 < 0) return false;
    // The floor only matters when θ alone would branch: skip the percentile otherwise.
    if (row.entropy > theta && mode_ == ThresholdMode::P99) theta = std::max(theta, percentile_99(prompt.history));
    return row.entropy > theta;
}

void BranchPolicy::observe(BranchState & prompt, float entropy) const {
    if (mode_ == ThresholdMode::P99 && !std::isnan(entropy)) prompt.this_step.push_back(entropy);
}

bool BranchPolicy::end_step(BranchState & prompt, int n_sequences, int max_sequences) const {
    // The p99 floor of a step uses earlier steps' entropies only, as the reference code does.
    prompt.history.insert(prompt.history.end(), prompt.this_step.begin(), prompt.this_step.end());
    prompt.this_step.clear();
    prompt.steps_without_branch = prompt.branched_this_step ? 0 : prompt.steps_without_branch + 1;
    prompt.branched_this_step = false;
    if (prompt.steps_without_branch >= no_branch_window_ || n_sequences >= max_sequences) prompt.open = false;
    return !prompt.open;
}

bool BranchPolicy::close_if_capped(BranchState & prompt, int n_sequences, int max_sequences) const {
    if (n_sequences >= max_sequences) prompt.open = false;
    return !prompt.open;
}

}  // namespace eager
