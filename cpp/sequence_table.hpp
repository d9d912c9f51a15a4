// The owner of a run's lifecycle: the live sequences and each prompt's state, with a status each that
// the loop and the parts read and only this table's methods change. Forking a sequence (a KV sequence
// copy of its parent), appending a token (with the stop strings, the end-of-thinking marker and the
// length cap), pausing and resuming, and releasing finished sequences' ids and cells all go through it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "admission.hpp"
#include "branch_policy.hpp"
#include "engine.hpp"
#include "kv_ops.hpp"
#include "llama.h"
#include "rng.hpp"

namespace eager {

// What the table asks of the vocabulary when a token is appended (the model's; a stand-in in tests).
class TokenText {
public:
    virtual ~TokenText() = default;
    virtual bool is_eog(int32_t token) const = 0;
    virtual std::string piece(int32_t token) const = 0;  // raw bytes, may be a partial UTF-8 sequence
};

// Where a sequence's KV cells came from: from `begin` on (up to the next run's begin, or n_past) they
// are the cells of `group`, one stretch of decoded positions that every sequence copying it shares. A
// prompt prefill, a sequence's own decoding from its fork and a recompute each start a group; a copy
// of [0, len) takes the source's runs up to len. So the cells in use are each group's longest holder.
struct CellRun {
    int64_t group = 0;
    int32_t begin = 0;
};

enum class SequenceStatus {
    Running,   // decodes one token every step
    HeldBack,  // has not started (its first own token pending) and waits for room; holds no cells of its own
    Paused,    // preempted: its own cells freed until it is recomputed (kv_scheduler.hpp)
    Finished,  // EOS, a stop string or the cap; its id and cells are released at the end of the step
};

enum class PromptStatus { Waiting, Running, Done };

struct LiveSequence {
    int prompt = 0;       // index into the jobs
    int local = 0;        // index within the prompt's result
    llama_seq_id id = 0;  // KV sequence id
    int32_t n_past = 0;   // position of the next token fed
    int generated = 0;    // length of token_ids (inherited + own)
    int32_t pending = -1; // token to feed at the next step
    bool past_marker = false;
    SequenceStatus status = SequenceStatus::Running;
    std::vector<CellRun> cells;  // empty while held back or paused
    Rng rng;

    bool paused() const { return status == SequenceStatus::HeldBack || status == SequenceStatus::Paused; }
    bool finished() const { return status == SequenceStatus::Finished; }
};

struct PromptState {
    PromptStatus status = PromptStatus::Waiting;
    int n_sequences = 0;  // finished and live, its root(s) included
    int live = 0;         // in the table: not released yet
    int paused = 0;       // held back or paused: follows the statuses of its sequences
    BranchState branch;

    bool runs() const { return live > paused; }
};

class SequenceTable {
public:
    // n_ids: the sequence ids the table may give (those below it). ids_follow_running: a paused sequence gives
    // its id back and takes a free one when it resumes, and a child born when no id is free waits, held back,
    // for one (per-sequence streams, whose count may fall below the live sequences: KvScheduler::shrink_streams).
    SequenceTable(const TokenText & text, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                  RunOutput & out, KvOps & ops, int n_ids, bool ids_follow_running = false);

    // --- reading ---
    int size() const { return static_cast<int>(live_.size()); }
    int live_count() const { return size(); }  // running, held back, paused, and finished until released
    int paused_count() const;
    int running_count() const { return live_count() - paused_count(); }
    int id_count() const { return n_ids_; }  // the ids below which the table gives ids
    int free_id_count() const { return static_cast<int>(free_ids_.size()); }
    const LiveSequence & operator[](int slot) const { return live_[slot]; }
    const PromptState & prompt(int i) const { return state_[i]; }
    const SequenceResult & result(const LiveSequence & seq) const { return out_.prompts[seq.prompt].sequences[seq.local]; }
    const PromptJob & job(int prompt) const { return jobs_[prompt]; }
    size_t prompt_count() const { return jobs_.size(); }
    // Admitted prompts not done, in admission order.
    const std::vector<int> & in_flight() const { return in_flight_; }
    int done_count() const { return done_; }
    bool all_done() const { return done_ == static_cast<int>(jobs_.size()); }
    // Whether every prompt in flight has closed for branching (its tree will grow no more).
    bool trees_closed() const;
    // The prompts in flight as admission sees them.
    std::vector<PromptLoad> prompt_loads() const;
    // No step has decoded a token of its own yet (its first one is pending): its cells are the prompt's,
    // or its parent's up to the fork.
    bool unstarted(int slot) const;
    // Where a sequence's own cells begin: after its prompt, and after the branch step for a child.
    int32_t fork_position(int prompt, int local) const;

