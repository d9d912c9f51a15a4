#include "sequence_table.hpp"

#include <algorithm>
#include <utility>

#include "errors.hpp"

namespace eager {

namespace {

size_t find_from(const std::string & text, const std::string & needle, size_t appended_at) {
    const size_t start = appended_at >= needle.size() ? appended_at - needle.size() + 1 : 0;
    return text.find(needle, start);
}

}  // namespace

SequenceTable::SequenceTable(const TokenText & text, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                             RunOutput & out, KvOps & ops, int n_ids, bool ids_follow_running)
    : text_(text), cfg_(config), jobs_(jobs), out_(out), ops_(ops), n_ids_(n_ids), ids_follow_running_(ids_follow_running),
      state_(jobs.size()), scratch_(jobs.size(), 0) {
    for (int id = 0; id < n_ids; ++id) free_ids_.push_back(id);
}

int SequenceTable::paused_count() const {
    int paused = 0;
    for (int prompt : in_flight_) paused += state_[prompt].paused;
    return paused;
}

bool SequenceTable::trees_closed() const {
    return std::none_of(in_flight_.begin(), in_flight_.end(), [&](int i) { return state_[i].branch.open; });
}

std::vector<PromptLoad> SequenceTable::prompt_loads() const {
    std::vector<PromptLoad> loads;
    loads.reserve(in_flight_.size());
    for (int i : in_flight_) scratch_[i] = 0;
    for (const LiveSequence & seq : live_) scratch_[seq.prompt] += seq.generated;
    for (int i : in_flight_) {
        const PromptState & st = state_[i];
        loads.push_back(PromptLoad{jobs_[i].max_sequences, st.n_sequences, st.live, st.branch.open, scratch_[i]});
    }
    return loads;
}

bool SequenceTable::unstarted(int slot) const {
    const LiveSequence & seq = live_[slot];
    return jobs_[seq.prompt].seeds.empty() && result(seq).own_tokens.size() <= 1;
}

int32_t SequenceTable::fork_position(int prompt, int local) const {
    const SequenceResult & r = out_.prompts[prompt].sequences[local];
    return static_cast<int32_t>(jobs_[prompt].tokens.size()) + (r.parent >= 0 ? r.branch_step : 0);
}

void SequenceTable::admit(int prompt) {
    in_flight_.push_back(prompt);
    state_[prompt].status = PromptStatus::Running;
    out_.prompts[prompt].prompt_tokens = static_cast<int>(jobs_[prompt].tokens.size());
}

llama_seq_id SequenceTable::lowest_free_id() {
    if (free_ids_.empty()) throw LlamaError("internal error: no free sequence id");
    // The lowest free id: per-sequence streams decode a step in one micro-batch only where the ids in it run
    // consecutively (llama.cpp's sequential split), so ids are kept as compact as the live sequences allow.
    const auto lowest = std::min_element(free_ids_.begin(), free_ids_.end());
    const llama_seq_id id = *lowest;
    free_ids_.erase(lowest);
    return id;
}

int SequenceTable::create(int prompt, int parent_slot, bool job_root) {
    PromptState & st = state_[prompt];
    PromptResult & pr = out_.prompts[prompt];
    const PromptJob & job = jobs_[prompt];
    LiveSequence seq;
    seq.prompt = prompt;
    seq.local = static_cast<int>(pr.sequences.size());
    // A child or sample born while every id runs (streams fewer than the live sequences) waits without cells,
    // as one held back for room does, and copies its prefix from a running relative when an id frees: memory
    // pressure never denies a branch. A job's roots (its first sequence, tree seeds) are given ids by admission.
    const bool wait_for_id = !job_root && ids_follow_running_ && free_ids_.empty();
    seq.id = wait_for_id ? -1 : lowest_free_id();
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
        if (!wait_for_id) {
            ops_.copy_all(parent.id, seq.id);
            seq.cells = parent.cells;
            seq.cells.push_back(CellRun{next_group_++, parent.n_past});
        }
    }
    pr.sequences.push_back(std::move(result));
    ++st.n_sequences;
    ++st.live;
    live_.push_back(std::move(seq));
    if (wait_for_id) set_status(live_.back(), SequenceStatus::HeldBack);
    out_.stats.max_live_sequences = std::max(out_.stats.max_live_sequences, live_count());
    return static_cast<int>(live_.size()) - 1;
}

