#include "sequence_table.hpp"

#include <algorithm>
#include <utility>

#include "errors.hpp"
#include "model.hpp"

namespace eager {

namespace {

size_t find_from(const std::string & text, const std::string & needle, size_t appended_at) {
    const size_t start = appended_at >= needle.size() ? appended_at - needle.size() + 1 : 0;
    return text.find(needle, start);
}

}  // namespace

SequenceTable::SequenceTable(const Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                             RunOutput & out, ContextHandle ctx, int n_ids)
    : model_(model), cfg_(config), jobs_(jobs), out_(out), ctx_(ctx), state_(jobs.size()) {
    for (int id = 0; id < n_ids; ++id) free_ids_.push_back(id);
}

int SequenceTable::create(int prompt, int parent_slot) {
    if (free_ids_.empty()) throw LlamaError("internal error: no free sequence id");
    PromptState & st = state_[prompt];
    PromptResult & pr = out_.prompts[prompt];
    const PromptJob & job = jobs_[prompt];
    LiveSequence seq;
    seq.prompt = prompt;
    seq.local = static_cast<int>(pr.sequences.size());
    // The lowest free id: per-sequence streams decode a step in one micro-batch only where the ids in it run
    // consecutively (llama.cpp's sequential split), so ids are kept as compact as the live sequences allow.
    const auto lowest = std::min_element(free_ids_.begin(), free_ids_.end());
    seq.id = *lowest;
    free_ids_.erase(lowest);
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
        llama_memory_seq_cp(ctx_.memory(), parent.id, seq.id, -1, -1);
        seq.cells = parent.cells;
        seq.cells.push_back(CellRun{next_group_++, parent.n_past});
    }
    pr.sequences.push_back(std::move(result));
    ++st.n_sequences;
    ++st.live;
    ++live_count_;
    live_.push_back(std::move(seq));
    out_.stats.max_live_sequences = std::max(out_.stats.max_live_sequences, live_count_);
    return static_cast<int>(live_.size()) - 1;
}

void SequenceTable::share_cells(int from_slot, int to_slot) {
    llama_memory_seq_cp(ctx_.memory(), live_[from_slot].id, live_[to_slot].id, -1, -1);
    copied_cells(from_slot, to_slot, live_[from_slot].n_past);
}

void SequenceTable::own_cells(int slot) {
    live_[slot].cells.assign(1, CellRun{next_group_++, 0});
}

void SequenceTable::copied_cells(int from_slot, int to_slot, int32_t len) {
    std::vector<CellRun> runs;
    for (const CellRun & run : live_[from_slot].cells)
        if (run.begin < len) runs.push_back(run);
    runs.push_back(CellRun{next_group_++, len});
    live_[to_slot].cells = std::move(runs);
}

