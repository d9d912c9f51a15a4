#include "run_plan.hpp"

#include <algorithm>
#include <limits>
#include <string>

#include "errors.hpp"
#include "row_kernel.hpp"

namespace eager {

uint32_t round_up_cells(int64_t cells) {
    return static_cast<uint32_t>((cells + kCellPadding - 1) / kCellPadding * kCellPadding);
}

namespace {

// The sequences a job starts with: M for Full Parallel, one per seed (or its root) for EAGer.
int first_sequences(const EngineConfig & config, const PromptJob & job) {
    return config.method == Method::Parallel ? job.max_sequences : std::max<int>(1, static_cast<int>(job.seeds.size()));
}

}  // namespace

int64_t min_cells(const EngineConfig & config, const PromptJob & job) {
    size_t prefix = 0;
    for (const BranchSeed & seed : job.seeds) prefix = std::max(prefix, seed.prefix.size());
    return static_cast<int64_t>(job.tokens.size() + prefix) + first_sequences(config, job);
}

int64_t sequence_cells(const EngineConfig & config, const PromptJob & job) {
    return static_cast<int64_t>(job.tokens.size()) + config.max_new_tokens;
}

int64_t start_cells(const EngineConfig & config, const PromptJob & job) {
    int64_t prefixes = 0;
    for (const BranchSeed & seed : job.seeds) prefixes += static_cast<int64_t>(seed.prefix.size());
    return static_cast<int64_t>(job.tokens.size()) + prefixes + first_sequences(config, job);
}

float entropy_temperature(const EngineConfig & config) {
    const float t = config.sampling.temperature;
    return config.entropy_after_temperature && t > 0.0f ? t : 1.0f;
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
        if (cfg.device_topk && seed.rank + static_cast<int>(seed.exclude.size()) > cfg.device_candidates)
            throw InvalidArgument(where + "a branch seed's rank + excluded tokens exceed device_candidates=" +
                                  std::to_string(cfg.device_candidates) + ", the tokens a row offers on the device path");
        for (const auto * tokens : {&seed.prefix, &seed.exclude})
            for (int32_t t : *tokens)
                if (t < 0 || t >= n_vocab) throw InvalidArgument(where + "a branch seed has a token id outside the vocabulary");
    }
}

