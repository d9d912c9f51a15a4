#include "seed_start.hpp"

#include <algorithm>
#include <cmath>

#include "errors.hpp"
#include "llama.h"

namespace eager {

void SeedStart::start(int prompt, const PromptJob & job) {
    const int n_seeds = static_cast<int>(job.seeds.size());
    std::vector<int> slots(n_seeds);
    for (int k = 0; k < n_seeds; ++k) slots[k] = table_.create_root(prompt);
    std::vector<int> order(n_seeds);
    for (int k = 0; k < n_seeds; ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return job.seeds[a].prefix < job.seeds[b].prefix; });
    TopK top;
    float entropy = 0.0f;
    int previous = -1;
    int ranked = 0;
    for (size_t at = 0; at < order.size(); ++at) {
        const int k = order[at];
        const int32_t row = prefill_after(job, slots, k, previous);
        if (row >= 0) ranked = ranked_at_point(job, order, at);
        take_first_token(slots[k], job.seeds[k], row, ranked, top, entropy);
        previous = k;
    }
}

int SeedStart::ranked_at_point(const PromptJob & job, const std::vector<int> & order, size_t at) const {
    // Later seeds at the same point reuse this scan, so it reaches the largest rank any of them asks.
    int ranked = cfg_.entropy_k;
    if (cfg_.sampling.top_p < 1.0f) ranked = kMaxEntropyTopK;  // top_p's mass is judged over these
    for (size_t j = at; j < order.size() && job.seeds[order[j]].prefix == job.seeds[order[at]].prefix; ++j) {
        const BranchSeed & seed = job.seeds[order[j]];
        ranked = std::max(ranked, seed.rank + static_cast<int>(seed.exclude.size()));
    }
    return std::min(ranked, kMaxEntropyTopK);
}

int allowed_by_filters(const TopK & top, const SamplingParams & sampling) {
    int n = top.size;
    if (sampling.top_k > 0) n = std::min(n, sampling.top_k);
    if (n == 0 || (sampling.min_p <= 0.0f && sampling.top_p >= 1.0f)) return n;
    const double t = sampling.temperature > 0.0f ? sampling.temperature : 1.0;
    std::vector<double> w(n);
    double total = 0.0;
    for (int i = 0; i < n; ++i) {
        w[i] = std::exp((top.items[i].logit - top.items[0].logit) / t);
        if (w[i] < sampling.min_p) return i;  // weights fall with the rank: the rest are cut too
        total += w[i];
    }
    if (sampling.top_p >= 1.0f) return n;
    double kept = 0.0;
    int keep = 0;
    while (keep < n && kept < sampling.top_p * total) kept += w[keep++];
    return std::max(keep, 1);
}

int32_t SeedStart::prefill_after(const PromptJob & job, const std::vector<int> & slots, int k, int previous) {
    const BranchSeed & seed = job.seeds[k];
    const llama_seq_id id = table_[slots[k]].id;
    const int32_t n_prompt = static_cast<int32_t>(job.tokens.size());
    if (previous < 0) {
        table_.own_cells(slots[k]);
        int32_t row = prefill_.prompt(job.tokens, id);
        if (!seed.prefix.empty()) row = prefill_.tokens(seed.prefix, 0, n_prompt, id, "branch prefix prefill");
        reprocessed_ += static_cast<int64_t>(seed.prefix.size());
        return row;
    }
    const std::vector<int32_t> & before = job.seeds[previous].prefix;
    const auto [a, b] = std::mismatch(before.begin(), before.end(), seed.prefix.begin(), seed.prefix.end());
    const size_t common = static_cast<size_t>(b - seed.prefix.begin());
    const llama_seq_id from = table_[slots[previous]].id;
    if (common == seed.prefix.size() && a == before.end()) {  // the same point: the whole sequence
        kv_.copy_all(from, id);
        table_.copied_cells(slots[previous], slots[k], n_prompt + static_cast<int32_t>(before.size()));
        return -1;
    }
    const int32_t shared = n_prompt + static_cast<int32_t>(common);
    if (!kv_.copy_is_whole(from, shared)) {  // its window there is gone: prefill it all again
        table_.own_cells(slots[k]);
        prefill_.tokens(job.tokens, 0, 0, id, "prompt prefill");
        reprocessed_ += static_cast<int64_t>(seed.prefix.size());
        return seed.prefix.empty() ? -1 : prefill_.tokens(seed.prefix, 0, n_prompt, id, "branch prefix prefill");
    }
    kv_.copy_prefix(from, id, shared);
    table_.copied_cells(slots[previous], slots[k], shared);
    reprocessed_ += static_cast<int64_t>(seed.prefix.size() - common);
    return prefill_.tokens(seed.prefix, common, shared, id, "branch prefix prefill");
}

void SeedStart::take_first_token(int slot, const BranchSeed & seed, int32_t row, int ranked, TopK & top,
                                 float & entropy) {
    // The seed's inherited part, then its forced first token from the logits at the point (`row`),
    // or from the previous seed's candidates when both continue the same point (row -1).
    table_.start_seed(slot, seed.prefix);
    if (row >= 0) rows_.top_of_row(ctx_.get(), row, ranked, top, entropy);
    TopK allowed = top;
    allowed.size = allowed_by_filters(top, cfg_.sampling);
    table_.take_seed_token(slot, nth_not_excluded(allowed, seed.exclude, seed.rank), entropy);
}

}  // namespace eager
