// The loop: plan the run, acquire the context, then admit prompts and step every live sequence one
// token per llama_decode until every prompt is done. What each part decides lives beside it:
// run_plan (checks, sizing), admission (may a prompt start), kv_scheduler (the cache as a budget: who
// waits, pauses and resumes, how far the cache grows), prefill and prefix_anchor (prompts into the KV
// cache), seed_start (tree seeds), rows (the row kernel), branch_policy (the EAGer decision) and
// sequence_table (the owner of every sequence's and prompt's state: forks, tokens, stops, release).
#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <memory>

#include "admission.hpp"
#include "batch.hpp"
#include "branch_policy.hpp"
#include "errors.hpp"
#include "kv_ops.hpp"
#include "kv_scheduler.hpp"
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

// The model's vocabulary as the sequence table reads it.
class ModelText final : public TokenText {
public:
    explicit ModelText(const Model & model) : model_(model) {}
    bool is_eog(int32_t token) const override { return model_.is_eog(token); }
    std::string piece(int32_t token) const override { return model_.token_to_piece(token); }

private:
    const Model & model_;
};

class Engine {
public:
    Engine(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs, const ProgressFn & progress,
           int64_t cells, int64_t ceiling, const AnchorPlan & anchor, const StreamGrowth & streams);

    RunOutput run();

private:
    void start(int prompt);
    void start_root(int prompt);
    void prefill_started();
    void first_tokens(int root, int32_t last_row);
    int root_slot(int prompt) const;
    void step();
    void advance(const std::vector<int> & slots, const std::vector<int32_t> & output_rows);
    std::vector<CapCount> cap_counts(const std::vector<int> & slots) const;
    void apply(int slot, const RowResult & row, CapCount count);
    void end_step(const std::vector<int> & prompts);
    void release_finished();
    void trace_step(int tokens, int64_t cells_after_step, double decode_s);
    void report_progress();
    void report_counts();

    const EngineConfig & cfg_;
    const std::vector<PromptJob> & jobs_;
    const ProgressFn & progress_;
    ContextHandle ctx_;
    const int n_seq_max_;
    const BranchPolicy policy_;
    Batch batch_;
    RunOutput out_;
    Admission admission_;
    ModelText text_;
    Prefill prefill_;
    LlamaKvOps ops_;
    SequenceTable table_;
    RowWork rows_;
    SeedStart seeds_;
    KvScheduler kv_;

    // Roots admitted in this scheduling pass whose prompts are prefilled together (prefill_started), one
    // llama_decode for as many prompts as the batch holds instead of one each: each call passes over every
    // weight, which costs a short prompt far more than its tokens. Not with the prefix anchor (each prompt
    // copies from the one before it) or streams (llama.cpp splits such a batch by stream).
    const bool batch_prefills_;
    std::vector<int> prefill_prompts_;  // by prompt: a slot moves when an earlier prompt's sequences are released
    int64_t step_ = 0;  // advance calls so far: each gives every sequence it covers one token
    std::vector<int64_t> counted_step_;  // per prompt, the last step that counted its step
    Clock::time_point start_ = Clock::now();
    std::unique_ptr<KvTraceLog> kv_trace_;  // trace_steps with LLAMA_KV_CACHE_DEBUG set
};