void SequenceTable::append(LiveSequence & seq, int32_t token, float entropy) {
    SequenceResult & res = result(seq);
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

void SequenceTable::finish(LiveSequence & seq, const char * reason) {
    result(seq).finish_reason = reason;
    seq.finished = true;
}

SequenceTable::Released SequenceTable::release_finished() {
    Released out;
    size_t kept = 0;
    for (size_t i = 0; i < live_.size(); ++i) {
        LiveSequence & seq = live_[i];
        if (!seq.finished) {
            if (kept != i) live_[kept] = std::move(seq);
            ++kept;
            continue;
        }
        // Freed cells return to the pool once no sequence holds them; the id is reused.
        llama_memory_seq_rm(ctx_.memory(), seq.id, -1, -1);
        free_ids_.push_back(seq.id);
        --live_count_;
        out.lengths.push_back(seq.generated);
        PromptState & st = state_[seq.prompt];
        if (--st.live == 0) {
            st.status = PromptStatus::Done;
            out.prompts_done.push_back(seq.prompt);
        }
    }
    live_.resize(kept);
    return out;
}

int SequenceTable::compact_ids() {
    int moved = 0;
    while (!free_ids_.empty() && !live_.empty()) {
        const auto lowest = std::min_element(free_ids_.begin(), free_ids_.end());
        const auto top = std::max_element(live_.begin(), live_.end(),
                                          [](const LiveSequence & a, const LiveSequence & b) { return a.id < b.id; });
        if (top->id < *lowest) break;
        llama_memory_seq_cp(ctx_.memory(), top->id, *lowest, -1, -1);
        llama_memory_seq_rm(ctx_.memory(), top->id, -1, -1);
        std::swap(top->id, *lowest);
        ++moved;
    }
    return moved;
}

int32_t SequenceTable::fork_position(int prompt, int local) const {
    const SequenceResult & r = out_.prompts[prompt].sequences[local];
    return static_cast<int32_t>(jobs_[prompt].tokens.size()) + (r.parent >= 0 ? r.branch_step : 0);
}

int64_t SequenceTable::cells_held(const std::vector<int> & prompts) const {
    // Each group's cells run from its begin to the furthest any running holder reaches. Called every
    // step: only the running sequences' few runs are visited.
    std::vector<std::pair<int64_t, int32_t>> reach;  // (group, cells a holder reaches into it)
    int64_t total = 0;
    for (const LiveSequence & seq : live_) {
        if (seq.paused || std::find(prompts.begin(), prompts.end(), seq.prompt) == prompts.end()) continue;
        for (size_t r = 0; r < seq.cells.size(); ++r) {
            const int32_t end = r + 1 < seq.cells.size() ? seq.cells[r + 1].begin : seq.n_past;
            if (end > seq.cells[r].begin) reach.emplace_back(seq.cells[r].group, end - seq.cells[r].begin);
        }
    }
    std::sort(reach.begin(), reach.end());
    for (size_t i = 0; i < reach.size(); ++i)
        if (i + 1 == reach.size() || reach[i + 1].first != reach[i].first) total += reach[i].second;  // the longest
    return total;
}

int64_t SequenceTable::tree_cells(const std::vector<int> & prompts, bool with_paused) const {
    // Walk each prompt's tree from the youngest sequence up: a sequence holds its own cells up to its
    // position if it runs, and its parent's from the parent's fork up to where it forked.
    std::vector<std::vector<int32_t>> held(prompts.size());
    for (size_t k = 0; k < prompts.size(); ++k) held[k].assign(out_.prompts[prompts[k]].sequences.size(), 0);
    for (const LiveSequence & seq : live_) {
        if (!with_paused && seq.paused) continue;
        const auto at = std::find(prompts.begin(), prompts.end(), seq.prompt);
        if (at != prompts.end()) held[at - prompts.begin()][seq.local] = seq.n_past;
    }
    int64_t total = 0;
    for (size_t k = 0; k < prompts.size(); ++k) {
        const int prompt = prompts[k];
        const auto & seqs = out_.prompts[prompt].sequences;
        bool any = false;
        for (int local = static_cast<int>(seqs.size()) - 1; local >= 0; --local) {
            if (held[k][local] == 0) continue;
            any = true;
            const int32_t fork = fork_position(prompt, local);
            total += std::max<int32_t>(0, held[k][local] - fork);
            if (seqs[local].parent >= 0) held[k][seqs[local].parent] = std::max(held[k][seqs[local].parent], fork);
        }
        if (any) total += static_cast<int64_t>(jobs_[prompt].tokens.size());
    }
    return total;
}

void SequenceTable::pause(int slot) {
    LiveSequence & seq = live_[slot];
    llama_memory_seq_rm(ctx_.memory(), seq.id, -1, -1);
    seq.cells.clear();
    seq.paused = true;
    ++state_[seq.prompt].paused;
    ++paused_count_;
}

void SequenceTable::unpause(int slot) {
    LiveSequence & seq = live_[slot];
    seq.paused = false;
    --state_[seq.prompt].paused;
    --paused_count_;
}

std::vector<int32_t> SequenceTable::generated_tokens(int prompt, int local) const {
    const SequenceResult & r = out_.prompts[prompt].sequences[local];
    std::vector<int32_t> tokens;
    if (r.parent >= 0) {
        tokens = generated_tokens(prompt, r.parent);
        tokens.resize(r.branch_step);
    } else if (local < static_cast<int>(jobs_[prompt].seeds.size())) {
        tokens = jobs_[prompt].seeds[local].prefix;
    }
    tokens.insert(tokens.end(), r.own_tokens.begin(), r.own_tokens.end());
    return tokens;
}

std::vector<int32_t> SequenceTable::kv_tokens(int slot) const {
    const LiveSequence & seq = live_[slot];
    std::vector<int32_t> tokens = jobs_[seq.prompt].tokens;
    const std::vector<int32_t> generated = generated_tokens(seq.prompt, seq.local);
    tokens.insert(tokens.end(), generated.begin(), generated.end());
    tokens.resize(seq.n_past);  // the pending token is fed by the next step
    return tokens;
}

}  // namespace eager
