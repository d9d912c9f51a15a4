// Log-likelihoods of continuations given contexts, from the model's logits: what an evaluation harness
// asks for multiple-choice tasks and perplexity (lm-eval's loglikelihood and loglikelihood_rolling).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "model.hpp"

namespace eager {

// A continuation scored after its context.
struct ContinuationScore {
    double logprob = 0.0;  // sum over the continuation's tokens of log softmax(logits)[token]
    bool greedy = true;    // every continuation token is the argmax of its row (a tie counts as the argmax)
};

// Requests per llama_decode group and the tokens a group holds: the KV cache of a group is this many
// cells (or the longest request, when longer), and every token of a group attends over them (masked).
constexpr int kScoreGroupSequences = 64;
constexpr int64_t kScoreGroupTokens = 4096;
// Logits rows one llama_decode call returns: each is n_vocab floats (1 MiB for a 262k vocabulary).
constexpr int32_t kScoreRowsPerDecode = 128;

// Scores each (context, continuation) pair: context + continuation is decoded as one sequence (requests
// packed side by side under distinct sequence ids, a few llama_decode calls per group), and the rows that
// predict the continuation's tokens are read. Each token of a request sees only its own sequence's cells,
// so a score does not depend on the requests beside it beyond llama.cpp's floating-point batch noise.
// InvalidArgument on an empty context or continuation (an empty context is scored after the BOS token:
// pass it), a token outside the vocabulary, or a request longer than the model's training context.
std::vector<ContinuationScore> score_continuations(
    Model & model, const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> & requests,
    int n_threads);

}  // namespace eager
