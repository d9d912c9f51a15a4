#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>

#include "batch.hpp"
#include "device_topk.hpp"
#include "errors.hpp"
#include "kv_trace.hpp"
#include "llama.h"
#include "rng.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace eager {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr uint32_t kBatchTokens = 512;
constexpr uint32_t kCellPadding = 256;  // llama.cpp pads the KV cache to this many cells
// A prompt shares a multiple of this many tokens with the anchor: its own prefill then starts on the
// same row alignment (within a micro-batch) as a fresh one, so shared and fresh cells agree as far
// as llama.cpp's kernels let them. It also skips sharing too short to pay for the copy.
constexpr size_t kShareGranularity = 64;
// Automatic sizing keeps the KV cache under this many bytes unless a single prompt needs more.
constexpr double kAutoKvBudgetBytes = 4.0 * 1024 * 1024 * 1024;

struct LiveSequence {
    int prompt = 0;       // index into the jobs
    int local = 0;        // index within the prompt's result
    llama_seq_id id = 0;  // KV sequence id
    int32_t n_past = 0;   // position of the next token fed
    int generated = 0;    // length of token_ids (inherited + own)
    int32_t pending = -1; // token to feed at the next step
    bool past_marker = false;
    bool finished = false;
    Rng rng;
};

struct PromptState {
    bool branching_open = true;
    int steps_without_branch = 0;
    int64_t counted_round = -1;    // the last round (advance call) that counted this prompt's step
    bool counted_final = false;    // its sequence count is in the growth estimate
    bool branched_this_round = false;
    int n_sequences = 0;
    int live = 0;
    bool done = false;
    std::vector<float> entropy_history;  // for the p99 threshold mode
};

float percentile_99(std::vector<float> values) {
    if (values.empty()) return -std::numeric_limits<float>::infinity();
    // Linear interpolation between closest ranks, as numpy.percentile does by default.
    const double rank = 0.99 * (values.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(rank));
    std::nth_element(values.begin(), values.begin() + lo, values.end());
    const float a = values[lo];
    if (lo + 1 >= values.size()) return a;
    const float b = *std::min_element(values.begin() + lo + 1, values.end());
    return static_cast<float>(a + (b - a) * (rank - lo));
}

size_t find_from(const std::string & text, const std::string & needle, size_t appended_at) {
    const size_t start = appended_at >= needle.size() ? appended_at - needle.size() + 1 : 0;
    return text.find(needle, start);
}

class Run {
public:
    Run(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs, const ProgressFn & progress)
        : model_(model), cfg_(config), jobs_(jobs), progress_(progress), n_vocab_(model.n_vocab()) {}

    RunOutput execute();

private:
    void validate() const;
    void validate_seeds(const PromptJob & job, size_t i) const;
    ContextShape plan_context() const;
    bool try_admit(const PromptJob & job);
    double growth_estimate() const;
    void mark_final(int prompt);
    double expected_sequences(const PromptJob & job, double estimate) const;
    double expected_live(double estimate) const;
    void admit(int prompt);
    void admit_seeds(int prompt);
    int32_t prefill_prompt(int prompt, llama_seq_id id);
    bool plans_anchor() const;
    int32_t prefill(const std::vector<int32_t> & tokens, size_t begin, int32_t pos, llama_seq_id id, const char * what);
    void start_seed(int slot, const BranchSeed & seed, int32_t row, const TopK * reuse, TopK & top, float & entropy);
    void step();
    void advance(const std::vector<int> & seq_slots, const std::vector<int32_t> & output_rows);
    void compute_rows(const std::vector<int32_t> & output_rows, const std::vector<RowRequest> & requests,
                      const std::vector<double> & draws);
    bool may_branch(const LiveSequence & seq) const;
    int new_sequence(int prompt, int parent_slot);
    void append_token(LiveSequence & seq, int32_t token, float entropy);
    void finish(LiveSequence & seq, const char * reason);
    void release_finished();
    void report_progress();

    Model & model_;
    const EngineConfig & cfg_;
    const std::vector<PromptJob> & jobs_;
    const ProgressFn & progress_;
    const int n_vocab_;

    llama_context * ctx_ = nullptr;
    llama_memory_t mem_ = nullptr;
    std::unique_ptr<Batch> batch_;
    uint32_t n_ctx_ = 0;
    int n_seq_max_ = 0;
    int n_threads_ = 1;