int SequenceTable::create_root(int prompt) { return create(prompt, -1, true); }

void SequenceTable::prefilled(int slot) {
    live_[slot].n_past = static_cast<int32_t>(jobs_[live_[slot].prompt].tokens.size());
    own_cells(slot);
}

std::vector<int> SequenceTable::add_samples(int root_slot, int count) {
    std::vector<int> slots;
    for (int k = 0; k < count; ++k) {
        const int slot = create(live_[root_slot].prompt, -1, false);
        // The copy only tags the prompt's cells. A sample born waiting for an id copies them when it resumes.
        if (live_[slot].id >= 0) {
            ops_.copy_all(live_[root_slot].id, live_[slot].id);
            copied_cells(root_slot, slot, live_[root_slot].n_past);
        }
        live_[slot].n_past = live_[root_slot].n_past;
        slots.push_back(slot);
    }
    return slots;
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

bool SequenceTable::marker_in(const std::string & text, size_t appended_at) const {
    return !cfg_.think_end_marker.empty() && find_from(text, cfg_.think_end_marker, appended_at) != std::string::npos;
}

void SequenceTable::start_seed(int slot, const std::vector<int32_t> & prefix) {
    LiveSequence & seq = live_[slot];
    SequenceResult & res = out_.prompts[seq.prompt].sequences[seq.local];
    res.branch_step = static_cast<int>(prefix.size());
    for (int32_t t : prefix) res.text += text_.piece(t);
    seq.generated = static_cast<int>(prefix.size());
    seq.n_past = static_cast<int32_t>(jobs_[seq.prompt].tokens.size()) + seq.generated;
    seq.past_marker = marker_in(res.text, 0);
}

void SequenceTable::take_seed_token(int slot, int32_t token, float entropy) {
    (void) draw(slot);  // the step's draw, as every sequence takes one per step
    LiveSequence & seq = live_[slot];
    out_.prompts[seq.prompt].sequences[seq.local].branch_entropy = entropy;
    if (token < 0) return finish(seq, "unavailable");
    append(slot, token, entropy);
}

void SequenceTable::fed(const std::vector<int> & slots) {
    for (int slot : slots) live_[slot].n_past += 1;
}

void SequenceTable::append(int slot, int32_t token, float entropy) {
    LiveSequence & seq = live_[slot];
    SequenceResult & res = out_.prompts[seq.prompt].sequences[seq.local];
    res.own_tokens.push_back(token);
    if (cfg_.record_entropies) res.entropies.push_back(entropy);
    ++seq.generated;
    ++out_.stats.generated_tokens;
    if (!cfg_.ignore_eos && text_.is_eog(token)) return finish(seq, "eos");
    const size_t appended_at = res.text.size();
    res.text += text_.piece(token);
    if (!seq.past_marker && marker_in(res.text, appended_at)) {
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

int SequenceTable::branch(int slot, float entropy, int32_t parent_token, int32_t child_token) {
    const int child = create(live_[slot].prompt, slot, false);  // may reallocate the table
    const LiveSequence & seq = live_[child];
    out_.prompts[seq.prompt].sequences[seq.local].branch_entropy = entropy;
    append(slot, parent_token, entropy);
    append(child, child_token, entropy);
    return child;
}

void SequenceTable::finish(LiveSequence & seq, const char * reason) {
    out_.prompts[seq.prompt].sequences[seq.local].finish_reason = reason;
    set_status(seq, SequenceStatus::Finished);
}

void SequenceTable::set_status(LiveSequence & seq, SequenceStatus status) {
    PromptState & st = state_[seq.prompt];
    st.paused -= seq.paused() ? 1 : 0;
    seq.status = status;
    st.paused += seq.paused() ? 1 : 0;
}

SequenceTable::Released SequenceTable::release_finished() {
    Released out;
    size_t kept = 0;
    for (size_t i = 0; i < live_.size(); ++i) {
        LiveSequence & seq = live_[i];
        if (!seq.finished()) {
            if (kept != i) live_[kept] = std::move(seq);
            ++kept;
            continue;
        }
        // Freed cells return to the pool once no sequence holds them; the id is reused. (A child that ended at
        // its birth while waiting for an id has neither.)
        if (seq.id >= 0) {
            ops_.remove(seq.id);
            free_ids_.push_back(seq.id);
        }
        out.lengths.push_back(seq.generated);
        PromptState & st = state_[seq.prompt];
        if (--st.live == 0) {
            st.status = PromptStatus::Done;
            out.prompts_done.push_back(seq.prompt);
        }
    }
    live_.resize(kept);
    for (int prompt : out.prompts_done) {
        in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), prompt));
        ++done_;
    }
    return out;
}

