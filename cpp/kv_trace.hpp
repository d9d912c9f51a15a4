// What each decode's attention spans in the unified KV cache, read from llama.cpp's own debug log.
//
// With LLAMA_KV_CACHE_DEBUG=1 in the environment when a context is created, llama.cpp's find_slot
// logs, per cache and micro-batch, `n` (the cells up to the highest one in use: every token of the
// micro-batch attends over them, padded to 256, holes and other prompts' cells masked) and `used`
// (the cells holding something). A traced run listens to that log; it is a measuring mode, slower
// than a plain run (llama.cpp then also logs every sequence's range each decode).
#pragma once

#include <cstdint>
#include <mutex>
#include <thread>

#include "ggml.h"

namespace eager {

struct KvSpan {
    int32_t span = -1;      // full-attention layers: cells up to the highest in use
    int32_t used = -1;      // ... cells in use
    int32_t span_swa = -1;  // sliding-window layers' cache (Gemma 3), when it is separate
    int32_t used_swa = -1;
};

class KvTraceLog {
public:
    KvTraceLog();
    ~KvTraceLog();
    KvTraceLog(const KvTraceLog &) = delete;
    KvTraceLog & operator=(const KvTraceLog &) = delete;

    // Whether llama.cpp will log the spans (LLAMA_KV_CACHE_DEBUG set to a positive number).
    static bool enabled();
    // The largest values logged from this thread since the previous take (-1: none).
    KvSpan take();

private:
    static void callback(ggml_log_level level, const char * text, void * data);

    std::lock_guard<std::mutex> lock_;
    std::thread::id owner_ = std::this_thread::get_id();
    ggml_log_callback previous_ = nullptr;
    void * previous_data_ = nullptr;
    KvSpan seen_;
};

}  // namespace eager
