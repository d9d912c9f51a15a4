#include "prefill.hpp"

#include <algorithm>

namespace eager {

int32_t Prefill::tokens(const std::vector<int32_t> & tokens, size_t begin, int32_t pos, llama_seq_id id,
                        const char * what) {
    const size_t n = tokens.size();
    int32_t last_row = -1;
    for (size_t at = begin; at < n; at += batch_.capacity()) {
        const size_t end = std::min(n, at + static_cast<size_t>(batch_.capacity()));
        batch_.clear();
        for (size_t i = at; i < end; ++i) last_row = batch_.add(tokens[i], pos + static_cast<int32_t>(i - begin), id, i == n - 1);
        batch_.decode(ctx_.get(), what);
    }
    return last_row;
}

int32_t Prefill::prompt(const std::vector<int32_t> & prompt, llama_seq_id id) {
    llama_context * ctx = ctx_.get();
    const size_t shared = anchor_.shareable(ctx, prompt);
    anchor_.copy_to(ctx, id, shared);
    const int32_t row = tokens(prompt, shared, static_cast<int32_t>(shared), id, "prompt prefill");
    shared_tokens_ += static_cast<int64_t>(shared);
    anchor_.move_to(ctx, id, prompt);
    return row;
}

}  // namespace eager