int SequenceTable::compact_ids() {
    int moved = 0;
    while (!free_ids_.empty() && !live_.empty()) {
        const auto lowest = std::min_element(free_ids_.begin(), free_ids_.end());
        const auto top = std::max_element(live_.begin(), live_.end(),
                                          [](const LiveSequence & a, const LiveSequence & b) { return a.id < b.id; });
        if (top->id < *lowest) break;
        ops_.copy_all(top->id, *lowest);
        ops_.remove(top->id);
        std::swap(top->id, *lowest);
        ++moved;
    }
    return moved;
}

int64_t SequenceTable::cells_held() const {
    // Each group's cells run from its begin to the furthest any running holder reaches. Called every
    // step: only the running sequences' few runs are visited.
    std::vector<std::pair<int64_t, int32_t>> reach;  // (group, cells a holder reaches into it)
    int64_t total = 0;
    for (const LiveSequence & seq : live_) {
        if (seq.paused()) continue;
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

int64_t SequenceTable::tree_cells(int prompt, bool with_paused) const {
    // Walk the tree from the youngest sequence up: a sequence holds its own cells up to its position if
    // it runs, and its parent's from the parent's fork up to where it forked.
    const auto & seqs = out_.prompts[prompt].sequences;
    std::vector<int32_t> held(seqs.size(), 0);
    for (const LiveSequence & seq : live_) {
        if (!with_paused && seq.paused()) continue;
        if (seq.prompt == prompt) held[seq.local] = seq.n_past;
    }
    int64_t total = 0;
    bool any = false;
    for (int local = static_cast<int>(seqs.size()) - 1; local >= 0; --local) {
        if (held[local] == 0) continue;
        any = true;
        const int32_t fork = fork_position(prompt, local);
        total += std::max<int32_t>(0, held[local] - fork);
        if (seqs[local].parent >= 0) held[seqs[local].parent] = std::max(held[seqs[local].parent], fork);
    }
    if (any) total += static_cast<int64_t>(jobs_[prompt].tokens.size());
    return total;
}

void SequenceTable::pause(int slot, SequenceStatus why) {
    LiveSequence & seq = live_[slot];
    if (seq.id >= 0) ops_.remove(seq.id);
    if (ids_follow_running_ && seq.id >= 0) {
        free_ids_.push_back(seq.id);
        seq.id = -1;
    }
    seq.cells.clear();
    set_status(seq, why);
}

void SequenceTable::take_id(int slot) {
    if (live_[slot].id < 0) live_[slot].id = lowest_free_id();
}

void SequenceTable::renumber_ids(int n_ids, const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves) {
    std::vector<bool> used(n_ids, false);
    for (LiveSequence & seq : live_) {
        if (seq.id < 0) continue;
        const auto move = std::find_if(moves.begin(), moves.end(), [&](const auto & m) { return m.first == seq.id; });
        if (move == moves.end() || move->second >= n_ids)
            throw LlamaError("internal error: sequence id " + std::to_string(seq.id) + " has no stream after the reshape");
        seq.id = move->second;
        used[seq.id] = true;
    }
    n_ids_ = n_ids;
    free_ids_.clear();
    for (int id = 0; id < n_ids; ++id)
        if (!used[id]) free_ids_.push_back(id);
}

void SequenceTable::resume(int slot, int source_slot, int32_t shared) {
    if (shared > 0) {
        copied_cells(source_slot, slot, shared);
    } else {
        own_cells(slot);
    }
    set_status(live_[slot], SequenceStatus::Running);
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
