// Prompts and tree prefixes into the KV cache, in chunks of the batch's capacity. A prompt's start
// shared with the prompt admitted before it comes from the prefix anchor by sequence copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "batch.hpp"
#include "context_handle.hpp"
#include "engine.hpp"
#include "prefix_anchor.hpp"

namespace eager {

class Prefill {
public:
    Prefill(ContextHandle ctx, Batch & batch, PrefixAnchor anchor)
        : ctx_(ctx), batch_(batch), anchor_(std::move(anchor)) {}

    // tokens[begin..] at positions pos.. of sequence `id`, logits for the last one; returns its output row.
    int32_t tokens(const std::vector<int32_t> & tokens, size_t begin, int32_t pos, llama_seq_id id, const char * what);

    // A prompt's tokens into sequence `id` (the part shared with the anchor copied, not decoded, and
    // counted in shared_tokens()); returns the output row of its last token.
    int32_t prompt(const std::vector<int32_t> & prompt, llama_seq_id id);

    // Prompt tokens copied from the anchor so far instead of prefilled.
    int64_t shared_tokens() const { return shared_tokens_; }

private:
    ContextHandle ctx_;
    Batch & batch_;
    PrefixAnchor anchor_;
    int64_t shared_tokens_ = 0;
};

}  // namespace eager
