// Pure checks and sizing of one engine run, from its config, its jobs and the model's dimensions,
// before any llama.cpp context exists: what is refused, how large the context is, which id the
// prefix anchor may take.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.hpp"
#include "model.hpp"

struct llama_model;

namespace eager {

constexpr uint32_t kBatchTokens = 512;  // tokens per llama_decode call (prefill chunks; a whole step is one)
constexpr uint32_t kCellPadding = 256;  // llama.cpp pads the KV cache to this many cells
// Automatic sizing keeps the KV cache under this many bytes unless a single prompt needs more.
constexpr double kAutoKvBudgetBytes = 4.0 * 1024 * 1024 * 1024;

// Cells rounded up to llama.cpp's padding.
uint32_t round_up_cells(int64_t cells);

// Worst-case KV cells of a prompt: its tokens plus M full-length continuations.
int64_t worst_case_cells(const PromptJob & job, int max_new_tokens);

// The temperature logits are divided by before the top-K entropy: the sampling temperature when
// the entropy is taken after temperature (and sampling is not greedy), else 1 (the raw logits).
float entropy_temperature(const EngineConfig & config);

// Bytes one KV cell takes over all layers (f16 keys and values), for sizing within a memory budget.
double kv_bytes_per_cell(const llama_model * model);

// Throws InvalidArgument naming what is wrong with the config or a job (and its seeds).
void validate_run(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_vocab);

// Prefix sharing is planned when it is on and there is a later prompt to share with.
bool plans_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs);

// The context the run asks for: every job's ids, and cells for the prompts admission could hold
// at once within kAutoKvBudgetBytes (or config.n_ctx when set), plus the anchor's cells.
ContextShape plan_context(const EngineConfig & config, const std::vector<PromptJob> & jobs, double bytes_per_cell);

// Where the anchor lives once the context exists: the last sequence id and the cells of the longest
// prompt, when every job still finds its ids and worst-case cells beside it.
struct AnchorPlan {
    int id = -1;             // -1: no sharing in this run
    int64_t reserved = 0;    // cells the anchor may hold
};
AnchorPlan plan_anchor(const EngineConfig & config, const std::vector<PromptJob> & jobs, int n_seq_max, uint32_t n_ctx);

}  // namespace eager
