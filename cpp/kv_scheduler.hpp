// The KV cache as a memory budget, scheduled in one place: which prompt may start, which sequences wait
// (held back), which give way (paused) and come back (resumed), and how far the cache grows, the way
// vLLM's scheduler asks its KV-cache manager for slots and itself decides what to preempt. It reads
// and changes the run's state only through the sequence table, and asks the cache for its operations
// through KvOps, so it is tested on a synthetic table without a model (`_core.policies.KvHarness`).
//
// With a byte budget (EngineConfig::kv_memory) or n_ctx the cache has a fixed size; with "auto" it
// starts small and doubles when the run needs more cells, up to a share of the memory available, so
// memory follows what the run holds, never M x max_new_tokens. When the next step would not fit, the
// latest admitted prompt is preempted: its sequences are paused and their cells freed, and later
// recomputed (the prompt and each sequence's tokens prefilled again, a shared tree prefix copied from a
// running relative) with the same random streams, so the samples stay what they were up to llama.cpp's
// batch noise. Memory pressure pauses and recomputes; it never denies a branch. Per-sequence streams
// start short and double together when a sequence fills its stream, up to the longest sequence's length;
// when the budget (or the memory) cannot hold every stream at the next size, the run keeps fewer, longer
// streams: the latest admitted prompt is paused, the running sequences move into the lowest streams, and
// paused sequences wait for a free stream (shrink_streams).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "admission.hpp"
#include "engine.hpp"
#include "kv_ops.hpp"
#include "run_plan.hpp"
#include "sequence_table.hpp"

namespace eager {

// The cells admission projects trees against. Per-sequence streams are each sized for a whole
// sequence, so there the sequence ids (one stream each) bound admission, never a count of cells.
int64_t admission_cells(const EngineConfig & config, int64_t ceiling);

// Every sequence's length when it is certain (max_new_tokens when EOS is ignored and nothing else
// stops a sequence, on the unified cache: streams preempt only when they outgrow their budget), else 0.
int known_length(const EngineConfig & config);

class KvScheduler {
public:
    // cells: the cells the run starts with (the context may be larger when reused); ceiling: the most
    // it may grow to (its budget; = cells when fixed); anchor_cells: the prefix anchor's.
    // streams: how per-sequence streams grow (their count and window cache), on that layout.
    KvScheduler(const EngineConfig & config, SequenceTable & table, KvOps & ops, int64_t cells, int64_t ceiling,
                int64_t anchor_cells, const StreamGrowth & streams = StreamGrowth{});

    // --- what the engine asks ---
    // Before each step: paused prompts resume (resume()), then waiting prompts start in job order while
    // they may (try_admit()), each started by `start` before the next is considered.
    void schedule(Admission & admission, const std::function<void(int)> & start);
    // Resumes paused prompts in admission order: a whole prompt when its tree fits beside what runs
    // (so its sequences stay in lockstep), and when nothing runs, as many of its sequences as fit (at
    // least one; the only prompt then advances part of its tree at a time).
    void resume();
    // Whether `prompt` may start now: nothing paused waits before it, and `admission` lets it start beside
    // the cells held (staggered: see admits_staggered). If so it is admitted in the table and `admission`,
    // and a growing cache makes room for its start.
    bool try_admit(int prompt, Admission & admission);
    // One step of one token for every running sequence: room is made (make_room), then `decode` tried;
    // when llama.cpp finds no cell anyway, one more preemption, and again. Returns the cells held after
    // the step.
    int64_t step(const std::function<bool()> & decode);

    // --- the decisions, each on its own ---
    // Grows the cache (doubling, up to the ceiling) until it has `cells`; false when the ceiling is lower, or
    // when the memory for the larger cache is not there (the ceiling is then lowered to the cells it has).
    bool reserve(int64_t cells);
    // Pauses sequences until a step of one token for each running sequence fits: the latest admitted
    // prompt's first; within the only prompt still running, its youngest sequence first. Before that,
    // when lengths are known, holds back sequences that have not started (hold_back). Returns the
    // cells held after the step.
    int64_t make_room();
    // A decode found no free cell: grow, or pause once more (throws when only one sequence runs).
    void preempt();
    // Whether a prompt of `prompt_tokens` with up to `samples` sequences may start beside the running
    // sequences with one of them, the others held back: when lengths are known, the budget keeps fewer
    // sequences running than the prompt has samples, and the projected peak leaves room for its prompt
    // and one sequence. (Beyond that, on the unified cache, more sequences in flight make every token dearer.)
    bool admits_staggered(int64_t prompt_tokens, int samples) const;

