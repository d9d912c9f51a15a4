// The loop: plan the run, acquire the context, then admit prompts and step every live sequence one
// token per llama_decode until every prompt is done. What each part decides lives beside it:
// run_plan (checks, sizing), admission, kv_memory (the cache as a budget: preemption and
// recomputation), prefill and prefix_anchor (prompts into the KV cache), seed_start (tree seeds),
// rows (the row kernel), branch_policy (the EAGer decision) and sequence_table (forks, tokens,
// stops, release).
#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>

#include "admission.hpp"
#include "batch.hpp"
#include "branch_policy.hpp"
#include "errors.hpp"
#include "kv_memory.hpp"
#include "kv_trace.hpp"
#include "llama.h"
#include "prefill.hpp"
#include "rows.hpp"
#include "run_plan.hpp"
#include "seed_start.hpp"
#include "sequence_table.hpp"

namespace eager {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The cells admission projects trees against. Per-sequence streams are each sized for a whole
// sequence, so there the sequence ids (one stream each) bound admission, never a count of cells.
int64_t admission_cells(const EngineConfig & config, int64_t ceiling) {
    return config.kv_layout == KvLayout::PerSequence ? std::numeric_limits<int32_t>::max() : ceiling;
}

class Engine {
public:
    Engine(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs, const ProgressFn & progress,
           int64_t cells, int64_t ceiling, const AnchorPlan & anchor);

    RunOutput run();

private:
    void admit_ready();
    void admit(int prompt);
    void start_root(int prompt);
    void step();
    std::vector<int> decode_running();
    void advance(const std::vector<int> & slots, const std::vector<int32_t> & output_rows);
    void apply(int slot, const RowResult & row);
    void end_step(const std::vector<int> & prompts);
    void close_branching(int prompt);
    void release_finished();
    std::vector<PromptLoad> loads() const;
    // Whether every prompt in flight has closed for branching (its tree will grow no more).
    bool trees_closed() const;
    void trace_step(int tokens, double decode_s);
    void report_progress();

    Model & model_;
    const EngineConfig & cfg_;
    const std::vector<PromptJob> & jobs_;
    const ProgressFn & progress_;
    ContextHandle ctx_;
    const int n_seq_max_;
    const BranchPolicy policy_;
    Batch batch_;
    RunOutput out_;
    Admission admission_;
    SequenceTable table_;
    Prefill prefill_;
    RowWork rows_;
    SeedStart seeds_;
    KvMemory kv_;