    // --- a prompt's start ---
    void admit(int prompt);
    // A new root sequence of `prompt` (a free id, its own random stream); returns its slot.
    int create_root(int prompt);
    // The root's prompt is in its cells now (n_past = the prompt's tokens, all decoded for it).
    void prefilled(int slot);
    // Full Parallel: `count` more sequences of the root's prompt, sharing its prompt cells; their slots.
    std::vector<int> add_samples(int root_slot, int count);
    // Tree seeds: the cells a seed's sequence holds, all decoded for it or [0, len) copied from another
    // seed's (the copy itself is the caller's), then its inherited prefix.
    void own_cells(int slot);
    void copied_cells(int from_slot, int to_slot, int32_t len);
    void start_seed(int slot, const std::vector<int32_t> & prefix);
    // A seed's forced first token (token < 0: none available, the sequence ends "unavailable").
    void take_seed_token(int slot, int32_t token, float entropy);

    // --- a step ---
    // The step's random draw of a sequence: one per sequence per step, used or not.
    double draw(int slot) { return live_[slot].rng.uniform(); }
    // The pending tokens of these slots were decoded: each moves one position on.
    void fed(const std::vector<int> & slots);
    // Appends a generated token; finishes the sequence on EOS, a stop string or the length cap.
    void append(int slot, int32_t token, float entropy);
    // The sequence branches: a child (sharing its whole prefix by KV sequence copy) continues with
    // `child_token`, the parent with `parent_token`. Returns the child's slot.
    int branch(int slot, float entropy, int32_t parent_token, int32_t child_token);
    BranchState & branch_state(int prompt) { return state_[prompt].branch; }

    // Frees the ids and cells of finished sequences; a prompt whose last sequence finished is done.
    // Returns the prompts done and the lengths (tokens generated, inherited ones included) of the
    // sequences that finished.
    struct Released {
        std::vector<int> prompts_done;
        std::vector<int> lengths;
    };
    Released release_finished();
    // Per-sequence streams: moves the live sequences with the highest ids into the lowest free ids below
    // them (a whole-stream copy each, applied by the next decode), so a step's ids run consecutively and
    // llama.cpp decodes it in one micro-batch instead of one per run of ids. Returns the sequences moved.
    int compact_ids();

    // --- the KV cache as a budget (kv_scheduler.hpp decides, the table keeps the state) ---
    // Cells the running sequences hold, each counted once however many sequences share it (a finished
    // parent's cells count while a running child holds them): exact, from the cell runs.
    int64_t cells_held() const;
    // What a prompt's tree would hold with every shared prefix shared once; with_paused: as if the paused
    // ones ran too. The projection of what resuming a paused prompt takes (a recompute that cannot copy
    // a prefix takes more: the exact need is checked sequence by sequence).
    int64_t tree_cells(int prompt, bool with_paused) const;
    // A paused or held-back sequence frees the cells only it holds; it keeps its tokens and random stream,
    // and its id unless ids follow the running sequences.
    void pause(int slot, SequenceStatus why);
    // Before a paused sequence resumes: it takes the lowest free id if it gave its own back.
    void take_id(int slot);
    // It runs again, its cells [0, shared) copied from the sequence in `source_slot` (-1: none) and the
    // rest recomputed (the copy and the recompute are the caller's).
    void resume(int slot, int source_slot, int32_t shared);
    // The ids are now those below n_ids, each sequence in `moves` renumbered from first to second (the
    // streams moved with them: KvOps::reshape_streams); every other id is free.
    void renumber_ids(int n_ids, const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves);
    // The tokens at positions [0, n_past) of a sequence: its prompt, then every token it generated
    // (inherited ones included) but the pending one.
    std::vector<int32_t> kv_tokens(int slot) const;

private:
    int create(int prompt, int parent_slot, bool job_root);
    llama_seq_id lowest_free_id();
    void finish(LiveSequence & seq, const char * reason);
    void set_status(LiveSequence & seq, SequenceStatus status);
    // Whether the text grown from `appended_at` on completes the end-of-thinking marker.
    bool marker_in(const std::string & text, size_t appended_at) const;
    std::vector<int32_t> generated_tokens(int prompt, int local) const;

    const TokenText & text_;
    const EngineConfig & cfg_;
    const std::vector<PromptJob> & jobs_;
    RunOutput & out_;
    KvOps & ops_;
    std::vector<LiveSequence> live_;  // in creation order, which fixes the order children are numbered
    std::vector<llama_seq_id> free_ids_;
    int n_ids_;
    bool ids_follow_running_;
    std::vector<PromptState> state_;
    std::vector<int> in_flight_;
    mutable std::vector<int64_t> scratch_;  // per prompt, for prompt_loads()
    int done_ = 0;
    int64_t next_group_ = 0;
};

}  // namespace eager