    // Cells the sequences of the prompts in flight hold, and the anchor's.
    int64_t cells_held() const;

    // --- what it did (the engine reports them in RunStats) ---
    int64_t capacity() const { return capacity_; }
    int admitted_count() const { return next_job_; }
    int64_t streams() const { return stream_growth_.streams; }  // per-sequence streams now
    int64_t grows() const { return grows_; }
    int64_t peak_cells() const { return peak_; }
    int64_t preemptions() const { return preemptions_; }
    int64_t recomputed_tokens() const { return recomputed_; }
    // Why the ceiling was lowered below the budget during the run ("" when it was not).
    const std::string & ceiling_lowered() const { return ceiling_lowered_; }
    // All of them, as the run's statistics report them.
    struct Counts {
        int64_t capacity, grows, peak_cells, preemptions, recomputed_tokens;
        std::string ceiling_lowered;
    };
    Counts counts() const { return Counts{capacity_, grows_, peak_, preemptions_, recomputed_, ceiling_lowered_}; }

private:
    // Sequences that started together all grow at once and would fill the cache together, deep into their
    // lengths, where pausing one means recomputing it. When every length is known, sequences that have not
    // started (a Full Parallel sample still at its prompt, whose cells a running sibling holds) wait while
    // the cells the running ones will reach before they finish exceed the budget: holding them back costs
    // nothing, and they start as the others' projected peak leaves room, so lengths stagger. An EAGer
    // child just born is held back the same way while its parent holds the prefix it would copy.
    void hold_back();
    // The most cells the running sequences (and `extra`, a paused one, as if it ran; and a new prompt's
    // cells and first sequence, when `new_prompt` tokens) will hold before they finish at the known
    // length, each freeing its own cells as it ends.
    int64_t projected_peak(int extra = -1, int64_t new_prompt = 0) const;
    // Whether `cells` stay within the budget, less the share kept free for growth no projection saw.
    bool within_budget(double cells) const;
    // Whether `more` cells fit beside what is held and one step of every running sequence.
    bool fits(int64_t more) const;
    // reserve() for `more` cells beside what is held and one step of every running sequence, or as many
    // as the ceiling allows.
    bool reserve_beside(int64_t more);
    // Pauses the latest admitted prompt that runs; when only one runs, its youngest sequence (throws when
    // only one sequence runs).
    void pause_latest();
    // Pauses the youngest running sequence of the latest admitted prompt that runs.
    void pause_youngest();
    // Per-sequence streams that outgrow their budget: fewer, longer streams (see the .cpp).
    void shrink_streams();
    // resume() where a paused sequence waits for an id, not for cells.
    void resume_streams();
    void pause_prompt(int prompt);
    void pause_sequence(int slot, SequenceStatus why);
    void resume_sequence(int slot);
    // Cells a paused sequence can copy from a running relative (and that relative's slot, when `source`).
    int64_t recompute_from(int slot, int * source = nullptr) const;

    const EngineConfig & cfg_;
    SequenceTable & table_;
    KvOps & ops_;
    int64_t capacity_;
    int64_t ceiling_;
    int64_t anchor_cells_;
    int known_length_;
    // Per-sequence streams: each sequence's length, not the cells all hold, decides when the cache grows.
    bool streams_;
    StreamGrowth stream_growth_;
    int next_job_ = 0;  // the first prompt not admitted yet
    int64_t grows_ = 0;
    int64_t peak_ = 0;
    int64_t preemptions_ = 0;
    int64_t recomputed_ = 0;
    std::string ceiling_lowered_;
};

}  // namespace eager
