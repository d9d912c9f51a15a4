// The KV-cache operations that the sequence table and the KV scheduler ask for, kept apart from the
// decisions that ask for them: LlamaKvOps carries them out on llama.cpp's context; the policies
// binding (`_core.policies`) gives a stand-in that records them, so the table and the scheduler are
// tested on synthetic prompts without a model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "context_handle.hpp"
#include "llama.h"

namespace eager {

class Model;
class Prefill;

class KvOps {
public:
    virtual ~KvOps() = default;
    // Tags every cell of `from` with `to` too (a fork; samples of one prompt; a stream moved to another id).
    virtual void copy_all(llama_seq_id from, llama_seq_id to) = 0;
    // Drops `id` from its cells; a cell no other sequence holds is free again.
    virtual void remove(llama_seq_id id) = 0;
    // Whether the cells of positions [0, len) of `from` are all still there to copy (kv_copy.hpp).
    virtual bool copy_is_whole(llama_seq_id from, int32_t len) const = 0;
    // Gives the fresh sequence `to` the cells of positions [0, len) of `from`.
    virtual void copy_prefix(llama_seq_id from, llama_seq_id to, int32_t len) = 0;
    // Decodes tokens[begin..] at positions begin.. of `id` (a preempted sequence recomputed).
    virtual void recompute(const std::vector<int32_t> & tokens, size_t begin, llama_seq_id id) = 0;
    // Gives the cache `cells` cells, keeping every cell it holds; false when the memory is not there (the
    // cache keeps its size and its cells).
    virtual bool grow(int64_t cells) = 0;
    // Per-sequence streams: the cache becomes `streams` streams of `cells` cells in all, each sequence in
    // `moves` taken from its stream (first) into the stream of its new id (second); every other stream is
    // dropped. False when the memory is not there (the cache then is as it was).
    virtual bool reshape_streams(int64_t streams, int64_t cells, const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves) = 0;
};

// The operations on the model's context (replaced when it grows, so read through the handle).
class LlamaKvOps final : public KvOps {
public:
    LlamaKvOps(Model & model, Prefill & prefill);

    void copy_all(llama_seq_id from, llama_seq_id to) override;
    void remove(llama_seq_id id) override;
    bool copy_is_whole(llama_seq_id from, int32_t len) const override;
    void copy_prefix(llama_seq_id from, llama_seq_id to, int32_t len) override;
    void recompute(const std::vector<int32_t> & tokens, size_t begin, llama_seq_id id) override;
    bool grow(int64_t cells) override;
    bool reshape_streams(int64_t streams, int64_t cells, const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves) override;

private:
    Model & model_;
    ContextHandle ctx_;
    Prefill & prefill_;
    int n_swa_;
};

}  // namespace eager
