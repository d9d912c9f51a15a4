// The KV cache as a memory budget. With a byte budget (EngineConfig::kv_memory) or n_ctx the context
// is created once with the cells it buys; with "auto" it starts small and doubles when the run needs
// more cells, up to a share of the memory available (Model::grow_context moves the cells over), so
// memory follows what the run holds, never M x max_new_tokens.
// The cells the run's trees hold are counted from the sequence table; when the next step would not
// fit, the latest admitted prompt is preempted: its sequences are paused and their cells freed, and
// later recomputed (the prompt and each sequence's tokens prefilled again, a shared tree prefix copied
// from a running relative) with the same random streams, so the samples stay what they were up to
// llama.cpp's batch noise. Memory pressure pauses and recomputes; it never denies a branch.
#pragma once

#include <cstdint>
#include <vector>

#include "context_handle.hpp"
#include "engine.hpp"
#include "prefill.hpp"
#include "sequence_table.hpp"

namespace eager {

class Model;

// Memory a KV cache may take: RAM available (MemAvailable) on the CPU, the device's free memory when
// layers are offloaded.
int64_t available_memory_bytes(const Model & model);

// Bytes one KV cell takes (f16 keys and values of every layer).
double kv_bytes_per_cell(const Model & model);

class KvMemory {
public:
    // cells: the cells the run starts with (the context may be larger when reused); ceiling: the most
    // it may grow to (its budget; = cells when fixed); anchor_cells: the prefix anchor's; known_length:
    // every sequence's length when it is certain (max_new_tokens when EOS is ignored and nothing stops a
    // sequence), else 0.
    KvMemory(Model & model, int64_t cells, int64_t ceiling, SequenceTable & table, Prefill & prefill,
             RunStats & stats, int64_t anchor_cells, int known_length);

    int64_t capacity() const { return capacity_; }
    int64_t ceiling() const { return ceiling_; }
    // Grows the cache (doubling, up to the ceiling) until it has `cells`; false when the ceiling is lower.
    bool reserve(int64_t cells);
    // reserve() for `more` cells beside what the prompts in flight hold and one step of every running
    // sequence, or as many as the ceiling allows.
    bool reserve_beside(const std::vector<int> & in_flight, int64_t more);
    // Cells the sequences of the prompts in flight hold, and the anchor's.
    int64_t cells_held(const std::vector<int> & in_flight) const;
    bool any_paused() const { return paused_prompts_ > 0; }
    // Whether a prompt of `prompt_tokens` with up to `samples` sequences may start beside
    // the running sequences with one of them, the others held back: when lengths are known, the budget keeps
    // fewer sequences running than the prompt has samples, and the projected peak leaves room for its prompt
    // and one sequence. (Beyond that, on the unified cache, more sequences in flight make every token dearer.)
    bool admits_staggered(const std::vector<int> & in_flight, int64_t prompt_tokens, int samples) const;

    // Pauses sequences until a step of one token for each running sequence fits: the latest admitted
    // prompt's first; within the only prompt still running, its youngest sequence first. Before that,
    // when lengths are known, holds back sequences that have not started (see hold_back). Returns the
    // cells held after the step.
    int64_t make_room(const std::vector<int> & in_flight);
    // A decode found no free cell: pause once more (throws when only one sequence runs).
    void preempt(const std::vector<int> & in_flight);
    // Resumes paused prompts in admission order: a whole prompt when its tree fits beside what runs
    // (so its sequences stay in lockstep), and when nothing runs, as many of its sequences as fit (at
    // least one; the only prompt then advances part of its tree at a time).
    void resume(const std::vector<int> & in_flight);

private:
    // Sequences that started together all grow at once and would fill the cache together, deep into their
    // lengths, where pausing one means recomputing it. When every length is known, sequences that have not
    // started (a Full Parallel sample still at its prompt, whose cells a running sibling holds) wait while
    // the cells the running ones will reach before they finish exceed the budget: pausing them costs
    // nothing, and they start as the others' projected peak leaves room, so lengths stagger. An EAGer
    // child just born is held back the same way while its parent holds the prefix it would copy.
    void hold_back(const std::vector<int> & in_flight);
    bool unstarted(int slot) const;
    // The most cells the running sequences (and `extra`, a paused one, as if it ran; and a new prompt's
    // cells and first sequence, when `new_prompt` tokens) will hold before they finish at the known
    // length, each freeing its own cells as it ends.
    int64_t projected_peak(const std::vector<int> & in_flight, int extra = -1, int64_t new_prompt = 0) const;
    void pause_prompt(int prompt);
    void pause_sequence(int slot);
    bool fits(const std::vector<int> & in_flight, int64_t more) const;
    void resume_sequence(int slot);
    // Cells a paused sequence can copy from a running relative (and that relative's slot, when `source`).
    int64_t recompute_from(int slot, int * source = nullptr) const;

    Model & model_;
    ContextHandle ctx_;
    SequenceTable & table_;
    Prefill & prefill_;
    RunStats & stats_;
    int64_t capacity_;
    int64_t ceiling_;
    int64_t anchor_cells_;
    int n_swa_;
    int known_length_;
    int paused_prompts_ = 0;
};

}  // namespace eager
