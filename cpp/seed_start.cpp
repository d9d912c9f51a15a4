#include "seed_start.hpp"

#include <algorithm>

#include "errors.hpp"
#include "llama.h"
#include "model.hpp"

namespace eager {

void SeedStart::start(int prompt, const PromptJob & job) {
    const int n_seeds = static_cast<int>(job.seeds.size());
    std::vector<int> slots(n_seeds);
    for (int k = 0; k < n_seeds; ++k) slots[k] = table_.create(prompt, -1);
    std::vector<int> order(n_seeds);
    for (int k = 0; k < n_seeds; ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return job.seeds[a].prefix < job.seeds[b].prefix; });
    TopK top;
    float entropy = 0.0f;
    int previous = -1;
    for (int k : order) {
        const int32_t row = prefill_after(job, slots, k, previous);
        take_first_token(slots[k], job.seeds[k], row, top, entropy);
        previous = k;
    }
}

int32_t SeedStart::prefill_after(const PromptJob & job, const std::vector<int> & slots, int k, int previous) {
    const BranchSeed & seed = job.seeds[k];
    const llama_seq_id id = table_[slots[k]].id;
    const int32_t n_prompt = static_cast<int32_t>(job.tokens.size());
    if (previous < 0) {
        int32_t row = prefill_.prompt(job.tokens, id, stats_);
        if (!seed.prefix.empty()) row = prefill_.tokens(seed.prefix, 0, n_prompt, id, "branch prefix prefill");
        stats_.reprocessed_tokens += static_cast<int64_t>(seed.prefix.size());
        return row;
    }
    const std::vector<int32_t> & before = job.seeds[previous].prefix;
    const auto [a, b] = std::mismatch(before.begin(), before.end(), seed.prefix.begin(), seed.prefix.end());
    const size_t common = static_cast<size_t>(b - seed.prefix.begin());
    llama_memory_t mem = llama_get_memory(ctx_);
    const llama_seq_id from = table_[slots[previous]].id;
    if (common == seed.prefix.size() && a == before.end()) {  // the same point: the whole sequence
        llama_memory_seq_cp(mem, from, id, -1, -1);
        return -1;
    }
    llama_memory_seq_cp(mem, from, id, 0, n_prompt + static_cast<int32_t>(common));
    stats_.reprocessed_tokens += static_cast<int64_t>(seed.prefix.size() - common);
    return prefill_.tokens(seed.prefix, common, n_prompt + static_cast<int32_t>(common), id, "branch prefix prefill");
}

void SeedStart::take_first_token(int slot, const BranchSeed & seed, int32_t row, TopK & top, float & entropy) {
    // The seed's inherited part, then its forced first token from the logits at the point (`row`),
    // or from the previous seed's candidates when both continue the same point (row -1).
    LiveSequence & seq = table_[slot];
    SequenceResult & res = table_.result(seq);
    const int32_t n_prompt = static_cast<int32_t>(table_.job(seq.prompt).tokens.size());
    res.branch_step = static_cast<int>(seed.prefix.size());
    for (int32_t t : seed.prefix) res.text += model_.token_to_piece(t);
    seq.generated = static_cast<int>(seed.prefix.size());
    seq.n_past = n_prompt + seq.generated;
    seq.past_marker = !cfg_.think_end_marker.empty() && res.text.find(cfg_.think_end_marker) != std::string::npos;
    if (row >= 0) rows_.top_of_row(ctx_, row, std::max(cfg_.entropy_k, seed.rank + static_cast<int>(seed.exclude.size())), top, entropy);
    const int32_t token = nth_not_excluded(top, seed.exclude, seed.rank);
    if (token < 0) throw LlamaError("internal error: a branch point has fewer candidate tokens than its seed's rank");
    (void) seq.rng.uniform();  // the step's draw, as every sequence takes one per step
    res.branch_entropy = entropy;
    table_.append(seq, token, entropy);
}

}  // namespace eager