void validate_job(const EngineConfig & cfg, const PromptJob & job, size_t i, int n_vocab, int n_ctx_train) {
    if (job.tokens.empty()) throw InvalidArgument("prompt " + std::to_string(i) + " has no tokens");
    if (job.max_sequences < 1 || job.max_sequences > kMaxSequenceIds)
        throw InvalidArgument("max_sequences must be between 1 and " + std::to_string(kMaxSequenceIds) +
                              " (llama.cpp's sequence-id limit)");
    for (int32_t t : job.tokens)
        if (t < 0 || t >= n_vocab) throw InvalidArgument("prompt " + std::to_string(i) + " has a token id outside the vocabulary");
    validate_seeds(cfg, job, i, n_vocab);
    // A sequence never outgrows the model: its last position stays inside the training context.
    const int64_t positions = static_cast<int64_t>(job.tokens.size()) + cfg.max_new_tokens;
    if (n_ctx_train > 0 && positions > n_ctx_train)
        throw InvalidArgument("prompt " + std::to_string(i) + " is " + std::to_string(job.tokens.size()) +
                              " tokens; with max_new_tokens=" + std::to_string(cfg.max_new_tokens) +
                              " a sequence would need " + std::to_string(positions) +
                              " positions, beyond the model's context of " + std::to_string(n_ctx_train));
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

// Prompt cells of the prompts admission could start at once (in job order, as it admits).
int64_t first_wave_prompt_cells(const EngineConfig & cfg, const std::vector<PromptJob> & jobs, uint32_t n_seq_max) {
    int64_t cells = 0, ids = 0, live = 0;
    for (const auto & job : jobs) {
        const int initial = first_sequences(cfg, job);
        if (ids + job.max_sequences > n_seq_max) break;
        if (live > 0 && live + initial > cfg.max_live_sequences) break;
        cells += static_cast<int64_t>(job.tokens.size());
        ids += job.max_sequences;
        live += initial;
    }
    return cells;
}

int64_t largest_min_cells(const EngineConfig & cfg, const std::vector<PromptJob> & jobs) {
    int64_t most = 0;
    for (const auto & job : jobs) most = std::max(most, min_cells(cfg, job));
    return most;
}

double auto_share_bytes(const KvSizing & kv) { return kAutoKvShare * static_cast<double>(kv.available_bytes); }

int64_t auto_share_cells(const KvSizing & kv) {
    return static_cast<int64_t>(auto_share_bytes(kv) / std::max(1.0, kv.bytes_per_cell));
}

// "auto" starts with what the first admissions' prompts and max_live_sequences short sequences need,
// within a share of the memory available; never less than the largest job needs to start.
int64_t auto_cells(const EngineConfig & cfg, const std::vector<PromptJob> & jobs, uint32_t n_seq_max,
                   const KvSizing & kv, bool anchor) {
    const int64_t length = std::min<int64_t>(cfg.max_new_tokens, kAutoStartTokens);
    int64_t cells = first_wave_prompt_cells(cfg, jobs, n_seq_max) + cfg.max_live_sequences * length;
    if (anchor) cells += static_cast<int64_t>(longest_prompt(jobs));  // the anchor may outlive the prompt it copied
    const int64_t share = auto_share_cells(kv);
    const int64_t least = largest_min_cells(cfg, jobs) + (anchor ? static_cast<int64_t>(longest_prompt(jobs)) : 0);
    return std::max(std::min(cells, share), least);
}

}  // namespace

void validate_run(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_vocab, int n_ctx_train) {
    if (jobs.empty()) throw InvalidArgument("no prompts to run");
    validate_config(config);
    for (size_t i = 0; i < jobs.size(); ++i) validate_job(config, jobs[i], i, n_vocab, n_ctx_train);
}

void check_budget(const EngineConfig & config, const std::vector<PromptJob> & jobs, uint32_t n_ctx, int64_t ceiling,
                  const KvSizing & kv) {
    const auto budget = [&](int64_t cells) {
        if (config.n_ctx > 0) return "n_ctx=" + std::to_string(config.n_ctx);
        const std::string cells_of = std::to_string(cells) + " KV cells of " +
                                     std::to_string(static_cast<int64_t>(kv.bytes_per_cell)) + " bytes";
        if (config.kv_memory > 0) return "kv_memory=" + std::to_string(config.kv_memory) + " bytes (" + cells_of + ")";
        return "kv_memory='auto' (a share of the memory available: " + cells_of + ")";
    };
    for (size_t i = 0; i < jobs.size(); ++i) {
        const int64_t need = min_cells(config, jobs[i]);
        if (need > static_cast<int64_t>(n_ctx))
            throw InvalidArgument(budget(n_ctx) + " is too small for prompt " + std::to_string(i) + ": it needs at least " +
                                  std::to_string(need) + " cells (its " + std::to_string(jobs[i].tokens.size()) +
                                  " prompt tokens and one step for each of its first sequences)");
        const int64_t longest = sequence_cells(config, jobs[i]);
        const int64_t enough = round_up_cells(longest);  // a budget buys whole 256-cell blocks
        if (longest > ceiling)
            throw InvalidArgument(budget(ceiling) + " is too small for prompt " + std::to_string(i) + ": one of its " +
                                  "sequences may grow to " + std::to_string(longest) + " cells (its " +
                                  std::to_string(jobs[i].tokens.size()) + " prompt tokens and max_new_tokens=" +
                                  std::to_string(config.max_new_tokens) + "), and a sequence is never split; raise " +
                                  "kv_memory (or n_ctx) to at least " + std::to_string(enough) + " cells (" +
                                  std::to_string(static_cast<int64_t>(enough * kv.bytes_per_cell)) +
                                  " bytes) or lower max_new_tokens");
    }
}

