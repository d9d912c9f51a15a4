#include "kv_scheduler.hpp"

#include <algorithm>
#include <limits>
#include <string>

#include "errors.hpp"
#include "run_plan.hpp"

namespace eager {

int64_t admission_cells(const EngineConfig & config, int64_t ceiling) {
    return config.kv_layout == KvLayout::PerSequence ? std::numeric_limits<int32_t>::max() : ceiling;
}

int known_length(const EngineConfig & config) {
    return config.ignore_eos && config.stop.empty() && config.kv_layout == KvLayout::Unified ? config.max_new_tokens : 0;
}

KvScheduler::KvScheduler(const EngineConfig & config, SequenceTable & table, KvOps & ops, int64_t cells,
                         int64_t ceiling, int64_t anchor_cells, const StreamGrowth & streams)
    : cfg_(config), table_(table), ops_(ops), capacity_(cells), ceiling_(std::max(cells, ceiling)),
      anchor_cells_(anchor_cells), known_length_(known_length(config)),
      streams_(config.kv_layout == KvLayout::PerSequence), stream_growth_(streams) {}

bool KvScheduler::within_budget(double cells) const { return cells <= usable_cells(ceiling_); }

bool KvScheduler::reserve(int64_t cells) {
    if (cells <= capacity_) return true;
    if (cells > ceiling_) return false;
    // Doubling keeps the copies few (each moves only the cells in use); the capacity, not the size of
    // a context reused from an earlier run, decides, so a run grows at the same steps either way.
    const int64_t n = std::max<int64_t>(1, stream_growth_.streams);
    int64_t grown =
        streams_ ? std::min<int64_t>(ceiling_, n * std::max(grown_stream_cells(capacity_ / n, stream_growth_), (cells + n - 1) / n))
                 : std::min<int64_t>(ceiling_, round_up_cells(std::max(2 * capacity_, cells)));
    if (streams_ && stream_growth_.budget_bytes > 0) {
        // Streams whose budget cannot hold them all at their whole length: as long as a sequence may grow, and
        // only while the budget holds every stream at that size (then shrink_streams()).
        const int64_t per_stream = std::min(stream_growth_.whole_cells, grown / n);
        if (per_stream <= capacity_ / n || streams_within(stream_growth_, per_stream) < n) return false;
        grown = n * per_stream;
    }
    if (!ops_.grow(grown)) {
        // The memory is not there after all: the cache keeps its size, which becomes the ceiling, and the
        // run goes on within it, preempting as at any budget.
        ceiling_lowered_ = "could not grow the KV cache from " + std::to_string(capacity_) + " to " +
                           std::to_string(grown) + " cells (llama.cpp could not allocate the memory); the run kept " +
                           std::to_string(capacity_) + " cells as its ceiling";
        ceiling_ = capacity_;
        return false;
    }
    capacity_ = grown;
    ++grows_;
    return true;
}

bool KvScheduler::reserve_beside(int64_t more) {
    if (streams_) return true;  // streams grow only when a decode finds one full (preempt())
    return reserve(std::min(ceiling_, cells_held() + more + table_.running_count()));
}

int64_t KvScheduler::cells_held() const { return table_.cells_held() + anchor_cells_; }

void KvScheduler::schedule(Admission & admission, const std::function<void(int)> & start) {
    admission.set_ids_available(table_.id_count());
    resume();
    const int n_jobs = static_cast<int>(table_.prompt_count());
    while (next_job_ < n_jobs && try_admit(next_job_, admission)) start(next_job_++);
}

bool KvScheduler::try_admit(int prompt, Admission & admission) {
    if (table_.paused_count() > 0) return false;  // preempted prompts go first, as vLLM puts them back at the queue's front
    const PromptJob & job = table_.job(prompt);
    if (stream_growth_.budget_bytes > 0) {
        // Streams that preempt may have become fewer than a prompt's M: such a prompt starts alone, its
        // sequences beyond the streams waiting for ids (born held back). Its seeds each need a stream at once.
        const int ids = table_.id_count();
        const bool alone = table_.live_count() == 0;
        if (alone && static_cast<int>(job.seeds.size()) > ids)
            throw LlamaError("prompt " + std::to_string(prompt) + " starts " + std::to_string(job.seeds.size()) +
                             " tree seeds at once, but kv_memory holds " + std::to_string(ids) + " per-sequence streams " +
                             "of the length its sequences have reached; raise kv_memory or use kv_layout='unified'");
        admission.set_ids_available(alone ? std::max(ids, job.max_sequences) : ids);
    }
    // An EAGer tree grows by branching, which no projection foresees: a prompt starts staggered only
    // beside trees that have closed for branching (tried beside growing ones: they preempted each other,
    // 0.69x the whole-memory rate). Its own children are born held back while they do not fit.
    // Full Parallel trees never branch; they also read as closed after their first step, but saying so
    // here keeps the rule from hanging on when that step closes them.
    const bool staggered = job.seeds.empty() && (cfg_.method == Method::Parallel || table_.trees_closed()) &&
                           admits_staggered(static_cast<int64_t>(job.tokens.size()), job.max_sequences);
    if (!admission.may_admit(job, table_.prompt_loads(), table_.live_count(), cells_held(), staggered)) return false;
    table_.admit(prompt);
    admission.admitted(job);
    reserve_beside(start_cells(cfg_, job));  // a growing cache makes room for the prefill first
    return true;
}

int64_t KvScheduler::step(const std::function<bool()> & decode) {
    for (;;) {
        const int64_t after_step = make_room();
        peak_ = std::max(peak_, after_step);
        if (decode()) return after_step;
        preempt();
    }
}

int64_t KvScheduler::make_room() {
    // Streams: what one sequence holds bounds it, not what all hold together. A sequence whose stream is
    // full fails the decode, which first applies llama.cpp's queued stream copies (a fork, a moved id),
    // so the streams then grow (preempt()) with every stream's data in place.
    if (streams_) return cells_held() + table_.running_count();
    hold_back();
    for (;;) {
        const int64_t after_step = cells_held() + table_.running_count();
        if (reserve(after_step)) return after_step;
        preempt();
    }
}

void KvScheduler::preempt() {
    // A cache that may still grow grows instead (llama.cpp found no slot where the count saw room).
    if (reserve(capacity_ + 1)) return;
    // Streams that may outgrow their budget: fewer, longer streams, the latest admitted prompt paused.
    if (streams_ && stream_growth_.budget_bytes > 0) return shrink_streams();
    // A full stream belongs to a running sequence: pausing others gives it no cell.
    if (streams_)
        throw LlamaError("the per-sequence KV streams (" + std::to_string(capacity_) + " cells in all) could not grow " +
                         "for a sequence that filled its stream; " +
                         (ceiling_lowered_.empty() ? "raise kv_memory (or n_ctx)" : ceiling_lowered_ + ": free memory, lower max_new_tokens or max_sequences, or use kv_layout='unified'"));
    pause_latest();
}

void KvScheduler::shrink_streams() {
    // Every stream at the next size would outgrow the budget: keep as many streams of that size as it holds
    // (and as the cells a failed growth left), pausing the latest admitted prompts' youngest sequences until
    // the running ones fit in them, and move those into the lowest ids. The paused ones come back as ids free
    // (resume_streams), recomputed into a stream of their own from cell 0, where a run without preemption
    // has their cells too.
    const int64_t n = stream_growth_.streams;
    const int64_t per_stream = capacity_ / n;
    const int64_t grown = std::min(stream_growth_.whole_cells, grown_stream_cells(per_stream, stream_growth_));
    const int64_t fit = std::min({n - 1, streams_within(stream_growth_, grown), ceiling_ / std::max<int64_t>(1, grown)});
    if (anchor_cells_ > 0)  // the prefix anchor's stream is the last id, which fewer streams would not have
        throw LlamaError("the per-sequence KV streams (" + std::to_string(capacity_) + " cells in all) could not grow " +
                         "for a sequence that filled its stream; " +
                         (ceiling_lowered_.empty() ? "raise kv_memory" : ceiling_lowered_ + ": free memory, lower max_new_tokens or max_sequences, turn share_prompt_prefixes off, or use kv_layout='unified'"));
    if (grown <= per_stream || fit < 1)
        throw LlamaError("the per-sequence KV streams (" + std::to_string(n) + " of " + std::to_string(per_stream) +
                         " cells) cannot grow for a sequence that filled its stream: kv_memory holds " +
                         std::to_string(std::max<int64_t>(0, fit)) + " stream(s) of " + std::to_string(grown) + " cells" +
                         (ceiling_lowered_.empty() ? "" : " (" + ceiling_lowered_ + ")") +
                         "; raise kv_memory, lower max_new_tokens, or use kv_layout='unified'");
    // One sequence at a time, the latest admitted prompt's youngest first: a whole prompt paused for one
    // stream too few would leave the rest of its streams idle until it fits whole.
    while (table_.running_count() > fit) pause_youngest();
    std::vector<int> running;
    for (int slot = 0; slot < table_.size(); ++slot)
        if (!table_[slot].paused() && table_[slot].id >= 0) running.push_back(slot);
    // In id order, so a step's ids still run consecutively (llama.cpp decodes each run in one micro-batch).
    std::sort(running.begin(), running.end(), [this](int a, int b) { return table_[a].id < table_[b].id; });
    std::vector<std::pair<llama_seq_id, llama_seq_id>> moves;
    for (size_t i = 0; i < running.size(); ++i) moves.emplace_back(table_[running[i]].id, static_cast<llama_seq_id>(i));
    if (!ops_.reshape_streams(fit, fit * grown, moves))
        throw LlamaError("could not make " + std::to_string(fit) + " KV streams of " + std::to_string(grown) +
                         " cells (llama.cpp could not allocate the memory while the old ones still held the run's " +
                         "cells); free memory, lower kv_memory or max_new_tokens, or use kv_layout='unified'");
    table_.renumber_ids(static_cast<int>(fit), moves);
    stream_growth_.streams = fit;
    capacity_ = fit * grown;
    ++grows_;
}

void KvScheduler::pause_youngest() {
    const std::vector<int> & in_flight = table_.in_flight();
    for (auto prompt = in_flight.rbegin(); prompt != in_flight.rend(); ++prompt) {
        if (!table_.prompt(*prompt).runs()) continue;
        for (int slot = table_.size() - 1; slot >= 0; --slot)
            if (table_[slot].prompt == *prompt && !table_[slot].paused()) return pause_sequence(slot, SequenceStatus::Paused);
    }
    throw LlamaError("internal error: no running sequence to pause");
}

void KvScheduler::pause_latest() {
    // The latest admitted prompt that still runs gives way, as vLLM preempts its newest request. When
    // it is the only one running, its youngest sequence does (its tree then advances out of lockstep).
    int victim = -1, running_prompts = 0;
    for (int prompt : table_.in_flight()) {
        if (table_.prompt(prompt).runs()) {
            ++running_prompts;
            victim = prompt;
        }
    }
    if (running_prompts > 1) return pause_prompt(victim);
    if (table_.running_count() <= 1)
        throw LlamaError("the KV cache (" + std::to_string(capacity_) + " cells) is too small for one sequence of " +
                         "prompt " + std::to_string(victim) + " to grow; " +
                         (ceiling_lowered_.empty() ? "raise kv_memory (or n_ctx) to at least its prompt + max_new_tokens cells"
                                                   : ceiling_lowered_ + ": free memory or lower max_new_tokens"));
    for (int slot = table_.size() - 1; slot >= 0; --slot) {
        if (table_[slot].prompt == victim && !table_[slot].paused()) return pause_sequence(slot, SequenceStatus::Paused);
    }
}

void KvScheduler::hold_back() {
    if (known_length_ <= 0) return;
    while (!within_budget(projected_peak())) {
        // The youngest that has not started, of a prompt that keeps another sequence (and so its cells) running.
        int victim = -1;
        for (int slot = table_.size() - 1; slot >= 0 && victim < 0; --slot) {
            const PromptState & st = table_.prompt(table_[slot].prompt);
            if (!table_[slot].paused() && table_.unstarted(slot) && st.live - st.paused >= 2 &&
                recompute_from(slot) == table_[slot].n_past)  // a running relative holds all it has
                victim = slot;
        }
        if (victim < 0) return;
        pause_sequence(victim, SequenceStatus::HeldBack);
    }
}

bool KvScheduler::admits_staggered(int64_t prompt_tokens, int samples) const {
    return known_length_ > 0 && table_.running_count() < samples && within_budget(projected_peak(-1, prompt_tokens));
}

int64_t KvScheduler::projected_peak(int extra, int64_t new_prompt) const {
    struct Ahead {
        int64_t steps;  // until it finishes, one cell a step
        int64_t freed;  // its own cells then (past its fork; the prompt's stay with its siblings)
    };
    std::vector<Ahead> ahead;
    for (int slot = 0; slot < table_.size(); ++slot) {
        const LiveSequence & seq = table_[slot];
        if (seq.paused() && slot != extra) continue;
        const int64_t steps = std::max<int64_t>(0, known_length_ - seq.generated);
        ahead.push_back(Ahead{steps, seq.n_past + steps - table_.fork_position(seq.prompt, seq.local)});
    }
    if (new_prompt > 0) ahead.push_back(Ahead{known_length_ - 1, known_length_ - 1});  // after its first token
    std::sort(ahead.begin(), ahead.end(), [](const Ahead & a, const Ahead & b) { return a.steps < b.steps; });
    // Cells in use t steps on: what is held now, t more for each sequence still running, and for each
    // one finished its steps less the cells it freed. The peaks lie where a sequence is about to finish.
    const int64_t held = cells_held() + new_prompt;
    int64_t peak = held, finished_delta = 0;
    size_t done = 0;
    for (const Ahead & next : ahead) {
        while (ahead[done].steps < next.steps) {
            finished_delta += ahead[done].steps - ahead[done].freed;
            ++done;
        }
        peak = std::max(peak, held + finished_delta + static_cast<int64_t>(ahead.size() - done) * next.steps);
    }
    return peak;
}

void KvScheduler::pause_prompt(int prompt) {
    for (int slot = table_.size() - 1; slot >= 0; --slot)
        if (table_[slot].prompt == prompt && !table_[slot].paused()) table_.pause(slot, SequenceStatus::Paused);
    ++preemptions_;
}

void KvScheduler::pause_sequence(int slot, SequenceStatus why) {
    table_.pause(slot, why);
    ++preemptions_;
}

void KvScheduler::resume() {
    if (streams_ && stream_growth_.budget_bytes > 0) return resume_streams();
    for (int prompt : table_.in_flight()) {
        const PromptState & st = table_.prompt(prompt);
        const int paused = st.paused;
        if (paused == 0) continue;
        const int64_t whole = table_.tree_cells(prompt, true) - table_.tree_cells(prompt, false);
        const bool all = fits(whole + paused);
        if (!all && table_.running_count() > 0 && paused == st.live) return;  // wait, keeping admission order
        if (all) reserve_beside(whole + paused);
        // Parents before children (creation order), so a child copies the prefix its parent recomputed.
        // Each sequence's exact need is checked: the projection assumed every shared prefix can be copied.
        for (int slot = 0; slot < table_.size(); ++slot) {
            if (table_[slot].prompt != prompt || !table_[slot].paused()) continue;
            // A sequence held back starts once the projected peak leaves room for it too.
            if (known_length_ > 0 && table_.running_count() > 0 && table_.unstarted(slot) &&
                !within_budget(projected_peak(slot)))
                return;
            const int64_t need = table_[slot].n_past - recompute_from(slot) + 1;
            if (table_.running_count() > 0 && !fits(need)) return;
            reserve_beside(need);
            resume_sequence(slot);
        }
    }
}

void KvScheduler::resume_streams() {
    // Streams that preempt: a paused sequence needs a free id (its stream is as long as any: streams only
    // grow). A prompt paused whole resumes whole, or alone when nothing runs, in admission order.
    for (int prompt : table_.in_flight()) {
        const PromptState & st = table_.prompt(prompt);
        if (st.paused == 0) continue;
        if (st.paused == st.live && table_.running_count() > 0 && table_.free_id_count() < st.paused) return;
        for (int slot = 0; slot < table_.size(); ++slot) {
            if (table_[slot].prompt != prompt || !table_[slot].paused()) continue;
            if (table_.free_id_count() == 0) return;
            resume_sequence(slot);
        }
    }
}

bool KvScheduler::fits(int64_t more) const {
    return within_budget(cells_held() + more + table_.running_count());
}

int64_t KvScheduler::recompute_from(int slot, int * source) const {
    // The longest start any running sequence of the same prompt can lend: the positions where its tokens
    // are the paused sequence's (a parent's up to the fork, a sibling's shared path, at least the prompt);
    // none from a source whose sliding window there is gone (the copy would leave holes in it).
    const std::vector<int32_t> tokens = table_.kv_tokens(slot);
    int64_t best = 0;
    for (int s = 0; s < table_.size(); ++s) {
        const LiveSequence & other = table_[s];
        if (s == slot || other.paused() || other.prompt != table_[slot].prompt) continue;
        const std::vector<int32_t> theirs = table_.kv_tokens(s);
        const auto [mine_end, theirs_end] = std::mismatch(tokens.begin(), tokens.end(), theirs.begin(), theirs.end());
        const int32_t shared = static_cast<int32_t>(mine_end - tokens.begin());
        if (shared <= best || !ops_.copy_is_whole(other.id, shared)) continue;
        best = shared;
        if (source != nullptr) *source = s;
    }
    return best;
}

void KvScheduler::resume_sequence(int slot) {
    table_.take_id(slot);
    int source = -1;
    const int32_t shared = static_cast<int32_t>(recompute_from(slot, &source));
    if (shared > 0) ops_.copy_prefix(table_[source].id, table_[slot].id, shared);
    table_.resume(slot, source, shared);
    ops_.recompute(table_.kv_tokens(slot), static_cast<size_t>(shared), table_[slot].id);
    recomputed_ += table_[slot].n_past - shared;
}

}  // namespace eager