    std::vector<LiveSequence> live_;  // in creation order, which fixes the order children are numbered
    std::vector<llama_seq_id> free_ids_;
    std::vector<PromptState> state_;
    RunOutput out_;
    size_t next_job_ = 0;
    std::vector<int> in_flight_;  // admitted prompts not done, in admission order
    double final_sequences_ = 0;  // over prompts whose count is final (growth_estimate)
    int final_count_ = 0;
    int ids_reserved_ = 0;
    int ids_available_ = 0;   // sequence ids prompts may reserve (all but the anchor's)
    int64_t cells_reserved_ = 0;
    llama_seq_id anchor_id_ = -1;         // holds the last admitted prompt's cells (-1: no sharing)
    std::vector<int32_t> anchor_tokens_;  // ... and its tokens
    size_t anchor_held_ = 0;              // how many of them it holds cells for
    int prompts_done_ = 0;
    int live_count_ = 0;
    int64_t round_ = 0;  // advance calls so far: each gives every sequence it covers one token
    std::vector<RowScratch> scratch_;
    std::vector<RowResult> results_;
    Clock::time_point start_;
    std::unique_ptr<KvTraceLog> kv_trace_;  // trace_steps with LLAMA_KV_CACHE_DEBUG set
};

void Run::validate() const {
    if (jobs_.empty()) throw InvalidArgument("no prompts to run");
    if (cfg_.max_new_tokens < 1) throw InvalidArgument("max_new_tokens must be at least 1");
    if (cfg_.entropy_k < 2 || cfg_.entropy_k > kMaxEntropyTopK)
        throw InvalidArgument("top_k_entropy must be between 2 and " + std::to_string(kMaxEntropyTopK));
    if (!(cfg_.sampling.temperature >= 0.0f)) throw InvalidArgument("temperature must be >= 0");
    if (cfg_.max_live_sequences < 1) throw InvalidArgument("max_live_sequences must be at least 1");
    if (cfg_.device_topk) {
        if (cfg_.device_candidates < cfg_.entropy_k || cfg_.device_candidates < 2)
            throw InvalidArgument("device_candidates must be at least top_k_entropy (" + std::to_string(cfg_.entropy_k) + ")");
        if (cfg_.sampling.top_k > cfg_.device_candidates)
            throw InvalidArgument("top_k=" + std::to_string(cfg_.sampling.top_k) + " exceeds device_candidates=" +
                                  std::to_string(cfg_.device_candidates) + ": raise device_candidates");
    }
    for (size_t i = 0; i < jobs_.size(); ++i) {
        const PromptJob & job = jobs_[i];
        if (job.tokens.empty()) throw InvalidArgument("prompt " + std::to_string(i) + " has no tokens");
        if (job.max_sequences < 1 || job.max_sequences > kMaxSequenceIds)
            throw InvalidArgument("max_sequences must be between 1 and " + std::to_string(kMaxSequenceIds) +
                                  " (llama.cpp's sequence-id limit)");
        for (int32_t t : job.tokens)
            if (t < 0 || t >= n_vocab_) throw InvalidArgument("prompt " + std::to_string(i) + " has a token id outside the vocabulary");
        validate_seeds(job, i);
        if (cfg_.n_ctx > 0 && worst_case_cells(job, cfg_.max_new_tokens) > cfg_.n_ctx)
            throw InvalidArgument("prompt " + std::to_string(i) + " needs up to " +
                                  std::to_string(worst_case_cells(job, cfg_.max_new_tokens)) +
                                  " KV cells (prompt tokens + max_sequences x max_new_tokens) but n_ctx is " +
                                  std::to_string(cfg_.n_ctx));
    }
}

void Run::validate_seeds(const PromptJob & job, size_t i) const {
    if (job.seeds.empty()) return;
    const std::string where = "prompt " + std::to_string(i) + ": ";
    if (cfg_.method != Method::EagerInit) throw InvalidArgument(where + "branch seeds need the EAGer-init method");
    if (static_cast<int>(job.seeds.size()) > job.max_sequences)
        throw InvalidArgument(where + std::to_string(job.seeds.size()) + " branch seeds exceed max_sequences=" +
                              std::to_string(job.max_sequences));
    for (const BranchSeed & seed : job.seeds) {
        if (static_cast<int>(seed.prefix.size()) >= cfg_.max_new_tokens)
            throw InvalidArgument(where + "a branch seed's prefix of " + std::to_string(seed.prefix.size()) +
                                  " tokens leaves no room under max_new_tokens=" + std::to_string(cfg_.max_new_tokens));
        if (seed.rank < 1 || seed.rank + static_cast<int>(seed.exclude.size()) > kMaxEntropyTopK)
            throw InvalidArgument(where + "a branch seed's rank must be >= 1 and rank + excluded tokens <= " +
                                  std::to_string(kMaxEntropyTopK));
        for (int32_t t : seed.prefix)
            if (t < 0 || t >= n_vocab_) throw InvalidArgument(where + "a branch seed has a token id outside the vocabulary");
    }
}

