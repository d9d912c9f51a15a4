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
    // it may grow to (its budget; = cells when fixed); anchor_cells: the prefix anchor's.
    KvMemory(Model & model, int64_t cells, int64_t ceiling, SequenceTable & table, Prefill & prefill,
             RunStats & stats, int64_t anchor_cells);

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

    // Pauses sequences until a step of one token for each running sequence fits: the latest admitted
    // prompt's first; within the only prompt still running, its youngest sequence first. Returns the
    // cells held after the step.
    int64_t make_room(const std::vector<int> & in_flight);
    // A decode found no free cell: pause once more (throws when only one sequence runs).
    void preempt(const std::vector<int> & in_flight);
    // Resumes paused prompts in admission order: a whole prompt when its tree fits beside what runs
    // (so its sequences stay in lockstep), and when nothing runs, as many of its sequences as fit (at
    // least one; the only prompt then advances part of its tree at a time).
    void resume(const std::vector<int> & in_flight);

private:
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
    int paused_prompts_ = 0;
};

}  // namespace eager
