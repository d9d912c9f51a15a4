// Pure checks and sizing of one engine run, from its config, its jobs and the model's dimensions,
// before any llama.cpp context exists: what is refused, how large the context is, which id the
// prefix anchor may take.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.hpp"
#include "model.hpp"

namespace eager {

constexpr uint32_t kBatchTokens = 512;  // tokens per llama_decode call (prefill chunks; a whole step is one)
constexpr uint32_t kCellPadding = 256;  // llama.cpp pads the KV cache to this many cells
// kv_memory "auto": the cache starts with what the prompts of the first admissions and
// max_live_sequences sequences of kAutoStartTokens tokens (or max_new_tokens, when fewer) need, and
// doubles when the run needs more cells, up to this share of the memory available.
constexpr double kAutoKvShare = 0.25;
constexpr int64_t kAutoStartTokens = 64;
// kv_layout "auto" takes per-sequence streams from this max_new_tokens on. Full Parallel and EAGer-init, 2
// few-shot GSM8K prompts x M 8 (docs/long-generations.md, "Choosing the layout"): streams level with the
// unified cache at 256 tokens a sequence (0.97x, 1.01x), ahead from 512 (1.17x) and more so as sequences grow
// (1.55x at 4096); below 512 a fork's whole-stream copy and the fewer sequences a budget of whole streams
// keeps live cost what per-sequence attention saves.
constexpr int kStreamsPayFromTokens = 512;
// The cells admission, holding back and resumption plan within: a share of the budget is kept free for
// the growth they did not project.
inline double usable_cells(int64_t cells) { constexpr double kKvWatermark = 0.01; return cells * (1.0 - kKvWatermark); }

// Cells rounded up to llama.cpp's padding.
uint32_t round_up_cells(int64_t cells);

// The fewest cells a job needs to start: its prompt, its seeds' longest prefix, one step for each of
// its first sequences.
int64_t min_cells(const EngineConfig & config, const PromptJob & job);
// The most cells a job's start may take: its prompt, every seed's whole prefix (a copied common start
// counted again), one step for each of its first sequences.
int64_t start_cells(const EngineConfig & config, const PromptJob & job);
// The most cells one of a job's sequences may hold: its prompt and max_new_tokens.
int64_t sequence_cells(const EngineConfig & config, const PromptJob & job);

// What the KV budget is measured in: the model's bytes per cell, the memory "auto" may take a share of.
struct KvSizing {
    double bytes_per_cell = 1.0;       // every layer
    double window_bytes_per_cell = 0;  // the sliding-window layers' part of it
    int64_t window_stream_cells = 0;   // the cells the window cache keeps per stream (0: no window)
    int n_swa = 0;                     // the window, in tokens
    int64_t available_bytes = 0;
};

// How per-sequence streams grow: how many there are, and their window cache (0 cells: none). With a byte
// budget (budget_bytes > 0) they may outgrow what it holds for every stream (may_outgrow: planned so; or when
// llama.cpp cannot allocate a growth): the run then keeps fewer, longer streams (KvScheduler::shrink_streams),
// each at most whole_cells.
struct StreamGrowth {
    int64_t streams = 1;
    int64_t window_cells = 0;
    int n_swa = 0;
    double budget_bytes = 0;  // 0: n_ctx or the device path fix the streams at their whole size
    bool may_outgrow = false;  // the budget holds fewer than `streams` streams at whole_cells
    int64_t whole_cells = 0;  // the longest prompt plus max_new_tokens, padded (stream_cells)
    KvSizing kv;
    bool window_cache = false;
};

// How many streams of `cells` cells each the budget of `growth` holds (the most an int64 holds without one).
int64_t streams_within(const StreamGrowth & growth, int64_t cells);

// The cells a stream of `cells` grows to. Doubling; with the window cache, a stream smaller than that cache
// (it is then as large as the stream) goes to its size at once. llama.cpp restores a grown cache from cell 0
// and searches for a token's cell from 0, reusing a window cell whose position left the window: a growth
// where cell 0 is such a cell would put the next token elsewhere than a stream sized for the job does, and
// attention would sum the cells in another order (the kernels' noise, enough to change a sample). Streams
// start below the window or at a multiple of the cache (first_stream_cells) and grow so, which keeps every
// growth at a point where the search from 0 finds the cell the job-sized stream takes.
int64_t grown_stream_cells(int64_t cells, const StreamGrowth & growth);

// Whether the sliding-window layers keep a window cache (EngineConfig::window_cache) rather than every cell.
bool uses_window_cache(const EngineConfig & config);
// The bytes of one stream of `cells` cells.
double stream_bytes(const KvSizing & kv, int64_t cells, bool window_cache);

// The temperature logits are divided by before the top-K entropy: the sampling temperature when
// the entropy is taken after temperature (and sampling is not greedy), else 1 (the raw logits).
float entropy_temperature(const EngineConfig & config);

// Throws InvalidArgument naming what is wrong with the config or a job (and its seeds); n_ctx_train
// bounds the positions a sequence may reach.
void validate_run(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_vocab, int n_ctx_train);

// Throws InvalidArgument, naming the budget, when a job cannot start in a cache of `n_ctx` cells, or when
// one of its sequences could outgrow the `ceiling` the cache may reach (its prompt plus max_new_tokens):
// preemption pauses whole sequences, so a lone sequence that fills the cache could only fail mid-run.
void check_budget(const EngineConfig & config, const std::vector<PromptJob> & jobs, uint32_t n_ctx, int64_t ceiling,
                  const KvSizing & kv);

// Prefix sharing is planned when it is on and there is a later prompt to share with.
bool plans_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs);

