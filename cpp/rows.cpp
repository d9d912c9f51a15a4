#include "rows.hpp"

#include <algorithm>

#include "device_topk.hpp"
#include "errors.hpp"
#include "llama.h"
#include "run_plan.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace eager {

RowRequest row_request(const EngineConfig & config, bool want_entropy) {
    RowRequest rq;
    rq.entropy_k = config.entropy_k;
    rq.want_entropy = want_entropy;
    rq.entropy_temperature = entropy_temperature(config);
    rq.sampling = config.sampling;
    return rq;
}

RowWork::RowWork(const EngineConfig & config, int n_vocab, int n_threads)
    : cfg_(config), n_vocab_(n_vocab), n_threads_(n_threads), scratch_(n_threads) {}

const std::vector<RowResult> & RowWork::compute(llama_context * ctx, const std::vector<int32_t> & output_rows,
                                                const std::vector<RowRequest> & requests,
                                                const std::vector<double> & draws, double & dropped_mass_max) {
    const int n = static_cast<int>(output_rows.size());
    results_.resize(n);
    const int threads = std::min(n_threads_, n);
    // Read llama.cpp's outputs serially (its accessors are not meant for concurrent calls), then
    // do the rows' work in parallel: a full logits row each on the host path, C candidates each
    // on the device path (whose steps over hundreds of sequences are short on a GPU).
    const bool device = cfg_.device_topk;
    std::vector<DeviceRow> device_rows(device ? n : 0);
    std::vector<const float *> rows(device ? 0 : n);
    std::vector<double> dropped(device ? n : 0);
    for (int i = 0; i < n; ++i) {
        if (device) {
            device_rows[i] = read_device_row(ctx, output_rows[i]);
        } else {
            rows[i] = llama_get_logits_ith(ctx, output_rows[i]);
            if (rows[i] == nullptr) throw LlamaError("llama.cpp returned no logits for a sequence");
        }
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
    for (int i = 0; i < n; ++i) {
#ifdef _OPENMP
        RowScratch & scratch = scratch_[omp_get_thread_num()];
#else
        RowScratch & scratch = scratch_[0];
#endif
        if (!device) {
            results_[i] = process_row(rows[i], n_vocab_, requests[i], draws[i], scratch);
            continue;
        }
        const DeviceRow & d = device_rows[i];
        results_[i] = process_candidates(d.ids, d.logits, d.count, d.entropy, requests[i], draws[i], scratch);
        double kept = 0.0;
        for (int c = 0; c < d.count; ++c) kept += d.probs[c];
        dropped[i] = 1.0 - kept;
    }
    for (double m : dropped) dropped_mass_max = std::max(dropped_mass_max, m);
    return results_;
}

void RowWork::top_of_row(llama_context * ctx, int32_t row, int k, TopK & top, float & entropy) const {
    if (cfg_.device_topk) {
        const DeviceRow d = read_device_row(ctx, row);
        top_of_candidates(d.ids, d.logits, d.count, k, top);
        entropy = d.entropy;
        return;
    }
    const float * logits = llama_get_logits_ith(ctx, row);
    if (logits == nullptr) throw LlamaError("llama.cpp returned no logits for a branch prefix");
    scan_row(logits, n_vocab_, k, top);
    entropy = topk_entropy_of(top, cfg_.entropy_k, entropy_temperature(cfg_));
}

}  // namespace eager