ContextShape Run::plan_context() const {
    ContextShape shape;
    shape.n_threads = cfg_.n_threads;
    shape.n_batch = kBatchTokens;
    int64_t total_ids = 0;
    int64_t max_worst = 0;
    for (const auto & job : jobs_) {
        total_ids += job.max_sequences;
        max_worst = std::max(max_worst, worst_case_cells(job, cfg_.max_new_tokens));
    }
    // One more id for the anchor of prefix sharing, when the limit leaves room for it.
    shape.n_seq_max = static_cast<uint32_t>(std::min<int64_t>(kMaxSequenceIds, total_ids + (plans_anchor() ? 1 : 0)));
    if (cfg_.device_topk) {
        const float t = cfg_.sampling.temperature;
        shape.device.enabled = true;
        shape.device.candidates = cfg_.device_candidates;
        shape.device.entropy_k = cfg_.entropy_k;
        shape.device.entropy_temperature = cfg_.entropy_after_temperature && t > 0.0f ? t : 1.0f;
        shape.device.sample_temperature = t > 0.0f ? t : 1.0f;
    }
    if (cfg_.n_ctx > 0) {
        shape.n_ctx = cfg_.n_ctx;
        return shape;
    }
    // Size for the prompts that admission could hold at once, within a memory budget.
    const llama_model * m = model_.model();
    const double head_dim = static_cast<double>(llama_model_n_embd(m)) / std::max(1, llama_model_n_head(m));
    const double bytes_per_cell = 2.0 * 2.0 * llama_model_n_layer(m) * llama_model_n_head_kv(m) * head_dim;
    const int64_t budget_cells = static_cast<int64_t>(kAutoKvBudgetBytes / std::max(1.0, bytes_per_cell));
    int64_t cells = 0, ids = 0, live = 0;
    for (const auto & job : jobs_) {
        const int initial = cfg_.method == Method::Parallel ? job.max_sequences
                                                             : std::max<int>(1, static_cast<int>(job.seeds.size()));
        const int64_t worst = worst_case_cells(job, cfg_.max_new_tokens);
        if (ids + job.max_sequences > shape.n_seq_max) break;
        if (live > 0 && live + initial > cfg_.max_live_sequences) break;
        if (cells > 0 && cells + worst > budget_cells) break;
        cells += worst;
        ids += job.max_sequences;
        live += initial;
    }
    cells = std::max(cells, max_worst);
    if (plans_anchor()) {
        size_t longest = 0;
        for (const auto & job : jobs_) longest = std::max(longest, job.tokens.size());
        cells += static_cast<int64_t>(longest);  // the anchor may outlive the prompt it copied
    }
    shape.n_ctx = static_cast<uint32_t>((cells + kCellPadding - 1) / kCellPadding * kCellPadding);
    return shape;
}

bool Run::plans_anchor() const { return cfg_.share_prompt_prefixes && jobs_.size() > 1; }

RunOutput Run::execute() {
    validate();
    if (cfg_.trace_steps && KvTraceLog::enabled()) kv_trace_ = std::make_unique<KvTraceLog>();
    start_ = Clock::now();
    ctx_ = model_.acquire_context(plan_context());
    mem_ = llama_get_memory(ctx_);
    MemoryGuard guard{mem_};
    n_ctx_ = model_.context_shape().n_ctx;
    n_seq_max_ = static_cast<int>(llama_n_seq_max(ctx_));
    n_threads_ = std::max(1, model_.context_shape().n_threads);
    batch_ = std::make_unique<Batch>(static_cast<int32_t>(std::max<uint32_t>(llama_n_batch(ctx_), n_seq_max_)));
    // The anchor takes the last id, when every job still finds its ids and its cells beside it.
    int max_ids = 0;
    int64_t max_worst = 0;
    size_t longest = 0;
    for (const auto & job : jobs_) {
        max_ids = std::max(max_ids, job.max_sequences);
        max_worst = std::max(max_worst, worst_case_cells(job, cfg_.max_new_tokens));
        longest = std::max(longest, job.tokens.size());
    }
    if (plans_anchor() && n_seq_max_ > max_ids && max_worst + static_cast<int64_t>(longest) <= static_cast<int64_t>(n_ctx_)) {
        anchor_id_ = n_seq_max_ - 1;
        cells_reserved_ = static_cast<int64_t>(longest);
    }
    ids_available_ = anchor_id_ >= 0 ? n_seq_max_ - 1 : n_seq_max_;
    for (int id = ids_available_ - 1; id >= 0; --id) free_ids_.push_back(id);
    state_.assign(jobs_.size(), PromptState{});
    out_.prompts.assign(jobs_.size(), PromptResult{});
    scratch_.resize(n_threads_);
    out_.stats.n_ctx = n_ctx_;

    while (prompts_done_ < static_cast<int>(jobs_.size())) {
        report_progress();
        while (next_job_ < jobs_.size() && try_admit(jobs_[next_job_])) admit(static_cast<int>(next_job_++));
        if (live_count_ > 0) step();
    }
    report_progress();
    out_.stats.total_seconds = seconds_since(start_);
    return std::move(out_);
}

