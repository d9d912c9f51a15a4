// Ownership of a llama.cpp model and of the context it decodes in.
//
// The model is loaded once and reused across runs; the context is sized per job and kept
// while later jobs fit in it, because creating one allocates the whole KV cache.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "context_handle.hpp"
#include "cpu_buffers.hpp"
#include "device_topk.hpp"

struct llama_model;
struct llama_context;
struct llama_vocab;

namespace eager {

struct ContextShape {
    uint32_t n_ctx = 0;      // KV cells: shared by all sequences (unified), or n_seq_max streams of n_ctx / n_seq_max
    uint32_t n_seq_max = 1;  // sequence ids available (<= 256)
    bool kv_unified = true;  // false: a KV stream per sequence id (EngineConfig::kv_layout)
    uint32_t n_batch = 512;  // tokens per llama_decode call
    int32_t n_threads = 0;   // 0 = all cores
    // Keep the sliding-window layers' cells for the whole context (EngineConfig::window_cache).
    bool swa_full = true;
    // Device top-K samplers on every sequence id (the device path); disabled by default.
    DeviceTopKParams device;
};

// How the model's KV cache splits into layers that attend over every cell and sliding-window layers
// (llama.cpp's iswa cache), as llama.cpp reports it when it makes a cache.
struct KvLayers {
    int full = 0;
    int window = 0;  // 0: the model has no sliding window
    int n_swa = 0;   // the window, in tokens

    // The cells llama.cpp gives the window layers' cache of one stream (swa_full off): the window of every
    // sequence the stream holds and a micro-batch, padded to 256 (llama_kv_cache_iswa). 0 without a window.
    int64_t window_cells(int64_t sequences, uint32_t n_batch) const {
        return window > 0 ? (static_cast<int64_t>(n_swa) * sequences + n_batch + 255) / 256 * 256 : 0;
    }
};

// A weight buffer of the loaded model, as llama.cpp reports it at load ("CPU_REPACK", 120.5 MiB).
struct WeightBuffer {
    std::string name;
    double mib = 0.0;
};

class Model {
public:
    // cpu_buffers / guarded: which CPU extra buffer types may hold weights (cpu_buffers.hpp).
    Model(const std::string & path, int n_gpu_layers, CpuBuffers cpu_buffers = CpuBuffers::Safe,
          const std::vector<std::string> & guarded = default_guarded_cpu_buffers());
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    const llama_model * model() const { return model_; }
    const llama_vocab * vocab() const { return vocab_; }
    const std::string & path() const { return path_; }
    const CpuBufferPlan & cpu_buffer_plan() const { return cpu_plan_; }
    const std::vector<WeightBuffer> & weight_buffers() const { return weight_buffers_; }
    bool offloaded() const { return offloaded_; }  // layers run on a GPU (their KV cache lives there)

    int n_vocab() const;
    int n_ctx_train() const;
    // Bytes one KV cell takes (f16 keys and values of every layer).
    double kv_bytes_per_cell() const;
    const KvLayers & kv_layers() const { return kv_layers_; }
    // The bytes of the KV cache of a context of this shape: with the window cache (swa_full off), the
    // sliding-window layers keep about n_swa cells per stream whatever the length.
    int64_t kv_bytes(const ContextShape & shape) const;
    // Memory a KV cache may take: RAM available (MemAvailable) on the CPU, the device's free memory when
    // layers are offloaded.
    int64_t memory_available_bytes() const;
    bool add_bos() const;
    std::string description() const;
    std::string meta(const std::string & key) const;  // "" when absent
    std::string builtin_chat_template() const;        // "" when the GGUF has none

    std::vector<int32_t> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string token_to_piece(int32_t token) const;  // raw bytes, may be a partial UTF-8 sequence
    std::string detokenize(const std::vector<int32_t> & tokens) const;
    bool is_eog(int32_t token) const;

    // Applies `template_or_name` (a llama.cpp built-in template name or a template text;
    // empty = the model's own) to (role, content) messages, opening the assistant turn.
    std::string apply_chat_template(const std::vector<std::pair<std::string, std::string>> & messages,
                                    const std::string & template_or_name) const;

    // A context with at least this shape, created or reused; its memory is cleared.
    llama_context * acquire_context(const ContextShape & shape);
    const ContextShape & context_shape() const { return shape_; }
    // The context slot, for the parts of a run: grow_context replaces the context it holds.
    ContextHandle context() const { return ContextHandle(ctx_); }
    // Gives the current context at least n_ctx KV cells, keeping what its cache holds: the cells are
    // copied out (llama.cpp's whole-cache state, every cell with its sequences and position), the
    // context is recreated at the new size and the cells copied back in, in their order, from cell 0.
    // False when llama.cpp could not allocate the larger cache: the context keeps its size and its cells,
    // and the run can go on within it.
    bool grow_context(uint32_t n_ctx);
    // Per-sequence streams: recreates the context with n_seq_max streams and n_ctx cells in all, each
    // sequence in `moves` copied from its stream (first) into the stream of its new id (second), in its
    // cells' order from cell 0 (llama.cpp's per-sequence state; window cells that left the window are not
    // kept). Streams of other ids are dropped. False when llama.cpp could not allocate it: the context is as
    // it was.
    bool reshape_streams(uint32_t n_seq_max, uint32_t n_ctx, const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves);

private:
    // A new context of this shape beside any that exists; nullptr when llama.cpp cannot allocate it.
    llama_context * init_context(const ContextShape & shape) const;
    // The current context (the run's, mid-run) replaced by one of this shape, empty; false, and the old one
    // kept, when llama.cpp cannot allocate it.
    bool replace_context(const ContextShape & shape);
    // The memory a context of this shape takes, as far as it can be told before llama.cpp makes it.
    int64_t context_bytes(const ContextShape & shape) const;
    void create_context(const ContextShape & shape);

    std::string path_;
    bool offloaded_ = false;
    CpuBufferPlan cpu_plan_;
    std::vector<WeightBuffer> weight_buffers_;
    llama_model * model_ = nullptr;
    const llama_vocab * vocab_ = nullptr;
    llama_context * ctx_ = nullptr;
    ContextShape shape_;
    KvLayers kv_layers_;
    DeviceSamplers device_;  // declared after ctx_: the samplers are freed after the context
};

std::vector<std::string> builtin_chat_templates();

// Threads a context uses when none are asked for: every core the OS reports.
int default_threads();

}  // namespace eager