    size_t next_job_ = 0;
    std::vector<int> in_flight_;  // admitted prompts not done, in admission order
    int prompts_done_ = 0;
    int64_t step_ = 0;  // advance calls so far: each gives every sequence it covers one token
    Clock::time_point start_ = Clock::now();
    std::unique_ptr<KvTraceLog> kv_trace_;  // trace_steps with LLAMA_KV_CACHE_DEBUG set
};

Engine::Engine(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
               const ProgressFn & progress, int64_t cells, int64_t ceiling, const AnchorPlan & anchor)
    : model_(model), cfg_(config), jobs_(jobs), progress_(progress), ctx_(model.context()),
      n_seq_max_(static_cast<int>(llama_n_seq_max(ctx_.get()))),
      policy_(config.method, config.threshold_mode, config.no_branch_window),
      batch_(static_cast<int32_t>(std::max<uint32_t>(llama_n_batch(ctx_.get()), n_seq_max_))),
      out_{std::vector<PromptResult>(jobs.size()), RunStats{}},
      admission_(config.method, config.max_live_sequences, config.max_new_tokens,
                 anchor.id >= 0 ? n_seq_max_ - 1 : n_seq_max_, admission_cells(config, ceiling)),
      table_(model, config, jobs, out_, ctx_, anchor.id >= 0 ? n_seq_max_ - 1 : n_seq_max_),
      prefill_(ctx_, batch_, PrefixAnchor(anchor.id, llama_model_n_swa(model.model()))),
      rows_(config, model.n_vocab(), std::max(1, model.context_shape().n_threads)),
      seeds_(model, config, ctx_, table_, prefill_, rows_, out_.stats),
      kv_(model, cells, ceiling, table_, prefill_, out_.stats, anchor.reserved,
          // Lengths are known when nothing but the cap ends a sequence (streams never preempt).
          config.ignore_eos && config.stop.empty() && config.kv_layout == KvLayout::Unified ? config.max_new_tokens : 0) {
    if (cfg_.trace_steps && KvTraceLog::enabled()) kv_trace_ = std::make_unique<KvTraceLog>();
}

RunOutput Engine::run() {
    while (prompts_done_ < static_cast<int>(jobs_.size())) {
        report_progress();
        kv_.resume(in_flight_);  // preempted prompts first, as vLLM puts them back at the queue's front
        if (!kv_.any_paused()) admit_ready();
        if (table_.running_count() > 0) step();
    }
    report_progress();
    return std::move(out_);
}

void Engine::admit_ready() {
    while (next_job_ < jobs_.size()) {
        const PromptJob & job = jobs_[next_job_];
        // An EAGer tree grows by branching, which no projection foresees: a prompt starts staggered only
        // beside trees that have closed for branching (tried beside growing ones: they preempted each other,
        // 0.69x the whole-memory rate). Its own children are born held back while they do not fit.
        // Full Parallel trees never branch; they also read as closed after their first step, but saying so
        // here keeps the rule from hanging on when that step closes them.
        const bool staggered = job.seeds.empty() && (cfg_.method == Method::Parallel || trees_closed()) &&
                               kv_.admits_staggered(in_flight_, static_cast<int64_t>(job.tokens.size()), job.max_sequences);
        if (!admission_.may_admit(job, loads(), table_.live_count(), kv_.cells_held(in_flight_), staggered)) return;
        admit(static_cast<int>(next_job_++));
    }
}

bool Engine::trees_closed() const {
    return std::none_of(in_flight_.begin(), in_flight_.end(), [&](int i) { return table_.prompt(i).branch.open; });
}

std::vector<PromptLoad> Engine::loads() const {
    std::vector<PromptLoad> loads;
    loads.reserve(in_flight_.size());
    for (int i : in_flight_) {
        const PromptState & st = table_.prompt(i);
        loads.push_back(PromptLoad{jobs_[i].max_sequences, st.n_sequences, st.live, st.branch.open, 0});
    }
    for (int s = 0; s < table_.size(); ++s) {
        const auto at = std::find(in_flight_.begin(), in_flight_.end(), table_[s].prompt);
        loads[at - in_flight_.begin()].live_tokens += table_[s].generated;
    }
    return loads;
}

void Engine::admit(int prompt) {
    const PromptJob & job = jobs_[prompt];
    in_flight_.push_back(prompt);
    admission_.admitted(job);
    table_.prompt(prompt).status = PromptStatus::Running;
    out_.prompts[prompt].prompt_tokens = static_cast<int>(job.tokens.size());
    kv_.reserve_beside(in_flight_, start_cells(cfg_, job));  // a growing cache makes room for the prefill first
    out_.stats.prompt_tokens += static_cast<int64_t>(job.tokens.size());
    if (job.seeds.empty()) return start_root(prompt);

    const auto t0 = Clock::now();
    seeds_.start(prompt, job);
    out_.stats.prefill_seconds += seconds_since(t0);
    ++out_.prompts[prompt].steps;  // the seeds' first tokens are the prompt's first step
    PromptState & st = table_.prompt(prompt);
    if (policy_.close_if_capped(st.branch, st.n_sequences, job.max_sequences)) admission_.count_final(st.n_sequences);
    release_finished();
}

void Engine::start_root(int prompt) {
    const PromptJob & job = jobs_[prompt];
    const int root = table_.create(prompt, -1);
    const auto t0 = Clock::now();
    const int32_t last_row = prefill_.prompt(job.tokens, table_[root].id, out_.stats);
    out_.stats.prefill_seconds += seconds_since(t0);
    const int32_t n = static_cast<int32_t>(job.tokens.size());
    table_[root].n_past = n;
    table_.own_cells(root);
    std::vector<int> slots{root};
    if (cfg_.method == Method::Parallel) {
        // M independent samples share one prefill: the copies only tag the prompt's cells.
        for (int k = 1; k < job.max_sequences; ++k) {
            const int slot = table_.create(prompt, -1);
            table_.share_cells(root, slot);
            table_[slot].n_past = n;
            slots.push_back(slot);
        }
    }
    advance(slots, std::vector<int32_t>(slots.size(), last_row));
}

void Engine::step() {
    const std::vector<int> slots = decode_running();
    std::vector<int32_t> rows(slots.size());
    for (size_t i = 0; i < slots.size(); ++i) rows[i] = static_cast<int32_t>(i);
    for (int slot : slots) table_[slot].n_past += 1;
    advance(slots, rows);
}

std::vector<int> Engine::decode_running() {
    // One token for each running sequence; a cache too full for the step preempts first (the
    // projection), and again when llama.cpp finds no cell anyway. Returns the slots decoded, in
    // batch order.
    for (;;) {
        const auto t0 = Clock::now();
        out_.stats.peak_kv_cells = std::max(out_.stats.peak_kv_cells, kv_.make_room(in_flight_));
        batch_.clear();
        std::vector<int> slots;
        slots.reserve(table_.size());
        for (int s = 0; s < table_.size(); ++s)
            if (!table_[s].paused) slots.push_back(s);
        // Per-sequence streams: llama.cpp splits a step into one micro-batch (one pass over the weights) per run
        // of consecutive ascending ids, so the batch goes in id order. The unified cache keeps table order.
        if (cfg_.kv_layout == KvLayout::PerSequence)
            std::sort(slots.begin(), slots.end(), [this](int a, int b) { return table_[a].id < table_[b].id; });
        for (int s : slots) batch_.add(table_[s].pending, table_[s].n_past, table_[s].id, true);
        out_.stats.bookkeeping_seconds += seconds_since(t0);
        const auto t1 = Clock::now();
        if (kv_trace_) kv_trace_->take();  // what admission's prefills logged is not this step's
        const bool decoded = batch_.try_decode(ctx_.get(), "generation");
        const double decode_s = seconds_since(t1);
        out_.stats.decode_seconds += decode_s;
        if (!decoded) {
            kv_.preempt(in_flight_);
            continue;
        }
        ++out_.stats.steps;
        if (cfg_.trace_steps) trace_step(static_cast<int>(slots.size()), decode_s);
        return slots;
    }
}

void Engine::advance(const std::vector<int> & slots, const std::vector<int32_t> & output_rows) {
    const int n = static_cast<int>(slots.size());
    std::vector<RowRequest> requests(n);
    std::vector<double> draws(n);
    for (int i = 0; i < n; ++i) {
        LiveSequence & seq = table_[slots[i]];
        const PromptState & st = table_.prompt(seq.prompt);
        const bool may = policy_.may_branch(st.branch, seq.past_marker, st.n_sequences, jobs_[seq.prompt].max_sequences);
        // The p99 floor keeps every row's entropy, recorded or not, as the reference's history does.
        requests[i] = row_request(cfg_, cfg_.record_entropies || may || policy_.p99());
        // One draw per sequence per step, used or not, keeps every stream independent of branching.
        draws[i] = seq.rng.uniform();
    }
    const auto t0 = Clock::now();
    const std::vector<RowResult> & results = rows_.compute(ctx_.get(), output_rows, requests, draws,
                                                           out_.stats.device_dropped_mass_max);
    out_.stats.row_kernel_seconds += seconds_since(t0);

    const auto t1 = Clock::now();
    // Each prompt's step is counted once per engine step, however its sequences lie in the table
    // (children are appended as born, so a prompt's rows need not be contiguous).
    ++step_;
    std::vector<int> touched;
    for (int i = 0; i < n; ++i) {
        PromptState & st = table_.prompt(table_[slots[i]].prompt);
        if (st.counted_step != step_) {
            st.counted_step = step_;
            touched.push_back(table_[slots[i]].prompt);
        }
        apply(slots[i], results[i]);
    }
    end_step(touched);
    release_finished();
    out_.stats.bookkeeping_seconds += seconds_since(t1);
}

void Engine::apply(int slot, const RowResult & row) {
    const int prompt = table_[slot].prompt;
    PromptState & st = table_.prompt(prompt);
    const PromptJob & job = jobs_[prompt];
    const bool may = policy_.may_branch(st.branch, table_[slot].past_marker, st.n_sequences, job.max_sequences);
    if (may && policy_.branches(row, job.theta, st.branch)) {
        // The sampled token is discarded: the parent continues with the most likely token, a new
        // child (sharing the whole prefix) with the second most likely.
        const int child = table_.create(prompt, slot);  // may reallocate the table
        table_.result(table_[child]).branch_entropy = row.entropy;
        table_.append(table_[slot], row.top1, row.entropy);
        table_.append(table_[child], row.top2, row.entropy);
        policy_.mark_branch(st.branch);
    } else {
        table_.append(table_[slot], row.sampled, row.entropy);
    }
    policy_.observe(st.branch, row.entropy);
}

void Engine::end_step(const std::vector<int> & prompts) {
    for (int prompt : prompts) {
        PromptState & st = table_.prompt(prompt);
        ++out_.prompts[prompt].steps;
        const bool was_open = st.branch.open;
        policy_.end_step(st.branch, st.n_sequences, jobs_[prompt].max_sequences);
        if (was_open && !st.branch.open) admission_.count_final(st.n_sequences);
    }
}

void Engine::release_finished() {
    const SequenceTable::Released released = table_.release_finished();
    // The device path keeps a sampler per sequence id; it keeps its ids as they are.
    if (cfg_.kv_layout == KvLayout::PerSequence && !cfg_.device_topk && !released.lengths.empty()) table_.compact_ids();
    for (int length : released.lengths) admission_.sequence_finished(length);
    for (int prompt : released.prompts_done) {
        const PromptState & st = table_.prompt(prompt);
        if (st.branch.open) admission_.count_final(st.n_sequences);  // not counted when it closed
        in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), prompt));
        ++prompts_done_;
        admission_.released(jobs_[prompt]);
    }
}