double Run::growth_estimate() const {
    // EAGer prompts grow after admission, up to their cap, as long as they may branch. Estimate
    // the growth from prompts whose count is final (done, or closed for branching); before any
    // is (negative result), callers assume the cap, so the first admissions do not overshoot:
    // every prompt in flight widens the KV span that each token's attention covers. The sums are
    // kept as prompts become final, so admission stays O(prompts in flight), not O(prompts so far).
    // (Projecting the first wave's growth from its branching so far was tried: at θ = 2.5 on GSM8K it
    // admitted 14 prompts that grew to 70 live sequences, and each step cost 16 ms per token instead of 8.)
    return final_count_ > 0 ? final_sequences_ / final_count_ : -1.0;
}

void Run::mark_final(int prompt) {
    PromptState & st = state_[prompt];
    if (st.counted_final) return;
    st.counted_final = true;
    final_sequences_ += st.n_sequences;
    ++final_count_;
}

double Run::expected_sequences(const PromptJob & job, double estimate) const {
    if (cfg_.method == Method::Parallel) return job.max_sequences;
    const double m = job.max_sequences;
    return estimate < 0 ? m : std::clamp(estimate, 1.0, m);
}

double Run::expected_live(double estimate) const {
    double total = 0;
    for (int i : in_flight_) {  // in admission order, as the sum always ran
        const PromptState & st = state_[i];
        if (!st.branching_open) {
            total += st.live;
            continue;
        }
        const int finished = st.n_sequences - st.live;
        total += std::max<double>(st.live, expected_sequences(jobs_[i], estimate) - finished);
    }
    return total;
}

bool Run::try_admit(const PromptJob & job) {
    // Reserving M ids and the worst-case cells up front means a branch never finds the
    // cache full.
    if (ids_reserved_ + job.max_sequences > ids_available_) return false;
    if (cells_reserved_ + worst_case_cells(job, cfg_.max_new_tokens) > static_cast<int64_t>(n_ctx_)) return false;
    if (live_count_ == 0) return true;
    // Keep the batch near llama.cpp's throughput peak, counting the sequences that prompts
    // still open for branching are expected to grow into: with a unified KV cache every token
    // attends over all cells in use, so a batch far past the peak slows every token.
    const double estimate = growth_estimate();
    return expected_live(estimate) + expected_sequences(job, estimate) <= cfg_.max_live_sequences;
}

void Run::admit(int prompt) {
    const PromptJob & job = jobs_[prompt];
    in_flight_.push_back(prompt);
    ids_reserved_ += job.max_sequences;
    cells_reserved_ += worst_case_cells(job, cfg_.max_new_tokens);
    out_.prompts[prompt].prompt_tokens = static_cast<int>(job.tokens.size());
    out_.stats.prompt_tokens += static_cast<int64_t>(job.tokens.size());
    if (!job.seeds.empty()) return admit_seeds(prompt);

    const int root = new_sequence(prompt, -1);
    const llama_seq_id root_id = live_[root].id;
    const auto t0 = Clock::now();
    const int32_t n = static_cast<int32_t>(job.tokens.size());
    const int32_t last_row = prefill_prompt(prompt, root_id);
    out_.stats.prefill_seconds += seconds_since(t0);
    live_[root].n_past = n;

    std::vector<int> slots{root};
    if (cfg_.method == Method::Parallel) {
        // M independent samples share one prefill: the copies only tag the prompt's cells.
        for (int k = 1; k < job.max_sequences; ++k) {
            const int slot = new_sequence(prompt, -1);
            llama_memory_seq_cp(mem_, root_id, live_[slot].id, -1, -1);
            live_[slot].n_past = n;
            slots.push_back(slot);
        }
    }
    advance(slots, std::vector<int32_t>(slots.size(), last_row));
}

int32_t Run::prefill(const std::vector<int32_t> & tokens, size_t begin, int32_t pos, llama_seq_id id,
                      const char * what) {
    // tokens[begin..] at positions pos.. of sequence `id`; logits for the last one (its row returned).
    const size_t n = tokens.size();
    int32_t last_row = -1;
    for (size_t at = begin; at < n; at += batch_->capacity()) {
        const size_t end = std::min(n, at + batch_->capacity());
        batch_->clear();
        for (size_t i = at; i < end; ++i) last_row = batch_->add(tokens[i], pos + static_cast<int32_t>(i - begin), id, i == n - 1);
        batch_->decode(ctx_, what);
    }
    return last_row;
}

