#include "diagnostics.hpp"

#include <algorithm>

#include "errors.hpp"
#include "llama.h"

namespace eager {

namespace {

void decode_checked(llama_context * ctx, llama_batch & batch) {
    if (llama_decode(ctx, batch) != 0) throw LlamaError("llama_decode failed in the fork probe");
}

void set_token(llama_batch & b, int32_t token, int32_t pos, llama_seq_id seq, bool logits) {
    const int i = b.n_tokens++;
    b.token[i] = token;
    b.pos[i] = pos;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = seq;
    b.logits[i] = logits;
}

std::vector<float> copy_row(llama_context * ctx, int32_t i, int n_vocab) {
    const float * row = llama_get_logits_ith(ctx, i);
    if (row == nullptr) throw LlamaError("no logits in the fork probe");
    return std::vector<float>(row, row + n_vocab);
}

}  // namespace

ForkProbe probe_fork(Model & model, const std::vector<int32_t> & prefix, const std::vector<int32_t> & continuation,
                     int n_threads) {
    if (prefix.empty() || continuation.empty()) throw InvalidArgument("the fork probe needs a prefix and a continuation");
    const int n_vocab = model.n_vocab();
    const int32_t total = static_cast<int32_t>(prefix.size() + continuation.size());
    ContextShape shape;
    shape.n_ctx = static_cast<uint32_t>((2 * total + 511) / 256 * 256);
    shape.n_seq_max = 2;
    shape.n_batch = static_cast<uint32_t>(std::max<int32_t>(512, total));
    shape.n_threads = n_threads;
    llama_context * ctx = model.acquire_context(shape);
    llama_memory_t mem = llama_get_memory(ctx);
    llama_batch batch = llama_batch_init(static_cast<int32_t>(shape.n_batch), 0, 1);
    ForkProbe probe;
    try {
        batch.n_tokens = 0;
        for (size_t i = 0; i < prefix.size(); ++i)
            set_token(batch, prefix[i], static_cast<int32_t>(i), 0, i + 1 == prefix.size());
        decode_checked(ctx, batch);
        llama_memory_seq_cp(mem, 0, 1, -1, -1);
        for (size_t j = 0; j < continuation.size(); ++j) {
            batch.n_tokens = 0;
            const int32_t pos = static_cast<int32_t>(prefix.size() + j);
            set_token(batch, continuation[j], pos, 0, true);
            set_token(batch, continuation[j], pos, 1, true);
            decode_checked(ctx, batch);
        }
        probe.parent = copy_row(ctx, 0, n_vocab);
        probe.child = copy_row(ctx, 1, n_vocab);

        llama_memory_clear(mem, true);
        batch.n_tokens = 0;
        for (int32_t i = 0; i < total; ++i) {
            const int32_t token = i < static_cast<int32_t>(prefix.size()) ? prefix[i] : continuation[i - prefix.size()];
            set_token(batch, token, i, 0, i + 1 == total);
        }
        decode_checked(ctx, batch);
        probe.fresh = copy_row(ctx, batch.n_tokens - 1, n_vocab);
    } catch (...) {
        llama_batch_free(batch);
        llama_memory_clear(mem, true);
        throw;
    }
    llama_batch_free(batch);
    llama_memory_clear(mem, true);
    return probe;
}

}  // namespace eager