// Cells of one stream in the per-sequence layout: the longest prompt plus max_new_tokens, padded.
uint32_t stream_cells(const EngineConfig & config, const std::vector<PromptJob> & jobs);
// Cells a stream starts with: every job's start (its prompt, its longest seed prefix, a step) and
// kAutoStartTokens more, padded; with the window cache, a start that reaches the window is rounded up to a
// multiple of that cache (grown_stream_cells says why); the whole stream_cells when n_ctx fixes the cache, and
// on the device path.
uint32_t first_stream_cells(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv);

// kv_layout "auto" resolved for this run (an explicit layout is kept): per-sequence streams when
// max_new_tokens >= kStreamsPayFromTokens, the device path is off, and the budget (n_ctx, kv_memory, or
// "auto"'s share of the memory available) buys streams at their whole length (longest prompt plus
// max_new_tokens) for every sequence the run keeps live: max_live_sequences, at least one prompt's M, at
// most every job's sequences, and the prefix anchor's stream with share_prompt_prefixes. Streams that outgrow their
// budget preempt by becoming fewer, each as long as the longest sequence, which leaves fewer sequences in flight
// than the unified cache keeps at the same budget; so otherwise
// the unified cache, which preempts within its budget.
KvLayout choose_kv_layout(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv);

// The context the run starts with: every job's ids, and the cells config.n_ctx fixes, or config.kv_memory
// buys, or "auto" starts with (kAutoStartTokens): never sized from M x max_new_tokens. Per-sequence
// streams: as many ids as the budget buys streams of stream_cells, up to max_live_sequences (or one
// prompt's M) and every job's ids, each starting at first_stream_cells; InvalidArgument when that is
// fewer than one prompt's max_sequences.
ContextShape plan_context(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv);

// The most cells the run's cache may grow to: n_ctx and kv_memory fix it at the context's; "auto" at
// kAutoKvShare of the memory available, never below the context's; per-sequence streams at their
// stream_cells each.
int64_t plan_kv_ceiling(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv,
                        const ContextShape & shape);

// How the streams of a per-sequence run grow (`shape` from plan_context): their count and window cache, and,
// their budget, and whether it holds every stream at its whole length (if not, the streams may preempt).
StreamGrowth plan_stream_growth(const EngineConfig & config, const std::vector<PromptJob> & jobs, const KvSizing & kv,
                                const ContextShape & shape);

// Where the anchor lives once the context exists: the last sequence id and the cells of the longest
// prompt, when every job still finds its ids and the cells to start beside it.
struct AnchorPlan {
    int id = -1;             // -1: no sharing in this run
    int64_t reserved = 0;    // cells the anchor may hold
};
AnchorPlan plan_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_seq_max, uint32_t n_ctx,
                       int64_t ceiling);

}  // namespace eager
