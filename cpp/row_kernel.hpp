// The fused per-row kernel: one read of a logits row yields the top-K (for the entropy and
// the top-2 branch alternatives) and the sampling candidates (for temperature sampling).
//
// A Gemma 3 logits row is 262,144 floats (1 MiB), so reading it once matters more than
// anything done with the few values that survive the scan.
#pragma once

#include <cstdint>
#include <vector>

namespace eager {

constexpr int kMaxEntropyTopK = 64;

struct TokenLogit {
    int32_t id;
    float logit;
};

struct SamplingParams {
    float temperature = 0.6f;  // 0 = greedy
    int top_k = 0;             // 0 = off
    float top_p = 1.0f;        // 1 = off
    float min_p = 0.0f;        // 0 = off
};

struct RowRequest {
    int entropy_k = 20;                // K of the top-K entropy (2..64)
    bool want_entropy = true;          // false skips the entropy arithmetic (top-2 is still found)
    float entropy_temperature = 1.0f;  // logits are divided by this before the entropy
    SamplingParams sampling;
};

struct RowResult {
    float entropy = 0.0f;  // NaN when not requested
    int32_t top1 = -1;
    int32_t top2 = -1;
    int32_t sampled = -1;  // the token drawn at the sampling temperature (top1 when greedy)
};

// Reused buffers, one per worker thread, so the hot path allocates nothing.
struct RowScratch {
    std::vector<int32_t> ids;  // sampling candidates: token ids ...
    std::vector<float> values; // ... their logits, then their weights
    std::vector<TokenLogit> pairs;  // the device path's candidates, put in id order
};

// Top-K of a row, sorted by logit descending; ties go to the lower token id, which makes
// the result independent of how the scan is blocked.
struct TopK {
    int k = 0;
    int size = 0;
    TokenLogit items[kMaxEntropyTopK];
};

// Entropy (natural log) of the renormalised softmax over the given top-K logits.
float topk_entropy_of(const TopK & top, int k, float temperature);

// One pass over the row that fills `top` with its k largest logits. Blocks whose maximum
// cannot enter the top-K are skipped after one SIMD max.
void scan_row(const float * logits, int n_vocab, int k, TopK & top);

// Appends every token whose logit is >= threshold (SIMD compare, ascending ids).
void collect_at_least(const float * logits, int n_vocab, float threshold, std::vector<int32_t> & ids,
                      std::vector<float> & values);

// Full per-row work: scan, entropy, sampling with the uniform draw `u` in [0, 1).
RowResult process_row(const float * logits, int n_vocab, const RowRequest & request, double u,
                      RowScratch & scratch);

// The same from a row's candidates (the device path): `n` token ids and logits in any order,
// the entropy computed where they were selected. Sampling is renormalised over the candidates.
RowResult process_candidates(const int32_t * ids, const float * logits, int n, float entropy,
                             const RowRequest & request, double u, RowScratch & scratch);

// The device path's scan_row: the k best of `n` candidates (any order), in scan_row's order.
void top_of_candidates(const int32_t * ids, const float * logits, int n, int k, TopK & top);

// The `rank`-th (1-based) most likely token of `top` whose id is not in `exclude`: how a continued
// tree takes the best alternative not yet taken at a branch point. -1 when `top` holds too few.
int32_t nth_not_excluded(const TopK & top, const std::vector<int32_t> & exclude, int rank);

}  // namespace eager