bool plans_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs) {
    return config.share_prompt_prefixes && jobs.size() > 1;
}

uint32_t stream_cells(const EngineConfig & config, const std::vector<PromptJob> & jobs) {
    return round_up_cells(static_cast<int64_t>(longest_prompt(jobs)) + config.max_new_tokens);
}

uint32_t first_stream_cells(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv) {
    const uint32_t whole = stream_cells(config, jobs);
    // The device path keeps a sampler per sequence id in the compute graph; growing streams there (a failed
    // decode, then a new context) has not been run on a GPU, so its streams keep their whole size.
    if (config.n_ctx > 0 || config.device_topk) return whole;
    int64_t start = 0;
    for (const auto & job : jobs) {
        size_t prefix = 0;
        for (const BranchSeed & seed : job.seeds) prefix = std::max(prefix, seed.prefix.size());
        start = std::max(start, static_cast<int64_t>(job.tokens.size() + prefix) + 1);
    }
    start = round_up_cells(start + kAutoStartTokens);
    const int64_t window = kv.window_stream_cells;
    if (uses_window_cache(config) && window > 0 && start >= kv.n_swa) start = (start + window - 1) / window * window;
    return static_cast<uint32_t>(std::min<int64_t>(whole, start));
}

int64_t grown_stream_cells(int64_t cells, const StreamGrowth & growth) {
    if (growth.window_cells > 0 && cells < growth.window_cells) return growth.window_cells;
    return 2 * cells;
}

bool uses_window_cache(const EngineConfig & config) {
    return config.window_cache == WindowCache::Window ||
           (config.window_cache == WindowCache::Auto && config.kv_layout == KvLayout::PerSequence);
}

double stream_bytes(const KvSizing & kv, int64_t cells, bool window_cache) {
    const int64_t window = window_cache && kv.window_stream_cells > 0 ? std::min(cells, kv.window_stream_cells) : cells;
    return static_cast<double>(cells) * (kv.bytes_per_cell - kv.window_bytes_per_cell) +
           static_cast<double>(window) * kv.window_bytes_per_cell;
}

