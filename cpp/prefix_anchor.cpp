#include "prefix_anchor.hpp"

#include <algorithm>

#include "kv_copy.hpp"

namespace eager {

size_t PrefixAnchor::shareable(llama_context * ctx, const std::vector<int32_t> & tokens) const {
    if (!active() || tokens_.empty()) return 0;
    const auto mismatch = std::mismatch(tokens_.begin(), tokens_.end(), tokens.begin(), tokens.end());
    const size_t common = static_cast<size_t>(mismatch.second - tokens.begin());
    const size_t shared = std::min({common, tokens.size() - 1, held_}) / kShareGranularity * kShareGranularity;
    return copy_is_whole(llama_get_memory(ctx), id_, static_cast<llama_pos>(shared), n_swa_) ? shared : 0;
}

void PrefixAnchor::copy_to(llama_context * ctx, llama_seq_id id, size_t n) const {
    if (n > 0) copy_prefix(ctx, id_, id, static_cast<llama_pos>(n));
}

void PrefixAnchor::move_to(llama_context * ctx, llama_seq_id from, const std::vector<int32_t> & tokens) {
    if (!active()) return;
    held_ = (tokens.size() - 1) / kShareGranularity * kShareGranularity;
    llama_memory_seq_rm(llama_get_memory(ctx), id_, -1, -1);
    if (held_ > 0) copy_prefix(ctx, from, id_, static_cast<llama_pos>(held_));
    tokens_ = tokens;
}

}  // namespace eager
