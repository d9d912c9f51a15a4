// Prompt-prefix sharing: an anchor sequence keeps the KV cells of the last admitted prompt's start,
// and a prompt that starts the same way (a few-shot header) copies that part by sequence copy
// instead of prefilling it again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "llama.h"

namespace eager {

// A prompt shares a multiple of this many tokens with the anchor: its own prefill then starts on the
// same row alignment (within a micro-batch) as a fresh one, so shared and fresh cells agree as far
// as llama.cpp's kernels let them. It also skips sharing too short to pay for the copy.
constexpr size_t kShareGranularity = 64;

class PrefixAnchor {
public:
    // id: the anchor's sequence id, -1 when the run shares nothing; n_swa: the model's sliding window.
    PrefixAnchor(llama_seq_id id, int n_swa) : id_(id), n_swa_(n_swa) {}

    bool active() const { return id_ >= 0; }

    // How many of `tokens`' first tokens the anchor's cells can give (whole blocks; the last token is
    // always decoded, since its logits start the prompt's sequences; none when a sliding window would
    // be left with holes: kv_copy.hpp).
    size_t shareable(llama_context * ctx, const std::vector<int32_t> & tokens) const;

    // Copies the first `n` cells to sequence `id` (n from shareable()).
    void copy_to(llama_context * ctx, llama_seq_id id, size_t n) const;

    // The anchor moves to the prompt just prefilled into `from`: the cells only the old anchor held
    // are freed. It keeps only what a later prompt could copy (whole blocks before the last token), so
    // a prompt shorter than a block leaves no cells behind and the next one lays out its cells as alone.
    void move_to(llama_context * ctx, llama_seq_id from, const std::vector<int32_t> & tokens);

private:
    llama_seq_id id_;
    int n_swa_;
    std::vector<int32_t> tokens_;
    size_t held_ = 0;  // how many of tokens_ it holds cells for
};

}  // namespace eager
