#include "kv_memory.hpp"

#include <algorithm>
#include <fstream>
#include <string>

#include "errors.hpp"
#include "ggml-backend.h"
#include "kv_copy.hpp"
#include "llama.h"
#include "model.hpp"
#include "run_plan.hpp"

namespace eager {

namespace {

int64_t ram_available_bytes() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    int64_t kib = 0;
    std::string unit;
    while (meminfo >> key >> kib >> unit)
        if (key == "MemAvailable:") return kib * 1024;
    return 4LL * 1024 * 1024 * 1024;  // no /proc: assume a small machine
}

int64_t meta_int(const Model & model, const std::string & key, int64_t fallback) {
    const std::string v = model.meta(key);
    if (v.empty()) return fallback;
    try {
        return std::stoll(v);
    } catch (...) {
        return fallback;
    }
}

}  // namespace

int64_t available_memory_bytes(const Model & model) {
    // Offloaded layers keep their KV cache on the device: the free memory of the first GPU counts.
    if (model.offloaded()) {
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_GPU) continue;
            size_t free = 0, total = 0;
            ggml_backend_dev_memory(dev, &free, &total);
            return static_cast<int64_t>(free);
        }
    }
    return ram_available_bytes();
}

double kv_bytes_per_cell(const Model & model) {
    const llama_model * m = model.model();
    const std::string arch = model.meta("general.architecture");
    const int64_t head_dim = llama_model_n_embd(m) / std::max(1, llama_model_n_head(m));
    const int64_t k = meta_int(model, arch + ".attention.key_length", head_dim);
    const int64_t v = meta_int(model, arch + ".attention.value_length", head_dim);
    return 2.0 * llama_model_n_layer(m) * llama_model_n_head_kv(m) * static_cast<double>(k + v);
}

KvMemory::KvMemory(Model & model, int64_t cells, int64_t ceiling, SequenceTable & table, Prefill & prefill,
                   RunStats & stats, int64_t anchor_cells, int known_length)
    : model_(model), ctx_(model.context()), table_(table), prefill_(prefill), stats_(stats),
      capacity_(cells), ceiling_(std::max(cells, ceiling)), anchor_cells_(anchor_cells),
      n_swa_(llama_model_n_swa(model.model())), known_length_(known_length) {
    stats_.kv_cells = capacity_;
}

bool KvMemory::reserve(int64_t cells) {
    if (cells <= capacity_) return true;
    if (cells > ceiling_) return false;
    // Doubling keeps the copies few (each moves only the cells in use); the capacity, not the size of
    // a context reused from an earlier run, decides, so a run grows at the same steps either way.
    capacity_ = std::min<int64_t>(ceiling_, round_up_cells(std::max(2 * capacity_, cells)));
    model_.grow_context(static_cast<uint32_t>(capacity_));
    stats_.kv_cells = capacity_;
    ++stats_.kv_grows;
    return true;
}

bool KvMemory::reserve_beside(const std::vector<int> & in_flight, int64_t more) {
    return reserve(std::min(ceiling_, cells_held(in_flight) + more + table_.running_count()));
}

int64_t KvMemory::cells_held(const std::vector<int> & in_flight) const {
    return table_.cells_held(in_flight) + anchor_cells_;
}

int64_t KvMemory::make_room(const std::vector<int> & in_flight) {
    hold_back(in_flight);
    for (;;) {
        const int64_t after_step = cells_held(in_flight) + table_.running_count();
        if (reserve(after_step)) return after_step;
        preempt(in_flight);
    }
}

void KvMemory::preempt(const std::vector<int> & in_flight) {
    // A cache that may still grow grows instead (llama.cpp found no slot where the count saw room).
    if (reserve(capacity_ + 1)) return;
    // The latest admitted prompt that still runs gives way, as vLLM preempts its newest request. When
    // it is the only one running, its youngest sequence does (its tree then advances out of lockstep).
    int victim = -1, running_prompts = 0;
    for (int prompt : in_flight) {
        const PromptState & st = table_.prompt(prompt);
        if (st.live > st.paused) {
            ++running_prompts;
            victim = prompt;
        }
    }
    if (running_prompts > 1) return pause_prompt(victim);
    if (table_.running_count() <= 1)
        throw LlamaError("the KV cache (" + std::to_string(capacity_) + " cells) is too small for one sequence of " +
                         "prompt " + std::to_string(victim) + " to grow; raise kv_memory (or n_ctx) to at least its " +
                         "prompt + max_new_tokens cells");
    for (int slot = table_.size() - 1; slot >= 0; --slot) {
        if (table_[slot].prompt == victim && !table_[slot].paused) return pause_sequence(slot);
    }
}

bool KvMemory::unstarted(int slot) const {
    // No step has decoded a token of its own yet (its first one is pending): its cells are the prompt's, or
    // its parent's up to the fork.
    const LiveSequence & seq = table_[slot];
    return table_.job(seq.prompt).seeds.empty() && table_.result(seq).own_tokens.size() <= 1;
}

void KvMemory::hold_back(const std::vector<int> & in_flight) {
    if (known_length_ <= 0) return;
    const double budget = ceiling_ * (1.0 - kKvWatermark);
    while (projected_peak(in_flight) > budget) {
        // The youngest that has not started, of a prompt that keeps another sequence (and so its cells) running.
        int victim = -1;
        for (int slot = table_.size() - 1; slot >= 0 && victim < 0; --slot) {
            const PromptState & st = table_.prompt(table_[slot].prompt);
            if (!table_[slot].paused && unstarted(slot) && st.live - st.paused >= 2 &&
                recompute_from(slot) == table_[slot].n_past)  // a running relative holds all it has
                victim = slot;
        }
        if (victim < 0) return;
        pause_sequence(victim);
    }
}