Engine::Engine(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
               const ProgressFn & progress, int64_t cells, int64_t ceiling, const AnchorPlan & anchor,
               const StreamGrowth & streams)
    : cfg_(config), jobs_(jobs), progress_(progress), ctx_(model.context()),
      n_seq_max_(static_cast<int>(llama_n_seq_max(ctx_.get()))),
      policy_(config.method, config.threshold_mode, config.no_branch_window, config.cap_rule),
      batch_(static_cast<int32_t>(std::max<uint32_t>(llama_n_batch(ctx_.get()), n_seq_max_))),
      out_{std::vector<PromptResult>(jobs.size()), RunStats{}},
      admission_(config.method, config.max_live_sequences, config.max_new_tokens,
                 anchor.id >= 0 ? n_seq_max_ - 1 : n_seq_max_, admission_cells(config, ceiling)),
      text_(model),
      prefill_(ctx_, batch_, PrefixAnchor(anchor.id, llama_model_n_swa(model.model()))),
      ops_(model, prefill_),
      table_(text_, config, jobs, out_, ops_, anchor.id >= 0 ? n_seq_max_ - 1 : n_seq_max_, streams.budget_bytes > 0),
      rows_(config, model.n_vocab(), std::max(1, model.context_shape().n_threads)),
      seeds_(config, ctx_, table_, prefill_, rows_, ops_),
      kv_(config, table_, ops_, cells, ceiling, anchor.reserved, streams),
      batch_prefills_(anchor.id < 0 && config.kv_layout == KvLayout::Unified),
      counted_step_(jobs.size(), -1) {
    if (cfg_.trace_steps && KvTraceLog::enabled()) kv_trace_ = std::make_unique<KvTraceLog>();
}

RunOutput Engine::run() {
    while (!table_.all_done()) {
        report_progress();
        const int admitted = kv_.admitted_count(), done = table_.done_count();
        // Preempted prompts resume first, as vLLM puts them back at the queue's front; then new ones start.
        kv_.schedule(admission_, [this](int prompt) { start(prompt); });
        prefill_started();
        if (table_.running_count() > 0) {
            step();
        } else if (kv_.admitted_count() == admitted && table_.done_count() == done) {
            // Nothing runs and nothing could start or resume: a scheduling rule that never lets go would spin.
            throw LlamaError("internal error: no prompt could start or resume (" + std::to_string(table_.done_count()) +
                             " of " + std::to_string(jobs_.size()) + " done, " + std::to_string(table_.live_count()) +
                             " sequences waiting)");
        }
    }
    report_progress();
    report_counts();
    return std::move(out_);
}

void Engine::start(int prompt) {
    const PromptJob & job = jobs_[prompt];
    out_.stats.prompt_tokens += static_cast<int64_t>(job.tokens.size());
    if (job.seeds.empty()) return start_root(prompt);

    const auto t0 = Clock::now();
    seeds_.start(prompt, job);
    out_.stats.prefill_seconds += seconds_since(t0);
    ++out_.prompts[prompt].steps;  // the seeds' first tokens are the prompt's first step
    const PromptState & st = table_.prompt(prompt);
    if (policy_.close_if_capped(table_.branch_state(prompt), st.n_sequences, job.max_sequences))
        admission_.count_final(st.n_sequences);
    release_finished();
}

void Engine::start_root(int prompt) {
    const PromptJob & job = jobs_[prompt];
    const int root = table_.create_root(prompt);
    if (batch_prefills_ && job.tokens.size() <= static_cast<size_t>(batch_.capacity())) {
        // Its cells are counted now, so the prompts admitted after it in this pass see them.
        table_.prefilled(root);
        prefill_prompts_.push_back(prompt);
        return;
    }
    const auto t0 = Clock::now();
    const int32_t last_row = prefill_.prompt(job.tokens, table_[root].id);
    out_.stats.prefill_seconds += seconds_since(t0);
    table_.prefilled(root);
    first_tokens(root, last_row);
}

