// The batched decode loop: a table of live sequences over many prompts, one llama_decode per
// step, forks by KV sequence copy, branching on top-K entropy (EAGer-init) or M independent
// samples per prompt (Full Parallel).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model.hpp"
#include "row_kernel.hpp"

namespace eager {

// llama.cpp's sequence-id limit (LLAMA_MAX_SEQ): one engine run holds at most this many sequences.
constexpr int kMaxSequenceIds = 256;

enum class Method { Parallel, EagerInit };
enum class ThresholdMode { Fixed, P99 };
// How llama.cpp lays out the KV cache. Unified: one pool of cells that every sequence takes from, a
// fork tags its parent's cells (no copy), memory follows what the run holds, but every token's
// attention spans the cells of all live sequences. PerSequence: a stream of cells for each sequence id
// (kv_unified=false), each token attends over its own sequence only, a fork copies the parent's whole
// stream. Streams start short and grow together (doubling) as the longest sequence needs, up to the
// longest prompt plus max_new_tokens; the budget decides how many streams (sequence ids) the run gets
// at that length rather than how many cells they share. Auto: per-sequence streams where they are measured
// to pay (generations of kStreamsPayFromTokens or more) and the budget holds every stream the run keeps live
// at its whole length (so a stream never runs short), else unified (choose_kv_layout, run_plan.hpp).
enum class KvLayout { Unified, PerSequence, Auto };
// The sliding-window layers' cache (Gemma 3 and other models with llama.cpp's n_swa). Full: every cell,
// as the full layers keep (llama.cpp's swa_full). Window: about n_swa cells per stream, reused once they
// leave the window (copies then check kv_copy.hpp's rule and prefill what is gone). Auto: the window
// cache on per-sequence streams, where no cell is shared; every cell on the unified cache, where a long
// prompt that a tree or the prefix anchor shares would pin the window cache's cells and find no slot.
enum class WindowCache { Auto, Full, Window };
// What a row's branch is checked against the cap M. Prompt (eager_cpp's rule): the prompt's sequences
// now, so any row may branch until the prompt has M. Row (the authors' reference code): the row at
// position i among its prompt's rows of the step (by sequence index) may branch only if the sequences
// the prompt had when the step began plus i are fewer than M, a test on the row's position: once more
// than M/2 sequences are live, only the first rows may branch (docs/method.md, "Reference rules").
enum class CapRule { Prompt, Row };

struct EngineConfig {
    Method method = Method::EagerInit;
    int max_new_tokens = 512;
    uint64_t seed = 0;
    SamplingParams sampling;
    int entropy_k = 20;
    bool entropy_after_temperature = false;
    bool record_entropies = true;
    std::vector<std::string> stop;
    std::string think_end_marker = "</think>";  // empty: a sequence may branch anywhere
    int no_branch_window = 1000;
    ThresholdMode threshold_mode = ThresholdMode::Fixed;
    CapRule cap_rule = CapRule::Prompt;
    int max_live_sequences = 32;  // admission stops here: past ~32, a unified KV cache slows every token
    bool ignore_eos = false;      // for benchmarks that need a fixed length
    int n_threads = 0;            // 0 = all cores
    uint32_t n_ctx = 0;           // KV cells; 0: from kv_memory
    // Bytes the KV cache may take (kv_scheduler.hpp); 0: "auto", a share of the memory available, no more
    // than the run's live sequences need at a bounded length. A full cache preempts, never denies a branch.
    int64_t kv_memory = 0;
    // Select the top candidates and the entropy in the model's compute graph (device_topk.hpp)
    // instead of scanning each full logits row on the host; meant for a GPU-offloaded model.
    bool device_topk = false;
    int device_candidates = 1024;  // C: the tokens per row that leave the device
    // Record every generation step (StepTrace); with LLAMA_KV_CACHE_DEBUG=1 set before the context
    // was created, also the KV span each step attended over (kv_trace.hpp). A measuring mode.
    bool trace_steps = false;
    // Record every row's candidates as the row kernel computed them (RowTrace): what a test checks each
    // branch and each sampled token against exactly. A measuring mode.
    bool trace_rows = false;
    // Prompts that start like the one admitted before them (few-shot headers) copy that part of
    // its KV cells (seq copy from an anchor sequence) instead of prefilling it again. Off by default, as
    // in RunOptions: the copied cells differ from a fresh prefill by llama.cpp's batch noise.
    bool share_prompt_prefixes = false;
    WindowCache window_cache = WindowCache::Auto;
    KvLayout kv_layout = KvLayout::Auto;
};

// A sequence that continues an earlier tree of the prompt at one of its branch points: it starts
// from the tokens the tree generated before the point (prefilled, not generated: reprocessed) and
// takes as its first own token the `rank`-th most likely token not in `exclude` (those already
// taken there), then continues as EAGer-init.
struct BranchSeed {
    std::vector<int32_t> prefix;   // generated tokens before the point (the prompt not included)
    std::vector<int32_t> exclude;  // tokens the tree already took at the point
    int rank = 1;                  // 1: the most likely token not excluded
};

struct PromptJob {
    std::vector<int32_t> tokens;  // the tokenized prompt (BOS included when the model wants one)
    int max_sequences = 8;        // M for this prompt
    float theta = 2.0f;           // entropy threshold
    uint64_t stream_id = 0;       // the prompt's index for the random streams
    int sequence_index_base = 0;  // first sequence index of the streams (later rounds continue)
    // Non-empty: the job's first sequences are these (in order) instead of one root; EAGer-init only.
    // Prefixes that share a start are prefilled once and forked by KV sequence copy.
    std::vector<BranchSeed> seeds;
};

struct SequenceResult {
    std::vector<int32_t> own_tokens;  // tokens this sequence generated itself
    std::vector<float> entropies;     // top-K entropy of each own step (empty when not recorded)
    int parent = -1;                  // index of the parent within the prompt, -1 for roots
    int branch_step = 0;              // number of tokens inherited from the parent
    float branch_entropy = 0.0f;      // entropy at the branch step (children only)
    std::string text;                 // generated bytes, inherited part included, stop string excluded
    std::string finish_reason;        // "eos" | "stop" | "length"
    int marker_step = -1;             // index of the token that completed the end-of-thinking marker
};

struct PromptResult {
    std::vector<SequenceResult> sequences;  // in creation order: roots first, children as born
    int prompt_tokens = 0;
    int steps = 0;  // decode steps the prompt was live for
};

// One row of a step as the row kernel saw it: the sequence (prompt, index in its result), the position
// of the token it chose (its generated tokens before it), and the kernel's candidates.
struct RowTrace {
    int32_t prompt = 0;
    int32_t sequence = 0;
    int32_t position = 0;
    float entropy = 0;
    int32_t top1 = -1;
    int32_t top2 = -1;
    int32_t sampled = -1;
    double draw = 0;  // the sequence's uniform draw of the step: where its random stream stood
};

struct StepTrace {
    int32_t tokens = 0;            // live sequences decoded (one token each)
    int32_t prompts = 0;           // prompts in flight
    float decode_ms = 0;           // llama_decode of the step
    int32_t kv_span = -1;          // cells every token attended over (up to the highest in use), -1: not traced
    int32_t kv_used = -1;          // cells in use
    int32_t kv_span_swa = -1;      // the same for a separate sliding-window cache
    int32_t kv_used_swa = -1;
    int32_t kv_held = 0;           // cells in use as the engine counts them (its budget's measure), anchor included
};

struct RunStats {
    double prefill_seconds = 0;
    double decode_seconds = 0;       // inside llama_decode for generation steps
    double row_kernel_seconds = 0;   // entropy + top-2 + sampling over all rows
    double bookkeeping_seconds = 0;  // branching, stops, batch building
    int64_t steps = 0;
    int64_t generated_tokens = 0;
    int64_t prompt_tokens = 0;
    int64_t shared_prompt_tokens = 0;  // prompt tokens not prefilled: copied from an earlier prompt's cells
    int64_t reprocessed_tokens = 0;  // seed prefixes decoded again (their shared parts once)
    int max_live_sequences = 0;
    int64_t kv_cells = 0;            // the KV cells the run could use at its end (what kv_memory bought, or "auto" grew to)
    int64_t kv_grows = 0;            // times kv_memory "auto" doubled the cache because the run needed more cells
    int64_t peak_kv_cells = 0;       // the most cells the sequences held at once (the anchor's included)
    int64_t preemptions = 0;         // prompts (or, in the only prompt running, sequences) paused for memory,
                                     // and samples held back before they started (lengths known; recompute nothing)
    int64_t recomputed_tokens = 0;   // tokens prefilled again when paused sequences resumed (not #T)
    std::string kv_ceiling_lowered;  // why the cache stopped growing below its budget ("" when it did not)
    std::string kv_layout;           // the layout the run used: "unified" or "per_sequence" (what "auto" chose)
    // Device path only: the largest probability mass (at the sampling temperature) of one row
    // that lay outside its C candidates, which sampling therefore never saw.
    double device_dropped_mass_max = 0;
    std::vector<StepTrace> step_trace;  // EngineConfig::trace_steps only
    std::vector<RowTrace> row_trace;    // EngineConfig::trace_rows only
};

struct Progress {
    int prompts_done = 0;
    int prompts_total = 0;
    int live_sequences = 0;
    int64_t generated_tokens = 0;
    double elapsed_seconds = 0;
};

// Called between steps; returning false stops the run (it then throws Interrupted).
using ProgressFn = std::function<bool(const Progress &)>;

struct RunOutput {
    std::vector<PromptResult> prompts;
    RunStats stats;
};

RunOutput generate(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                   const ProgressFn & on_progress);

}  // namespace eager
