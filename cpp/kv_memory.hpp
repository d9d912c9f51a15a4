// The KV cache as a memory budget. The context is created once with the cells a byte budget buys
// (EngineConfig::kv_memory, or a share of the memory available), never sized from M x max_new_tokens.
// The cells the run's trees hold are counted from the sequence table; when the next step would not
// fit, the latest admitted prompt is preempted: its sequences are paused and their cells freed, and
// later recomputed (the prompt and each sequence's tokens prefilled again, a shared tree prefix copied
// from a running relative) with the same random streams, so the samples stay what they were up to
// llama.cpp's batch noise. Memory pressure pauses and recomputes; it never denies a branch.
#pragma once

#include <cstdint>
#include <vector>

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
    // cells: the run's budget (the context may be larger when reused); anchor_cells: the prefix anchor's.
    KvMemory(llama_context * ctx, int64_t cells, SequenceTable & table, Prefill & prefill, RunStats & stats,
             int64_t anchor_cells);

    int64_t capacity() const { return capacity_; }
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
    // Cells a paused sequence can copy from a running relative (and from which, when `source`).
    int64_t recompute_from(int slot, llama_seq_id * source = nullptr) const;

    llama_context * ctx_;
    llama_memory_t mem_;
    SequenceTable & table_;
    Prefill & prefill_;
    RunStats & stats_;
    int64_t capacity_;
    int64_t anchor_cells_;
    int n_swa_;
    int paused_prompts_ = 0;
};

}  // namespace eager
