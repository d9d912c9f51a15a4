#include "run_plan.hpp"

#include <algorithm>
#include <string>

#include "errors.hpp"
#include "llama.h"
#include "row_kernel.hpp"

namespace eager {

uint32_t round_up_cells(int64_t cells) {
    return static_cast<uint32_t>((cells + kCellPadding - 1) / kCellPadding * kCellPadding);
}

int64_t worst_case_cells(const PromptJob & job, int max_new_tokens) {
    return static_cast<int64_t>(job.tokens.size()) + static_cast<int64_t>(job.max_sequences) * max_new_tokens;
}

float entropy_temperature(const EngineConfig & config) {
    const float t = config.sampling.temperature;
    return config.entropy_after_temperature && t > 0.0f ? t : 1.0f;
}

double kv_bytes_per_cell(const llama_model * m) {
    const double head_dim = static_cast<double>(llama_model_n_embd(m)) / std::max(1, llama_model_n_head(m));
    return 2.0 * 2.0 * llama_model_n_layer(m) * llama_model_n_head_kv(m) * head_dim;
}

namespace {

void validate_config(const EngineConfig & cfg) {
    if (cfg.max_new_tokens < 1) throw InvalidArgument("max_new_tokens must be at least 1");
    if (cfg.entropy_k < 2 || cfg.entropy_k > kMaxEntropyTopK)
        throw InvalidArgument("top_k_entropy must be between 2 and " + std::to_string(kMaxEntropyTopK));
    if (!(cfg.sampling.temperature >= 0.0f)) throw InvalidArgument("temperature must be >= 0");
    if (cfg.max_live_sequences < 1) throw InvalidArgument("max_live_sequences must be at least 1");
    if (!cfg.device_topk) return;
    if (cfg.device_candidates < cfg.entropy_k || cfg.device_candidates < 2)
        throw InvalidArgument("device_candidates must be at least top_k_entropy (" + std::to_string(cfg.entropy_k) + ")");
    if (cfg.sampling.top_k > cfg.device_candidates)
        throw InvalidArgument("top_k=" + std::to_string(cfg.sampling.top_k) + " exceeds device_candidates=" +
                              std::to_string(cfg.device_candidates) + ": raise device_candidates");
}

void validate_seeds(const EngineConfig & cfg, const PromptJob & job, size_t i, int n_vocab) {
    if (job.seeds.empty()) return;
    const std::string where = "prompt " + std::to_string(i) + ": ";
    if (cfg.method != Method::EagerInit) throw InvalidArgument(where + "branch seeds need the EAGer-init method");
    if (static_cast<int>(job.seeds.size()) > job.max_sequences)
        throw InvalidArgument(where + std::to_string(job.seeds.size()) + " branch seeds exceed max_sequences=" +
                              std::to_string(job.max_sequences));
    for (const BranchSeed & seed : job.seeds) {
        if (static_cast<int>(seed.prefix.size()) >= cfg.max_new_tokens)
            throw InvalidArgument(where + "a branch seed's prefix of " + std::to_string(seed.prefix.size()) +
                                  " tokens leaves no room under max_new_tokens=" + std::to_string(cfg.max_new_tokens));
        if (seed.rank < 1 || seed.rank + static_cast<int>(seed.exclude.size()) > kMaxEntropyTopK)
            throw InvalidArgument(where + "a branch seed's rank must be >= 1 and rank + excluded tokens <= " +
                                  std::to_string(kMaxEntropyTopK));
        for (int32_t t : seed.prefix)
            if (t < 0 || t >= n_vocab) throw InvalidArgument(where + "a branch seed has a token id outside the vocabulary");
    }
}

void validate_job(const EngineConfig & cfg, const PromptJob & job, size_t i, int n_vocab) {
    if (job.tokens.empty()) throw InvalidArgument("prompt " + std::to_string(i) + " has no tokens");
    if (job.max_sequences < 1 || job.max_sequences > kMaxSequenceIds)
        throw InvalidArgument("max_sequences must be between 1 and " + std::to_string(kMaxSequenceIds) +
                              " (llama.cpp's sequence-id limit)");
    for (int32_t t : job.tokens)
        if (t < 0 || t >= n_vocab) throw InvalidArgument("prompt " + std::to_string(i) + " has a token id outside the vocabulary");
    validate_seeds(cfg, job, i, n_vocab);
    const int64_t worst = worst_case_cells(job, cfg.max_new_tokens);
    if (cfg.n_ctx > 0 && worst > cfg.n_ctx)
        throw InvalidArgument("prompt " + std::to_string(i) + " needs up to " + std::to_string(worst) +
                              " KV cells (prompt tokens + max_sequences x max_new_tokens) but n_ctx is " +
                              std::to_string(cfg.n_ctx));
}

DeviceTopKParams device_params(const EngineConfig & cfg) {
    DeviceTopKParams device;
    if (!cfg.device_topk) return device;
    const float t = cfg.sampling.temperature;
    device.enabled = true;
    device.candidates = cfg.device_candidates;
    device.entropy_k = cfg.entropy_k;
    device.entropy_temperature = entropy_temperature(cfg);
    device.sample_temperature = t > 0.0f ? t : 1.0f;
    return device;
}

size_t longest_prompt(const std::vector<PromptJob> & jobs) {
    size_t longest = 0;
    for (const auto & job : jobs) longest = std::max(longest, job.tokens.size());
    return longest;
}

// Cells for the prompts admission could hold at once (in job order, as it admits), within the budget.
int64_t cells_in_flight(const EngineConfig & cfg, const std::vector<PromptJob> & jobs, uint32_t n_seq_max,
                        int64_t budget_cells) {
    int64_t cells = 0, ids = 0, live = 0;
    for (const auto & job : jobs) {
        const int initial = cfg.method == Method::Parallel ? job.max_sequences
                                                            : std::max<int>(1, static_cast<int>(job.seeds.size()));
        const int64_t worst = worst_case_cells(job, cfg.max_new_tokens);
        if (ids + job.max_sequences > n_seq_max) break;
        if (live > 0 && live + initial > cfg.max_live_sequences) break;
        if (cells > 0 && cells + worst > budget_cells) break;
        cells += worst;
        ids += job.max_sequences;
        live += initial;
    }
    return cells;
}

}  // namespace

void validate_run(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_vocab) {
    if (jobs.empty()) throw InvalidArgument("no prompts to run");
    validate_config(config);
    for (size_t i = 0; i < jobs.size(); ++i) validate_job(config, jobs[i], i, n_vocab);
}

bool plans_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs) {
    return config.share_prompt_prefixes && jobs.size() > 1;
}