void Engine::prefill_started() {
    // Whole prompts in admission order, as many as the batch holds per llama_decode; each prompt's
    // sequences then take their first token from its last row, as after a prefill of its own.
    size_t next = 0;
    while (next < prefill_prompts_.size()) {
        batch_.clear();
        std::vector<std::pair<int, int32_t>> decoded;  // prompt, its last token's output row
        for (; next < prefill_prompts_.size(); ++next) {
            const int prompt = prefill_prompts_[next];
            const std::vector<int32_t> & tokens = jobs_[prompt].tokens;
            if (batch_.size() + static_cast<int32_t>(tokens.size()) > batch_.capacity()) break;
            const llama_seq_id id = table_[root_slot(prompt)].id;
            int32_t row = -1;
            for (size_t i = 0; i < tokens.size(); ++i) row = batch_.add(tokens[i], static_cast<int32_t>(i), id, i + 1 == tokens.size());
            decoded.emplace_back(prompt, row);
        }
        const auto t0 = Clock::now();
        batch_.decode(ctx_.get(), "prompt prefill");
        out_.stats.prefill_seconds += seconds_since(t0);
        // Each advance may release finished sequences, which moves the slots after them: looked up each time.
        for (const auto & [prompt, row] : decoded) first_tokens(root_slot(prompt), row);
    }
    prefill_prompts_.clear();
}

int Engine::root_slot(int prompt) const {
    for (int s = 0; s < table_.size(); ++s)
        if (table_[s].prompt == prompt) return s;  // a prompt waiting for its prefill holds its root alone
    throw LlamaError("internal error: prompt " + std::to_string(prompt) + " lost its root before its prefill");
}

void Engine::first_tokens(int root, int32_t last_row) {
    const PromptJob & job = jobs_[table_[root].prompt];
    std::vector<int> slots{root};
    // M independent samples share one prefill.
    if (cfg_.method == Method::Parallel) {
        const std::vector<int> samples = table_.add_samples(root, job.max_sequences - 1);
        slots.insert(slots.end(), samples.begin(), samples.end());
    }
    advance(slots, std::vector<int32_t>(slots.size(), last_row));
}

void Engine::step() {
    // One token for each running sequence, in one llama_decode; the scheduler makes room first, and
    // preempts and asks again when llama.cpp finds no cell anyway.
    std::vector<int> slots;
    double decode_s = 0;
    const auto t0 = Clock::now();
    const int64_t cells_after_step = kv_.step([&] {
        slots.clear();
        for (int s = 0; s < table_.size(); ++s)
            if (!table_[s].paused()) slots.push_back(s);
        // Per-sequence streams: llama.cpp splits a step into one micro-batch (one pass over the weights) per run
        // of consecutive ascending ids, so the batch goes in id order. The unified cache keeps table order.
        if (cfg_.kv_layout == KvLayout::PerSequence)
            std::sort(slots.begin(), slots.end(), [this](int a, int b) { return table_[a].id < table_[b].id; });
        batch_.clear();
        for (int s : slots) batch_.add(table_[s].pending, table_[s].n_past, table_[s].id, true);
        const auto t1 = Clock::now();
        if (kv_trace_) kv_trace_->take();  // what admission's prefills logged is not this step's
        const bool decoded = batch_.try_decode(ctx_.get(), "generation");
        decode_s = seconds_since(t1);
        out_.stats.decode_seconds += decode_s;
        return decoded;
    });
    out_.stats.bookkeeping_seconds += seconds_since(t0) - decode_s;
    ++out_.stats.steps;
    if (cfg_.trace_steps) trace_step(static_cast<int>(slots.size()), cells_after_step, decode_s);
    std::vector<int32_t> rows(slots.size());
    for (size_t i = 0; i < slots.size(); ++i) rows[i] = static_cast<int32_t>(i);
    table_.fed(slots);
    advance(slots, rows);
}