namespace {

// Per-sequence streams: the budget buys whole streams, each as long as the longest sequence may grow
// (with the window cache, the sliding-window layers' part of a stream stays about n_swa cells), and
// llama.cpp gives every stream the same size. So a run gets no more ids than admission keeps live
// (max_live_sequences, at least one prompt's M), whatever the number of prompts. The streams start short
// and grow as the longest sequence does, so memory follows what the run holds up to that budget.
int64_t streams_bought(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv,
                       bool window_cache) {
    const int64_t per_stream = stream_cells(config, jobs);
    if (config.n_ctx > 0) return config.n_ctx / per_stream;
    const double budget_bytes = config.kv_memory > 0 ? static_cast<double>(config.kv_memory) : auto_share_bytes(kv);
    return static_cast<int64_t>(budget_bytes / std::max(1.0, stream_bytes(kv, per_stream, window_cache)));
}

size_t widest_job(const std::vector<PromptJob> & jobs) {
    size_t widest = 0;
    for (size_t i = 0; i < jobs.size(); ++i)
        if (jobs[i].max_sequences > jobs[widest].max_sequences) widest = i;
    return widest;
}

// The streams a per-sequence run keeps: one per sequence admission keeps live (max_live_sequences, at least
// the widest prompt's M, at most every prompt's M), and the prefix anchor's.
int64_t live_streams(const EngineConfig & config, const std::vector<PromptJob> & jobs) {
    int64_t every_sequence = 0;
    for (const auto & job : jobs) every_sequence += job.max_sequences;
    const int64_t live = std::max<int64_t>(jobs[widest_job(jobs)].max_sequences,
                                           std::min<int64_t>(config.max_live_sequences, every_sequence));
    return live + (plans_anchor(config, jobs) ? 1 : 0);
}

// Streams that start short and may preempt: a budget in bytes (kv_memory or "auto"'s share), not n_ctx, and
// not the device path (its samplers keep every stream whole from the start).
bool streams_may_preempt(const EngineConfig & config) { return config.n_ctx == 0 && !config.device_topk; }

double budget_bytes(const EngineConfig & config, const KvSizing & kv) {
    return config.kv_memory > 0 ? static_cast<double>(config.kv_memory) : auto_share_bytes(kv);
}

void plan_streams(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv,
                  ContextShape & shape) {
    const int64_t per_stream = stream_cells(config, jobs);
    const int64_t whole = streams_bought(config, jobs, kv, !shape.swa_full);
    int64_t streams = whole;
    // A budget that cannot hold every live stream at its whole length still gives each live sequence a stream
    // at the start, when it holds them at their first size: memory follows what the sequences reach, and when
    // the streams outgrow the budget the latest admitted prompt is preempted (KvScheduler::shrink_streams).
    // One whole stream must fit: a sequence is never split.
    if (streams_may_preempt(config) && whole >= 1 && whole < live_streams(config, jobs)) {
        const double first = stream_bytes(kv, first_stream_cells(config, jobs, kv), !shape.swa_full);
        streams = std::max(whole, static_cast<int64_t>(budget_bytes(config, kv) / std::max(1.0, first)));
    }
    const size_t widest = widest_job(jobs);
    if (streams < jobs[widest].max_sequences) {
        const std::string what = config.n_ctx > 0       ? "n_ctx=" + std::to_string(config.n_ctx)
                                 : config.kv_memory > 0 ? "kv_memory=" + std::to_string(config.kv_memory) + " bytes"
                                                        : "kv_memory='auto' (a quarter of the memory available)";
        throw InvalidArgument("kv_layout='per_sequence' gives each sequence a stream that may grow to " +
                              std::to_string(per_stream) + " KV cells (the longest prompt, " +
                              std::to_string(longest_prompt(jobs)) + " tokens, plus max_new_tokens=" +
                              std::to_string(config.max_new_tokens) + "; " +
                              std::to_string(static_cast<int64_t>(stream_bytes(kv, per_stream, !shape.swa_full))) +
                              " bytes); " + what +
                              " buys " + std::to_string(whole) + " such streams, fewer than the " +
                              std::to_string(jobs[widest].max_sequences) + " sequences of prompt " +
                              std::to_string(widest) + ". Raise kv_memory, lower max_new_tokens or max_sequences, " +
                              "or use kv_layout='unified'");
    }
    shape.kv_unified = false;
    // The prefix anchor holds a stream of its own beside them (not when the streams may preempt: plan_anchor).
    shape.n_seq_max = static_cast<uint32_t>(std::min({static_cast<int64_t>(shape.n_seq_max), streams, live_streams(config, jobs)}));
    shape.n_ctx = static_cast<uint32_t>(shape.n_seq_max * first_stream_cells(config, jobs, kv));
}

}  // namespace

KvLayout choose_kv_layout(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv) {
    if (config.kv_layout != KvLayout::Auto) return config.kv_layout;
    if (jobs.empty() || config.max_new_tokens < kStreamsPayFromTokens || config.device_topk) return KvLayout::Unified;
    EngineConfig streams = config;
    streams.kv_layout = KvLayout::PerSequence;
    return streams_bought(streams, jobs, kv, uses_window_cache(streams)) >= live_streams(streams, jobs)
               ? KvLayout::PerSequence
               : KvLayout::Unified;
}

