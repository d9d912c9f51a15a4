#include "kv_ops.hpp"

#include "kv_copy.hpp"
#include "model.hpp"
#include "prefill.hpp"

namespace eager {

LlamaKvOps::LlamaKvOps(Model & model, Prefill & prefill)
    : model_(model), ctx_(model.context()), prefill_(prefill), n_swa_(llama_model_n_swa(model.model())) {}

void LlamaKvOps::copy_all(llama_seq_id from, llama_seq_id to) { llama_memory_seq_cp(ctx_.memory(), from, to, -1, -1); }

void LlamaKvOps::remove(llama_seq_id id) { llama_memory_seq_rm(ctx_.memory(), id, -1, -1); }

bool LlamaKvOps::copy_is_whole(llama_seq_id from, int32_t len) const {
    return eager::copy_is_whole(ctx_.memory(), from, len, n_swa_);
}

void LlamaKvOps::copy_prefix(llama_seq_id from, llama_seq_id to, int32_t len) {
    eager::copy_prefix(ctx_.get(), from, to, len);
}

void LlamaKvOps::recompute(const std::vector<int32_t> & tokens, size_t begin, llama_seq_id id) {
    prefill_.tokens(tokens, begin, static_cast<int32_t>(begin), id, "recomputing a preempted sequence");
}

bool LlamaKvOps::grow(int64_t cells) { return model_.grow_context(static_cast<uint32_t>(cells)); }

bool LlamaKvOps::reshape_streams(int64_t streams, int64_t cells,
                                 const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves) {
    return model_.reshape_streams(static_cast<uint32_t>(streams), static_cast<uint32_t>(cells), moves);
}

}  // namespace eager