void Engine::advance(const std::vector<int> & slots, const std::vector<int32_t> & output_rows) {
    const int n = static_cast<int>(slots.size());
    std::vector<CapCount> counts = cap_counts(slots);
    std::vector<RowRequest> requests(n);
    std::vector<double> draws(n);
    for (int i = 0; i < n; ++i) {
        const LiveSequence & seq = table_[slots[i]];
        const PromptState & st = table_.prompt(seq.prompt);
        const bool may = policy_.may_branch(st.branch, seq.past_marker, counts[i], jobs_[seq.prompt].max_sequences);
        // The p99 floor keeps every row's entropy, recorded or not, as the reference's history does.
        requests[i] = row_request(cfg_, cfg_.record_entropies || may || policy_.p99());
        // One draw per sequence per step, used or not, keeps every stream independent of branching.
        draws[i] = table_.draw(slots[i]);
    }
    const auto t0 = Clock::now();
    const std::vector<RowResult> & results = rows_.compute(ctx_.get(), output_rows, requests, draws,
                                                           out_.stats.device_dropped_mass_max);
    out_.stats.row_kernel_seconds += seconds_since(t0);
    if (cfg_.trace_rows) {
        for (int i = 0; i < n; ++i) {
            const LiveSequence & seq = table_[slots[i]];
            const RowResult & row = results[i];
            out_.stats.row_trace.push_back(
                RowTrace{seq.prompt, seq.local, seq.generated, row.entropy, row.top1, row.top2, row.sampled, draws[i]});
        }
    }

    const auto t1 = Clock::now();
    // Each prompt's step is counted once per engine step, however its sequences lie in the table
    // (children are appended as born, so a prompt's rows need not be contiguous).
    ++step_;
    // The row rule numbers children as the reference appends them: each prompt's rows in sequence order.
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    if (cfg_.cap_rule == CapRule::Row)
        std::stable_sort(order.begin(), order.end(),
                         [&](int a, int b) { return counts[a].row_position < counts[b].row_position; });
    std::vector<int> touched;
    for (int i : order) {
        const int prompt = table_[slots[i]].prompt;
        if (counted_step_[prompt] != step_) {
            counted_step_[prompt] = step_;
            touched.push_back(prompt);
        }
        apply(slots[i], results[i], counts[i]);
    }
    end_step(touched);
    release_finished();
    out_.stats.bookkeeping_seconds += seconds_since(t1);
}

std::vector<CapCount> Engine::cap_counts(const std::vector<int> & slots) const {
    // Each row's position among its prompt's rows of the step, by sequence index, and what the prompt
    // had before any of them branched. The prompt rule reads neither: no sort on its steps.
    const int n = static_cast<int>(slots.size());
    if (cfg_.cap_rule == CapRule::Prompt) {
        std::vector<CapCount> counts(n);
        for (int i = 0; i < n; ++i) {
            const int n_sequences = table_.prompt(table_[slots[i]].prompt).n_sequences;
            counts[i] = CapCount{n_sequences, 0, n_sequences};
        }
        return counts;
    }
    std::vector<int> by_sequence(n);
    for (int i = 0; i < n; ++i) by_sequence[i] = i;
    std::sort(by_sequence.begin(), by_sequence.end(), [&](int a, int b) {
        const LiveSequence & x = table_[slots[a]];
        const LiveSequence & y = table_[slots[b]];
        return x.prompt != y.prompt ? x.prompt < y.prompt : x.local < y.local;
    });
    std::vector<CapCount> counts(n);
    int position = 0;
    for (int k = 0; k < n; ++k) {
        const int i = by_sequence[k];
        const int prompt = table_[slots[i]].prompt;
        position = k > 0 && table_[slots[by_sequence[k - 1]]].prompt == prompt ? position + 1 : 0;
        const int n_sequences = table_.prompt(prompt).n_sequences;
        counts[i] = CapCount{n_sequences, position, n_sequences};
    }
    return counts;
}

void Engine::apply(int slot, const RowResult & row, CapCount count) {
    const int prompt = table_[slot].prompt;
    BranchState & branch = table_.branch_state(prompt);
    const PromptJob & job = jobs_[prompt];
    count.now = table_.prompt(prompt).n_sequences;  // earlier rows of the step may have branched
    const bool may = policy_.may_branch(branch, table_[slot].past_marker, count, job.max_sequences);
    if (may && policy_.branches(row, job.theta, branch)) {
        // The sampled token is discarded: the parent continues with the most likely token, a new
        // child (sharing the whole prefix) with the second most likely.
        table_.branch(slot, row.entropy, row.top1, row.top2);
        policy_.mark_branch(branch);
    } else {
        table_.append(slot, row.sampled, row.entropy);
    }
    policy_.observe(branch, row.entropy);
}