ContextShape plan_context(const EngineConfig & config, const std::vector<PromptJob> & jobs, double bytes_per_cell) {
    ContextShape shape;
    shape.n_threads = config.n_threads;
    shape.n_batch = kBatchTokens;
    int64_t total_ids = 0;
    int64_t max_worst = 0;
    for (const auto & job : jobs) {
        total_ids += job.max_sequences;
        max_worst = std::max(max_worst, worst_case_cells(job, config.max_new_tokens));
    }
    // One more id for the anchor of prefix sharing, when the limit leaves room for it.
    const bool anchor = plans_anchor(config, jobs);
    shape.n_seq_max = static_cast<uint32_t>(std::min<int64_t>(kMaxSequenceIds, total_ids + (anchor ? 1 : 0)));
    shape.device = device_params(config);
    if (config.n_ctx > 0) {
        shape.n_ctx = config.n_ctx;
        return shape;
    }
    const int64_t budget_cells = static_cast<int64_t>(kAutoKvBudgetBytes / std::max(1.0, bytes_per_cell));
    int64_t cells = std::max(cells_in_flight(config, jobs, shape.n_seq_max, budget_cells), max_worst);
    if (anchor) cells += static_cast<int64_t>(longest_prompt(jobs));  // the anchor may outlive the prompt it copied
    shape.n_ctx = round_up_cells(cells);
    return shape;
}

AnchorPlan plan_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_seq_max, uint32_t n_ctx) {
    AnchorPlan plan;
    if (!plans_anchor(config, jobs)) return plan;
    int max_ids = 0;
    int64_t max_worst = 0;
    for (const auto & job : jobs) {
        max_ids = std::max(max_ids, job.max_sequences);
        max_worst = std::max(max_worst, worst_case_cells(job, config.max_new_tokens));
    }
    const int64_t longest = static_cast<int64_t>(longest_prompt(jobs));
    if (n_seq_max > max_ids && max_worst + longest <= static_cast<int64_t>(n_ctx)) {
        plan.id = n_seq_max - 1;
        plan.reserved = longest;
    }
    return plan;
}

}  // namespace eager