int32_t Run::prefill_prompt(int prompt, llama_seq_id id) {
    // The prompt's tokens into sequence `id`; the part it shares with the anchor is copied, not decoded.
    const std::vector<int32_t> & tokens = jobs_[prompt].tokens;
    size_t shared = 0;
    if (anchor_id_ >= 0 && !anchor_tokens_.empty()) {
        const auto [a, b] = std::mismatch(anchor_tokens_.begin(), anchor_tokens_.end(), tokens.begin(), tokens.end());
        // At least the last token is decoded: its logits start the prompt's sequences.
        shared = std::min({static_cast<size_t>(b - tokens.begin()), tokens.size() - 1, anchor_held_}) /
                 kShareGranularity * kShareGranularity;
        if (shared > 0) llama_memory_seq_cp(mem_, anchor_id_, id, 0, static_cast<llama_pos>(shared));
    }
    const int32_t row = prefill(tokens, shared, static_cast<int32_t>(shared), id, "prompt prefill");
    out_.stats.shared_prompt_tokens += static_cast<int64_t>(shared);
    if (anchor_id_ >= 0) {
        // The anchor moves to this prompt: the cells only the old anchor held are freed. It holds only
        // what a later prompt could copy (whole 64-token blocks before the last token), so a prompt
        // shorter than a block leaves no cells behind and the next one lays out its cells as alone.
        anchor_held_ = (tokens.size() - 1) / kShareGranularity * kShareGranularity;
        llama_memory_seq_rm(mem_, anchor_id_, -1, -1);
        if (anchor_held_ > 0) llama_memory_seq_cp(mem_, id, anchor_id_, 0, static_cast<llama_pos>(anchor_held_));
        anchor_tokens_ = tokens;
    }
    return row;
}

void Run::admit_seeds(int prompt) {
    // Every seed is a root of this job (its local index is its place in job.seeds). Prefixes are
    // prefilled in sorted order: each shares with the one before it the longest common start any
    // earlier one could offer, so that part is forked by KV sequence copy and only the rest is decoded.
    const PromptJob & job = jobs_[prompt];
    const int n_seeds = static_cast<int>(job.seeds.size());
    const int32_t n_prompt = static_cast<int32_t>(job.tokens.size());
    std::vector<int> slots(n_seeds);
    for (int k = 0; k < n_seeds; ++k) slots[k] = new_sequence(prompt, -1);
    std::vector<int> order(n_seeds);
    for (int k = 0; k < n_seeds; ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return job.seeds[a].prefix < job.seeds[b].prefix; });

    const auto t0 = Clock::now();
    TopK top;
    float entropy = 0.0f;
    int previous = -1;
    for (int k : order) {
        const BranchSeed & seed = job.seeds[k];
        const llama_seq_id id = live_[slots[k]].id;
        int32_t row = -1;
        bool same_point = false;
        if (previous < 0) {
            row = prefill_prompt(prompt, id);
            if (!seed.prefix.empty()) row = prefill(seed.prefix, 0, n_prompt, id, "branch prefix prefill");
            out_.stats.reprocessed_tokens += static_cast<int64_t>(seed.prefix.size());
        } else {
            const std::vector<int32_t> & before = job.seeds[previous].prefix;
            const auto [a, b] = std::mismatch(before.begin(), before.end(), seed.prefix.begin(), seed.prefix.end());
            const size_t common = static_cast<size_t>(b - seed.prefix.begin());
            same_point = common == seed.prefix.size() && a == before.end();
            const llama_seq_id from = live_[slots[previous]].id;
            if (same_point) {
                llama_memory_seq_cp(mem_, from, id, -1, -1);
            } else {
                llama_memory_seq_cp(mem_, from, id, 0, n_prompt + static_cast<int32_t>(common));
                row = prefill(seed.prefix, common, n_prompt + static_cast<int32_t>(common), id, "branch prefix prefill");
                out_.stats.reprocessed_tokens += static_cast<int64_t>(seed.prefix.size() - common);
            }
        }
        start_seed(slots[k], seed, row, same_point ? &top : nullptr, top, entropy);
        previous = k;
    }
    out_.stats.prefill_seconds += seconds_since(t0);

    PromptState & st = state_[prompt];
    ++out_.prompts[prompt].steps;
    if (st.n_sequences >= job.max_sequences) {
        st.branching_open = false;
        mark_final(prompt);
    }
    release_finished();
}