void Engine::end_step(const std::vector<int> & prompts) {
    for (int prompt : prompts) {
        BranchState & branch = table_.branch_state(prompt);
        const int n_sequences = table_.prompt(prompt).n_sequences;
        ++out_.prompts[prompt].steps;
        const bool was_open = branch.open;
        policy_.end_step(branch, n_sequences, jobs_[prompt].max_sequences);
        if (was_open && !branch.open) admission_.count_final(n_sequences);
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
        admission_.released(jobs_[prompt]);
    }
}

void Engine::trace_step(int tokens, int64_t cells_after_step, double decode_s) {
    StepTrace t;
    t.tokens = tokens;
    t.prompts = static_cast<int32_t>(table_.in_flight().size());
    t.kv_held = static_cast<int32_t>(cells_after_step - tokens);  // before this step's tokens
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
    p.prompts_done = table_.done_count();
    p.prompts_total = static_cast<int>(jobs_.size());
    p.live_sequences = table_.live_count();
    p.generated_tokens = out_.stats.generated_tokens;
    p.elapsed_seconds = seconds_since(start_);
    if (!progress_(p)) throw Interrupted();
}

void Engine::report_counts() {
    RunStats & s = out_.stats;
    s.shared_prompt_tokens = prefill_.shared_tokens();
    s.reprocessed_tokens = seeds_.reprocessed_tokens();
    const KvScheduler::Counts kv = kv_.counts();
    s.kv_cells = kv.capacity;
    s.kv_grows = kv.grows;
    s.peak_kv_cells = kv.peak_cells;
    s.preemptions = kv.preemptions;
    s.recomputed_tokens = kv.recomputed_tokens;
    s.kv_ceiling_lowered = kv.ceiling_lowered;
    s.kv_layout = cfg_.kv_layout == KvLayout::PerSequence ? "per_sequence" : "unified";
}

}  // namespace

RunOutput generate(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                   const ProgressFn & on_progress) {
    validate_run(config, jobs, model.n_vocab(), model.n_ctx_train());
    KvSizing kv;
    kv.bytes_per_cell = model.kv_bytes_per_cell();
    const KvLayers & layers = model.kv_layers();
    if (layers.window > 0) {
        kv.window_bytes_per_cell = kv.bytes_per_cell * layers.window / (layers.full + layers.window);
        kv.window_stream_cells = layers.window_cells(1, kBatchTokens);
        kv.n_swa = layers.n_swa;
    }
    if (config.n_ctx == 0 && config.kv_memory == 0) kv.available_bytes = model.memory_available_bytes();
    // The run from here on sees the layout "auto" chose, as if it had been asked for.
    EngineConfig run_config = config;
    run_config.kv_layout = choose_kv_layout(config, jobs, kv);
    const ContextShape shape = plan_context(run_config, jobs, kv);
    const int64_t ceiling = plan_kv_ceiling(run_config, jobs, kv, shape);
    check_budget(run_config, jobs, shape.n_ctx, ceiling, kv);
    llama_context * ctx = model.acquire_context(shape);
    MemoryGuard guard{model.context()};
    // A context reused from an earlier run may be larger: this run keeps to the cells it planned.
    const StreamGrowth streams = plan_stream_growth(run_config, jobs, kv, shape);
    // Streams planned to outgrow their budget change their count mid-run, which would move the anchor's stream:
    // no anchor. (With one, a growth llama.cpp cannot allocate ends the run: shrink_streams.)
    const AnchorPlan anchor = streams.may_outgrow ? AnchorPlan{}
                                                       : plan_anchor(run_config, jobs, static_cast<int>(llama_n_seq_max(ctx)),
                                                                     shape.n_ctx, ceiling);
    Engine engine(model, run_config, jobs, on_progress, shape.n_ctx, ceiling, anchor, streams);
    return engine.run();
}

}  // namespace eager
