// One step's per-row work: what each row asks for, and the row kernel over every output row
// (a full logits row on the host path, C candidates on the device path), rows in parallel.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.hpp"
#include "row_kernel.hpp"

struct llama_context;

namespace eager {

// What the row of a sequence asks for under `config`; `want_entropy` is false only when nothing
// reads the entropy (not recorded, the sequence cannot branch).
RowRequest row_request(const EngineConfig & config, bool want_entropy);

class RowWork {
public:
    RowWork(const EngineConfig & config, int n_vocab, int n_threads);

    // The kernel over output rows `output_rows` (batch indices) with one uniform draw each.
    // Device path: the largest probability mass a row left outside its candidates goes into
    // `dropped_mass_max`.
    const std::vector<RowResult> & compute(llama_context * ctx, const std::vector<int32_t> & output_rows,
                                           const std::vector<RowRequest> & requests, const std::vector<double> & draws,
                                           double & dropped_mass_max);

    // The k most likely tokens at output row `row` and the row's top-K entropy: a branch point that
    // tree reallocation continues.
    void top_of_row(llama_context * ctx, int32_t row, int k, TopK & top, float & entropy) const;

private:
    const EngineConfig & cfg_;
    int n_vocab_;
    int n_threads_;
    std::vector<RowScratch> scratch_;  // one per thread
    std::vector<RowResult> results_;
};

}  // namespace eager