void Run::start_seed(int slot, const BranchSeed & seed, int32_t row, const TopK * reuse, TopK & top, float & entropy) {
    // The seed's inherited part, then its forced first token from the logits at the point (`row`),
    // or from the previous seed's when both continue the same point (`reuse`).
    LiveSequence & seq = live_[slot];
    SequenceResult & res = out_.prompts[seq.prompt].sequences[seq.local];
    const int32_t n_prompt = static_cast<int32_t>(jobs_[seq.prompt].tokens.size());
    res.branch_step = static_cast<int>(seed.prefix.size());
    for (int32_t t : seed.prefix) res.text += model_.token_to_piece(t);
    seq.generated = static_cast<int>(seed.prefix.size());
    seq.n_past = n_prompt + seq.generated;
    seq.past_marker = !cfg_.think_end_marker.empty() && res.text.find(cfg_.think_end_marker) != std::string::npos;
    if (reuse == nullptr) {
        const int k = std::max(cfg_.entropy_k, seed.rank + static_cast<int>(seed.exclude.size()));
        const bool tempered = cfg_.entropy_after_temperature && cfg_.sampling.temperature > 0.0f;
        if (cfg_.device_topk) {
            const DeviceRow d = read_device_row(ctx_, row);
            top_of_candidates(d.ids, d.logits, d.count, k, top);
            entropy = d.entropy;
        } else {
            const float * logits = llama_get_logits_ith(ctx_, row);
            if (logits == nullptr) throw LlamaError("llama.cpp returned no logits for a branch prefix");
            scan_row(logits, n_vocab_, k, top);
            entropy = topk_entropy_of(top, cfg_.entropy_k, tempered ? cfg_.sampling.temperature : 1.0f);
        }
    }
    const int32_t token = nth_not_excluded(top, seed.exclude, seed.rank);
    if (token < 0) throw LlamaError("internal error: a branch point has fewer candidate tokens than its seed's rank");
    (void) seq.rng.uniform();  // the step's draw, as every sequence takes one per step
    res.branch_entropy = entropy;
    append_token(seq, token, entropy);
}

int Run::new_sequence(int prompt, int parent_slot) {
    if (free_ids_.empty()) throw LlamaError("internal error: no free sequence id");
    PromptState & st = state_[prompt];
    PromptResult & pr = out_.prompts[prompt];
    const PromptJob & job = jobs_[prompt];
    LiveSequence seq;
    seq.prompt = prompt;
    seq.local = static_cast<int>(pr.sequences.size());
    seq.id = free_ids_.back();
    free_ids_.pop_back();
    seq.rng = Rng(cfg_.seed, job.stream_id, static_cast<uint64_t>(job.sequence_index_base + seq.local));
    SequenceResult result;
    if (parent_slot >= 0) {
        const LiveSequence & parent = live_[parent_slot];
        result.parent = parent.local;
        result.branch_step = parent.generated;
        result.text = pr.sequences[parent.local].text;
        seq.n_past = parent.n_past;
        seq.generated = parent.generated;
        seq.past_marker = parent.past_marker;
        llama_memory_seq_cp(mem_, parent.id, seq.id, -1, -1);
    }
    pr.sequences.push_back(std::move(result));
    ++st.n_sequences;
    ++st.live;
    ++live_count_;
    live_.push_back(std::move(seq));
    out_.stats.max_live_sequences = std::max(out_.stats.max_live_sequences, live_count_);
    return static_cast<int>(live_.size()) - 1;
}

bool Run::may_branch(const LiveSequence & seq) const {
    const PromptState & st = state_[seq.prompt];
    return cfg_.method == Method::EagerInit && st.branching_open && !seq.past_marker &&
           st.n_sequences < jobs_[seq.prompt].max_sequences;
}

void Run::step() {
    const auto t0 = Clock::now();
    batch_->clear();
    std::vector<int> slots;
    slots.reserve(live_.size());
    std::vector<int32_t> row_index;
    row_index.reserve(live_.size());
    for (int s = 0; s < static_cast<int>(live_.size()); ++s) {
        LiveSequence & seq = live_[s];
        row_index.push_back(batch_->add(seq.pending, seq.n_past, seq.id, true));
        slots.push_back(s);
    }
    out_.stats.bookkeeping_seconds += seconds_since(t0);

    const auto t1 = Clock::now();
    if (kv_trace_) kv_trace_->take();  // what admission's prefills logged is not this step's
    batch_->decode(ctx_, "generation");
    const double decode_s = seconds_since(t1);
    out_.stats.decode_seconds += decode_s;
    ++out_.stats.steps;
    if (cfg_.trace_steps) {
        StepTrace t;
        t.tokens = static_cast<int32_t>(slots.size());
        t.prompts = static_cast<int32_t>(in_flight_.size());
        t.decode_ms = static_cast<float>(decode_s * 1e3);
        if (kv_trace_) {
            const KvSpan span = kv_trace_->take();
            t.kv_span = span.span;
            t.kv_used = span.used;
            t.kv_span_swa = span.span_swa;
            t.kv_used_swa = span.used_swa;
        }
        out_.stats.step_trace.push_back(t);
    }

    for (int slot : slots) live_[slot].n_past += 1;
    advance(slots, row_index);
}

