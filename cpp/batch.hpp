// A llama_batch owned by RAII, filled one token at a time.
#pragma once

#include <cstdint>
#include <exception>
#include <string>

#include "context_handle.hpp"
#include "errors.hpp"
#include "llama.h"

namespace eager {

class Batch {
public:
    explicit Batch(int32_t capacity) : batch_(llama_batch_init(capacity, 0, 1)), capacity_(capacity) {}
    ~Batch() { llama_batch_free(batch_); }
    Batch(const Batch &) = delete;
    Batch & operator=(const Batch &) = delete;

    void clear() { batch_.n_tokens = 0; }
    int32_t size() const { return batch_.n_tokens; }
    int32_t capacity() const { return capacity_; }

    // Appends a token of one sequence; returns its index, which is its logits row when `logits`.
    int32_t add(int32_t token, int32_t pos, llama_seq_id seq, bool logits) {
        const int32_t i = batch_.n_tokens++;
        batch_.token[i] = token;
        batch_.pos[i] = pos;
        batch_.n_seq_id[i] = 1;
        batch_.seq_id[i][0] = seq;
        batch_.logits[i] = logits ? 1 : 0;
        return i;
    }

    // llama_decode, with its failure codes turned into exceptions that say what to change.
    void decode(llama_context * ctx, const char * what) const {
        if (!try_decode(ctx, what))
            throw LlamaError(std::string("llama_decode found no KV slot during ") + what +
                             "; raise kv_memory (or n_ctx) or lower max_live_sequences");
    }

    // The same, but a full KV cache returns false (llama.cpp then leaves the cache as it was).
    bool try_decode(llama_context * ctx, const char * what) const {
        const int32_t rc = llama_decode(ctx, batch_);
        if (rc == 1) return false;
        if (rc != 0)
            throw LlamaError(std::string("llama_decode failed during ") + what + " (code " + std::to_string(rc) + ")");
        return true;
    }

private:
    llama_batch batch_;
    int32_t capacity_;
};

// Clears a context's memory however a run ends, so an interrupted run leaves nothing behind. Only the
// cells' bookkeeping is reset after a run that ended normally: zeroing the data means touching the whole
// KV buffer (gigabytes with a long-budget kv_memory), and stale values in empty cells are finite and
// masked out of every attention. A run that threw (non-finite logits, say) zeroes the data too.
struct MemoryGuard {
    ContextHandle ctx;  // the context at the end of the run: a run may have grown it (Model::grow_context)
    ~MemoryGuard() { llama_memory_clear(ctx.memory(), std::uncaught_exceptions() > 0); }
};

}  // namespace eager
