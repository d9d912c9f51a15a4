// The live sequences of a run and each prompt's state: forking a sequence (a KV sequence copy of its
// parent), appending a token (with the stop strings, the end-of-thinking marker and the length cap),
// and releasing finished sequences' ids and cells.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "branch_policy.hpp"
#include "context_handle.hpp"
#include "engine.hpp"
#include "llama.h"
#include "rng.hpp"

namespace eager {

class Model;

// Where a sequence's KV cells came from: from `begin` on (up to the next run's begin, or n_past) they
// are the cells of `group`, one stretch of decoded positions that every sequence copying it shares. A
// prompt prefill, a sequence's own decoding from its fork and a recompute each start a group; a copy
// of [0, len) takes the source's runs up to len. So the cells in use are each group's longest holder.
struct CellRun {
    int64_t group = 0;
    int32_t begin = 0;
};

struct LiveSequence {
    int prompt = 0;       // index into the jobs
    int local = 0;        // index within the prompt's result
    llama_seq_id id = 0;  // KV sequence id
    int32_t n_past = 0;   // position of the next token fed
    int generated = 0;    // length of token_ids (inherited + own)
    int32_t pending = -1; // token to feed at the next step
    bool past_marker = false;
    bool finished = false;
    bool paused = false;  // preempted: holds no cells of its own until recomputed (kv_memory.hpp)
    std::vector<CellRun> cells;  // empty while paused
    Rng rng;
};

enum class PromptStatus { Waiting, Running, Done };

struct PromptState {
    PromptStatus status = PromptStatus::Waiting;
    int n_sequences = 0;  // finished and live, its root(s) included
    int live = 0;         // not finished: running or paused
    int paused = 0;
    int64_t counted_step = -1;  // the last engine step that counted this prompt's step
    BranchState branch;
};

class SequenceTable {
public:
    SequenceTable(const Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                  RunOutput & out, ContextHandle ctx, int n_ids);

    int size() const { return static_cast<int>(live_.size()); }
    int live_count() const { return live_count_; }  // running and paused
    int running_count() const { return live_count_ - paused_count_; }
    LiveSequence & operator[](int slot) { return live_[slot]; }
    const LiveSequence & operator[](int slot) const { return live_[slot]; }
    PromptState & prompt(int i) { return state_[i]; }
    const PromptState & prompt(int i) const { return state_[i]; }
    SequenceResult & result(const LiveSequence & seq) { return out_.prompts[seq.prompt].sequences[seq.local]; }
    const PromptJob & job(int prompt) const { return jobs_[prompt]; }

    // A new sequence of `prompt` with a free id and its own random stream; a child of the sequence
    // in `parent_slot` (>= 0) shares its whole prefix by KV sequence copy. Returns its slot (the
    // table may grow, so earlier references into it are invalid).
    int create(int prompt, int parent_slot);
    // Tags `to`'s id on every cell `from` holds (sequences that start from the same prompt).
    void share_cells(int from_slot, int to_slot);
    // Records where a sequence's cells come from (see CellRun): all decoded for it, or [0, len) copied
    // from the sequence in `from_slot` and its own from len on.
    void own_cells(int slot);
    void copied_cells(int from_slot, int to_slot, int32_t len);

    // Appends a generated token; finishes the sequence on EOS, a stop string or the length cap.
    void append(LiveSequence & seq, int32_t token, float entropy);
    void finish(LiveSequence & seq, const char * reason);

    // Frees the ids and cells of finished sequences: the prompts whose last sequence finished, and
    // the lengths (tokens generated, inherited ones included) of the sequences that finished.
    struct Released {
        std::vector<int> prompts_done;
        std::vector<int> lengths;
    };
    Released release_finished();
    // Per-sequence streams: moves the live sequences with the highest ids into the lowest free ids below
    // them (a whole-stream copy each, applied by the next decode), so a step's ids run consecutively and
    // llama.cpp decodes it in one micro-batch instead of one per run of ids. Returns the sequences moved.
    int compact_ids();

    // Cells the running sequences of `prompts` hold, each counted once however many sequences share it
    // (a finished parent's cells count while a running child holds them): exact, from the cell runs.
    int64_t cells_held(const std::vector<int> & prompts) const;
    // What their trees would hold with every shared prefix shared once; with_paused: as if the paused
    // ones ran too. The projection of what resuming a paused prompt takes (a recompute that cannot copy
    // a prefix takes more: the exact need is checked sequence by sequence).
    int64_t tree_cells(const std::vector<int> & prompts, bool with_paused) const;
    // A paused sequence frees the cells only it holds; it keeps its id, its tokens and its stream.
    void pause(int slot);
    void unpause(int slot);
    // The tokens at positions [0, n_past) of a sequence: its prompt, then every token it generated
    // (inherited ones included) but the pending one.
    std::vector<int32_t> kv_tokens(int slot) const;

private:
    std::vector<int32_t> generated_tokens(int prompt, int local) const;
    int32_t fork_position(int prompt, int local) const;

    const Model & model_;
    const EngineConfig & cfg_;
    const std::vector<PromptJob> & jobs_;
    RunOutput & out_;
    ContextHandle ctx_;
    std::vector<LiveSequence> live_;  // in creation order, which fixes the order children are numbered
    std::vector<llama_seq_id> free_ids_;
    std::vector<PromptState> state_;
    int64_t next_group_ = 0;
    int live_count_ = 0;
    int paused_count_ = 0;
};

}  // namespace eager