void Run::compute_rows(const std::vector<int32_t> & output_rows, const std::vector<RowRequest> & requests,
                       const std::vector<double> & draws) {
    const int n = static_cast<int>(output_rows.size());
    const int threads = std::min(n_threads_, n);
    (void) threads;
    // Read llama.cpp's outputs serially (its accessors are not meant for concurrent calls), then
    // do the rows' work in parallel: a full logits row each on the host path, C candidates each
    // on the device path (whose steps over hundreds of sequences are short on a GPU).
    const bool device = cfg_.device_topk;
    std::vector<DeviceRow> device_rows(device ? n : 0);
    std::vector<const float *> rows(device ? 0 : n);
    std::vector<double> dropped(device ? n : 0);
    for (int i = 0; i < n; ++i) {
        if (device) {
            device_rows[i] = read_device_row(ctx_, output_rows[i]);
        } else {
            rows[i] = llama_get_logits_ith(ctx_, output_rows[i]);
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
    for (double m : dropped) out_.stats.device_dropped_mass_max = std::max(out_.stats.device_dropped_mass_max, m);
}

void Run::advance(const std::vector<int> & slots, const std::vector<int32_t> & output_rows) {
    const int n = static_cast<int>(slots.size());
    results_.resize(n);
    std::vector<RowRequest> requests(n);
    std::vector<double> draws(n);
    const bool tempered = cfg_.entropy_after_temperature && cfg_.sampling.temperature > 0.0f;
    for (int i = 0; i < n; ++i) {
        LiveSequence & seq = live_[slots[i]];
        RowRequest & rq = requests[i];
        rq.entropy_k = cfg_.entropy_k;
        rq.want_entropy = cfg_.record_entropies || may_branch(seq);
        rq.entropy_temperature = tempered ? cfg_.sampling.temperature : 1.0f;
        rq.sampling = cfg_.sampling;
        // One draw per sequence per step, used or not, keeps every stream independent of branching.
        draws[i] = seq.rng.uniform();
    }

    const auto t0 = Clock::now();
    compute_rows(output_rows, requests, draws);
    out_.stats.row_kernel_seconds += seconds_since(t0);

    const auto t1 = Clock::now();
    // Each prompt's step is counted once per round, however its sequences lie in the live table
    // (children are appended as born, so a prompt's rows need not be contiguous).
    ++round_;
    std::vector<int> touched;
    std::vector<std::pair<int, float>> round_entropies;  // p99 mode: joins the history after the round
    for (int i = 0; i < n; ++i) {
        const int slot = slots[i];
        const RowResult & r = results_[i];
        const int prompt = live_[slot].prompt;
        PromptState & st = state_[prompt];
        if (st.counted_round != round_) {
            st.counted_round = round_;
            st.branched_this_round = false;
            touched.push_back(prompt);
        }
        bool branch = false;
        if (may_branch(live_[slot]) && r.top2 != r.top1 && r.top2 >= 0) {
            float theta = jobs_[prompt].theta;
            if (r.entropy > theta && cfg_.threshold_mode == ThresholdMode::P99)
                theta = std::max(theta, percentile_99(st.entropy_history));
            branch = r.entropy > theta;
        }
        if (branch) {
            // The sampled token is discarded: the parent continues with the most likely
            // token, a new child (sharing the whole prefix) with the second most likely.
            const int child = new_sequence(prompt, slot);  // may reallocate live_
            out_.prompts[prompt].sequences[live_[child].local].branch_entropy = r.entropy;
            append_token(live_[slot], r.top1, r.entropy);
            append_token(live_[child], r.top2, r.entropy);
            st.branched_this_round = true;
        } else {
            append_token(live_[slot], r.sampled, r.entropy);
        }
        if (cfg_.threshold_mode == ThresholdMode::P99 && !std::isnan(r.entropy)) round_entropies.emplace_back(prompt, r.entropy);
    }
    // The p99 floor of a step uses earlier steps' entropies only, as the reference code does.
    for (const auto & [prompt, h] : round_entropies) state_[prompt].entropy_history.push_back(h);
    for (int prompt : touched) {
        PromptState & st = state_[prompt];
        ++out_.prompts[prompt].steps;
        st.steps_without_branch = st.branched_this_round ? 0 : st.steps_without_branch + 1;
        if (st.steps_without_branch >= cfg_.no_branch_window || st.n_sequences >= jobs_[prompt].max_sequences)
            st.branching_open = false;
        if (!st.branching_open) mark_final(prompt);
    }
    release_finished();
    out_.stats.bookkeeping_seconds += seconds_since(t1);
}

void Run::append_token(LiveSequence & seq, int32_t token, float entropy) {
    SequenceResult & res = out_.prompts[seq.prompt].sequences[seq.local];
    res.own_tokens.push_back(token);
    if (cfg_.record_entropies) res.entropies.push_back(entropy);
    ++seq.generated;
    ++out_.stats.generated_tokens;
    if (!cfg_.ignore_eos && model_.is_eog(token)) return finish(seq, "eos");
    const size_t appended_at = res.text.size();
    res.text += model_.token_to_piece(token);
    if (!seq.past_marker && !cfg_.think_end_marker.empty() &&
        find_from(res.text, cfg_.think_end_marker, appended_at) != std::string::npos) {
        seq.past_marker = true;
        res.marker_step = seq.generated - 1;
    }
    for (const std::string & stop : cfg_.stop) {
        const size_t at = find_from(res.text, stop, appended_at);
        if (at != std::string::npos) {
            res.text.resize(at);
            return finish(seq, "stop");
        }
    }
    if (seq.generated >= cfg_.max_new_tokens) return finish(seq, "length");
    seq.pending = token;
}

void Run::finish(LiveSequence & seq, const char * reason) {
    out_.prompts[seq.prompt].sequences[seq.local].finish_reason = reason;
    seq.finished = true;
}

void Run::release_finished() {
    size_t kept = 0;
    for (size_t i = 0; i < live_.size(); ++i) {
        LiveSequence & seq = live_[i];
        if (!seq.finished) {
            if (kept != i) live_[kept] = std::move(seq);
            ++kept;
            continue;
        }
        // Freed cells return to the pool once no sequence holds them; the id is reused.
        llama_memory_seq_rm(mem_, seq.id, -1, -1);
        free_ids_.push_back(seq.id);
        --live_count_;
        PromptState & st = state_[seq.prompt];
        if (--st.live == 0) {
            st.done = true;
            mark_final(seq.prompt);
            in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), seq.prompt));
            ++prompts_done_;
            ids_reserved_ -= jobs_[seq.prompt].max_sequences;
            cells_reserved_ -= worst_case_cells(jobs_[seq.prompt], cfg_.max_new_tokens);
        }
    }
    live_.resize(kept);
}