ContextShape plan_context(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv) {
    ContextShape shape;
    shape.n_threads = config.n_threads;
    shape.n_batch = kBatchTokens;
    shape.swa_full = !uses_window_cache(config);
    int64_t total_ids = 0;
    for (const auto & job : jobs) total_ids += job.max_sequences;
    // One more id for the anchor of prefix sharing, when the limit leaves room for it.
    const bool anchor = plans_anchor(config, jobs);
    shape.n_seq_max = static_cast<uint32_t>(std::min<int64_t>(kMaxSequenceIds, total_ids + (anchor ? 1 : 0)));
    shape.device = device_params(config);
    if (config.kv_layout == KvLayout::PerSequence) {
        plan_streams(config, jobs, kv, shape);
    } else if (config.n_ctx > 0) {
        shape.n_ctx = config.n_ctx;
    } else if (config.kv_memory > 0) {
        const int64_t cells = static_cast<int64_t>(config.kv_memory / std::max(1.0, kv.bytes_per_cell));
        // Below llama.cpp's smallest cache the budget cannot be kept: say so rather than take more memory.
        if (cells < kCellPadding)
            throw InvalidArgument("kv_memory=" + std::to_string(config.kv_memory) + " bytes buys " + std::to_string(cells) +
                                  " KV cells of " + std::to_string(static_cast<int64_t>(kv.bytes_per_cell)) +
                                  " bytes; llama.cpp's smallest cache is " + std::to_string(kCellPadding) + " cells (" +
                                  std::to_string(static_cast<int64_t>(kCellPadding * kv.bytes_per_cell)) + " bytes)");
        shape.n_ctx = static_cast<uint32_t>(cells / kCellPadding * kCellPadding);
    } else {
        shape.n_ctx = round_up_cells(auto_cells(config, jobs, shape.n_seq_max, kv, anchor));
    }
    return shape;
}

int64_t plan_kv_ceiling(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv,
                        const ContextShape & shape) {
    if (config.kv_layout == KvLayout::PerSequence) return static_cast<int64_t>(shape.n_seq_max) * stream_cells(config, jobs);
    if (config.n_ctx > 0 || config.kv_memory > 0) return shape.n_ctx;
    return std::max<int64_t>(shape.n_ctx, auto_share_cells(kv) / kCellPadding * kCellPadding);
}

int64_t streams_within(const StreamGrowth & growth, int64_t cells) {
    if (growth.budget_bytes <= 0) return std::numeric_limits<int64_t>::max();
    return static_cast<int64_t>(growth.budget_bytes / std::max(1.0, stream_bytes(growth.kv, cells, growth.window_cache)));
}

StreamGrowth plan_stream_growth(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv,
                                const ContextShape & shape) {
    StreamGrowth growth;
    if (shape.kv_unified) return growth;
    growth.streams = shape.n_seq_max;
    growth.whole_cells = stream_cells(config, jobs);
    growth.kv = kv;
    growth.window_cache = !shape.swa_full;
    if (!shape.swa_full) {
        growth.window_cells = kv.window_stream_cells;
        growth.n_swa = kv.n_swa;
    }
    if (streams_may_preempt(config)) {
        growth.budget_bytes = budget_bytes(config, kv);
        growth.may_outgrow = streams_bought(config, jobs, kv, growth.window_cache) < static_cast<int64_t>(shape.n_seq_max);
    }
    return growth;
}

AnchorPlan plan_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_seq_max, uint32_t n_ctx,
                       int64_t ceiling) {
    AnchorPlan plan;
    if (!plans_anchor(config, jobs)) return plan;
    int max_ids = 0;
    for (const auto & job : jobs) max_ids = std::max(max_ids, job.max_sequences);
    const int64_t longest = static_cast<int64_t>(longest_prompt(jobs));
    // Beside the anchor, the largest job must start and its longest sequence must be able to grow.
    int64_t longest_sequence = 0;
    for (const auto & job : jobs) longest_sequence = std::max(longest_sequence, sequence_cells(config, job));
    if (n_seq_max > max_ids && largest_min_cells(config, jobs) + longest <= static_cast<int64_t>(n_ctx) &&
        longest_sequence + longest <= ceiling) {
        plan.id = n_seq_max - 1;
        plan.reserved = longest;
    }
    return plan;
}

}  // namespace eager