bool KvMemory::admits_staggered(const std::vector<int> & in_flight, int64_t prompt_tokens, int samples) const {
    return known_length_ > 0 && table_.running_count() < samples &&
           projected_peak(in_flight, -1, prompt_tokens) <= ceiling_ * (1.0 - kKvWatermark);
}

int64_t KvMemory::projected_peak(const std::vector<int> & in_flight, int extra, int64_t new_prompt) const {
    struct Ahead {
        int64_t steps;  // until it finishes, one cell a step
        int64_t freed;  // its own cells then (past its fork; the prompt's stay with its siblings)
    };
    std::vector<Ahead> ahead;
    for (int slot = 0; slot < table_.size(); ++slot) {
        const LiveSequence & seq = table_[slot];
        if (seq.paused && slot != extra) continue;
        const SequenceResult & r = table_.result(seq);
        const int64_t steps = std::max<int64_t>(0, known_length_ - seq.generated);
        const int64_t fork = static_cast<int64_t>(table_.job(seq.prompt).tokens.size()) + (r.parent >= 0 ? r.branch_step : 0);
        ahead.push_back(Ahead{steps, seq.n_past + steps - fork});
    }
    if (new_prompt > 0) ahead.push_back(Ahead{known_length_ - 1, known_length_ - 1});  // after its first token
    std::sort(ahead.begin(), ahead.end(), [](const Ahead & a, const Ahead & b) { return a.steps < b.steps; });
    // Cells in use t steps on: what is held now, t more for each sequence still running, and for each
    // one finished its steps less the cells it freed. The peaks lie where a sequence is about to finish.
    const int64_t held = cells_held(in_flight) + new_prompt;
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

void KvMemory::pause_prompt(int prompt) {
    if (table_.prompt(prompt).paused == 0) ++paused_prompts_;
    for (int slot = table_.size() - 1; slot >= 0; --slot)
        if (table_[slot].prompt == prompt && !table_[slot].paused) table_.pause(slot);
    ++stats_.preemptions;
}

void KvMemory::pause_sequence(int slot) {
    const PromptState & st = table_.prompt(table_[slot].prompt);
    if (st.paused == 0) ++paused_prompts_;
    table_.pause(slot);
    ++stats_.preemptions;
}

void KvMemory::resume(const std::vector<int> & in_flight) {
    for (int prompt : in_flight) {
        const PromptState & st = table_.prompt(prompt);
        if (st.paused == 0) continue;
        const int64_t whole = table_.tree_cells({prompt}, true) - table_.tree_cells({prompt}, false);
        const bool all = fits(in_flight, whole + st.paused);
        if (!all && table_.running_count() > 0 && st.paused == st.live) return;  // wait, keeping admission order
        if (all) reserve_beside(in_flight, whole + st.paused);
        // Parents before children (creation order), so a child copies the prefix its parent recomputed.
        // Each sequence's exact need is checked: the projection assumed every shared prefix can be copied.
        for (int slot = 0; slot < table_.size(); ++slot) {
            if (table_[slot].prompt != prompt || !table_[slot].paused) continue;
            // A sequence held back starts once the projected peak leaves room for it too.
            if (known_length_ > 0 && table_.running_count() > 0 && unstarted(slot) &&
                projected_peak(in_flight, slot) > ceiling_ * (1.0 - kKvWatermark))
                return;
            const int64_t need = table_[slot].n_past - recompute_from(slot) + 1;
            if (table_.running_count() > 0 && !fits(in_flight, need)) return;
            reserve_beside(in_flight, need);
            resume_sequence(slot);
        }
        --paused_prompts_;
    }
}

bool KvMemory::fits(const std::vector<int> & in_flight, int64_t more) const {
    return cells_held(in_flight) + more + table_.running_count() <= ceiling_ * (1.0 - kKvWatermark);
}

int64_t KvMemory::recompute_from(int slot, int * source) const {
    // The longest start any running sequence of the same prompt can lend: the positions where its tokens
    // are the paused sequence's (a parent's up to the fork, a sibling's shared path, at least the prompt);
    // none from a source whose sliding window there is gone (the copy would leave holes in it).
    const std::vector<int32_t> tokens = table_.kv_tokens(slot);
    int64_t best = 0;
    for (int s = 0; s < table_.size(); ++s) {
        const LiveSequence & other = table_[s];
        if (s == slot || other.paused || other.prompt != table_[slot].prompt) continue;
        const std::vector<int32_t> theirs = table_.kv_tokens(s);
        const auto [mine_end, theirs_end] = std::mismatch(tokens.begin(), tokens.end(), theirs.begin(), theirs.end());
        const int32_t shared = static_cast<int32_t>(mine_end - tokens.begin());
        if (shared <= best || !copy_is_whole(ctx_.memory(), other.id, shared, n_swa_)) continue;
        best = shared;
        if (source != nullptr) *source = s;
    }
    return best;
}

void KvMemory::resume_sequence(int slot) {
    int source = -1;
    const int64_t shared = recompute_from(slot, &source);
    if (shared > 0) {
        copy_prefix(ctx_.get(), table_[source].id, table_[slot].id, static_cast<llama_pos>(shared));
        table_.copied_cells(source, slot, static_cast<int32_t>(shared));
    } else {
        table_.own_cells(slot);
    }
    LiveSequence & seq = table_[slot];
    const std::vector<int32_t> tokens = table_.kv_tokens(slot);
    prefill_.tokens(tokens, static_cast<size_t>(shared), static_cast<int32_t>(shared), seq.id,
                    "recomputing a preempted sequence");
    stats_.recomputed_tokens += seq.n_past - shared;
    table_.unpause(slot);
}

}  // namespace eager