void Run::report_progress() {
    if (!progress_) return;
    Progress p;
    p.prompts_done = prompts_done_;
    p.prompts_total = static_cast<int>(jobs_.size());
    p.live_sequences = live_count_;
    p.generated_tokens = out_.stats.generated_tokens;
    p.elapsed_seconds = seconds_since(start_);
    if (!progress_(p)) throw Interrupted();
}

}  // namespace

int64_t worst_case_cells(const PromptJob & job, int max_new_tokens) {
    return static_cast<int64_t>(job.tokens.size()) + static_cast<int64_t>(job.max_sequences) * max_new_tokens;
}

RunOutput generate(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                   const ProgressFn & on_progress) {
    Run run(model, config, jobs, on_progress);
    return run.execute();
}

double bench_bare_decode(Model & model, const std::vector<int32_t> & prompt, int n_sequences, int n_steps,
                         int n_threads) {
    if (prompt.empty() || n_sequences < 1 || n_sequences > kMaxSequenceIds || n_steps < 1)
        throw InvalidArgument("bench_bare_decode needs a prompt, 1..256 sequences and at least one step");
    ContextShape shape;
    const int64_t cells = static_cast<int64_t>(prompt.size()) + static_cast<int64_t>(n_sequences) * n_steps;
    shape.n_ctx = static_cast<uint32_t>((cells + kCellPadding - 1) / kCellPadding * kCellPadding);
    shape.n_seq_max = n_sequences;
    shape.n_batch = kBatchTokens;
    shape.n_threads = n_threads;
    llama_context * ctx = model.acquire_context(shape);
    llama_memory_t mem = llama_get_memory(ctx);
    MemoryGuard guard{mem};
    Batch batch(static_cast<int32_t>(std::max<uint32_t>(llama_n_batch(ctx), n_sequences)));
    const int32_t n = static_cast<int32_t>(prompt.size());
    for (int32_t begin = 0; begin < n; begin += batch.capacity()) {
        batch.clear();
        for (int32_t i = begin; i < std::min(n, begin + batch.capacity()); ++i) batch.add(prompt[i], i, 0, i == n - 1);
        batch.decode(ctx, "prompt prefill");
    }
    for (int s = 1; s < n_sequences; ++s) llama_memory_seq_cp(mem, 0, s, -1, -1);
    const auto t0 = Clock::now();
    for (int step = 0; step < n_steps; ++step) {
        batch.clear();
        for (int s = 0; s < n_sequences; ++s) batch.add(prompt[(step + s) % n], n + step, s, true);
        batch.decode(ctx, "benchmark decode");
        if (llama_get_logits_ith(ctx, n_sequences - 1) == nullptr) throw LlamaError("no logits");
    }
    return seconds_since(t0);
}

}  // namespace eager
