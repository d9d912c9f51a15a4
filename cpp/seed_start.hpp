// Tree-reallocation seeds (BranchSeed): every seed of a prompt becomes one new sequence that starts
// from its prefix and takes a forced first token, the rank-th most likely not yet taken at its point.
// Prefixes are prefilled in sorted order; each copies from the one before it the longest common start
// any earlier one could offer (KV sequence copy), so a shared part is decoded once and only the rest
// is reprocessed. A forced token comes from the tokens the run's own filters (top_k, top_p, min_p)
// allow at the point; a seed whose rank-th untaken token lies outside them (or beyond the tokens
// ranked) offers nothing: its sequence ends at once with finish_reason "unavailable", no own tokens.
#pragma once

#include <vector>

#include "engine.hpp"
#include "kv_ops.hpp"
#include "prefill.hpp"
#include "rows.hpp"
#include "sequence_table.hpp"

namespace eager {

class SeedStart {
public:
    SeedStart(const EngineConfig & config, ContextHandle ctx, SequenceTable & table, Prefill & prefill,
              const RowWork & rows, KvOps & kv)
        : cfg_(config), ctx_(ctx), table_(table), prefill_(prefill), rows_(rows), kv_(kv) {}

    // Creates the seeds' sequences of `prompt` (its roots, in seed order) and gives each its first token.
    void start(int prompt, const PromptJob & job);

    // Generated tokens decoded again as seed prefixes so far (their shared parts once).
    int64_t reprocessed_tokens() const { return reprocessed_; }

private:
    // Prefills seed `k`'s prefix after `previous` (-1: none); returns the output row of its point, or -1
    // when it continues the same point as `previous` (whose candidates it reuses).
    int32_t prefill_after(const PromptJob & job, const std::vector<int> & slots, int k, int previous);
    // Candidates for every seed at the same point as seed order[at]: the most any of them ranks to.
    int ranked_at_point(const PromptJob & job, const std::vector<int> & order, size_t at) const;
    void take_first_token(int slot, const BranchSeed & seed, int32_t row, int ranked, TopK & top, float & entropy);

    const EngineConfig & cfg_;
    ContextHandle ctx_;
    SequenceTable & table_;
    Prefill & prefill_;
    const RowWork & rows_;
    KvOps & kv_;
    int64_t reprocessed_ = 0;
};

// How many of `top`'s leading tokens (most likely first) the sampling filters allow: top_k, min_p
// (p >= min_p * p_max) and top_p (the smallest set whose mass reaches top_p, judged over `top`), with
// probabilities at the sampling temperature (1 when greedy).
int allowed_by_filters(const TopK & top, const SamplingParams & sampling);

}  // namespace eager
