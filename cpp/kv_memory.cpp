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
                   RunStats & stats, int64_t anchor_cells)
    : model_(model), ctx_(model.context()), table_(table), prefill_(prefill), stats_(stats),
      capacity_(cells), ceiling_(std::max(cells, ceiling)), anchor_cells_(anchor_cells),
      n_swa_(llama_model_n_swa(model.model())) {
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