void Engine::trace_step(int tokens, double decode_s) {
    StepTrace t;
    t.tokens = tokens;
    t.prompts = static_cast<int32_t>(in_flight_.size());
    t.kv_held = static_cast<int32_t>(kv_.cells_held(in_flight_));
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

void Engine::report_progress() {
    if (!progress_) return;
    Progress p;
    p.prompts_done = prompts_done_;
    p.prompts_total = static_cast<int>(jobs_.size());
    p.live_sequences = table_.live_count();
    p.generated_tokens = out_.stats.generated_tokens;
    p.elapsed_seconds = seconds_since(start_);
    if (!progress_(p)) throw Interrupted();
}

}  // namespace

RunOutput generate(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                   const ProgressFn & on_progress) {
    validate_run(config, jobs, model.n_vocab(), model.n_ctx_train());
    KvSizing kv;
    kv.bytes_per_cell = kv_bytes_per_cell(model);
    if (config.n_ctx == 0 && config.kv_memory == 0) kv.available_bytes = available_memory_bytes(model);
    const ContextShape shape = plan_context(config, jobs, kv);
    const int64_t ceiling = plan_kv_ceiling(config, kv, shape.n_ctx);
    check_budget(config, jobs, shape.n_ctx, ceiling, kv);
    llama_context * ctx = model.acquire_context(shape);
    MemoryGuard guard{model.context()};
    // A context reused from an earlier run may be larger: this run keeps to the cells it planned.
    const AnchorPlan anchor = plan_anchor(config, jobs, static_cast<int>(llama_n_seq_max(ctx)), shape.n_ctx, ceiling);
    Engine engine(model, config, jobs, on_progress, shape.n_ctx, ceiling, anchor);
    return engine.run();
}

double bench_bare_decode(Model & model, const std::vector<int32_t> & prompt, int n_sequences, int n_steps,
                         int n_threads) {
    if (prompt.empty() || n_sequences < 1 || n_sequences > kMaxSequenceIds || n_steps < 1)
        throw InvalidArgument("bench_bare_decode needs a prompt, 1..256 sequences and at least one step");
    ContextShape shape;
    shape.n_ctx = round_up_cells(static_cast<int64_t>(prompt.size()) + static_cast<int64_t>(n_sequences) * n_steps);
    shape.n_seq_max = n_sequences;
    shape.n_batch = kBatchTokens;
    shape.n_threads = n_threads;
    llama_context * ctx = model.acquire_context(shape);
    llama_memory_t mem = llama_get_memory(ctx);
    MemoryGuard guard{model.context()};
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
