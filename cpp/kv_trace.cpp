#include "kv_trace.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "llama.h"
#include "llama_log.hpp"

namespace eager {

KvTraceLog::KvTraceLog() : lock_(log_mutex()) {
    llama_log_get(&previous_, &previous_data_);
    llama_log_set(&KvTraceLog::callback, this);
}

KvTraceLog::~KvTraceLog() { llama_log_set(previous_, previous_data_); }

bool KvTraceLog::enabled() {
    const char * value = std::getenv("LLAMA_KV_CACHE_DEBUG");
    return value != nullptr && std::atoi(value) > 0;
}

KvSpan KvTraceLog::take() {
    const KvSpan out = seen_;
    seen_ = KvSpan{};
    return out;
}

void KvTraceLog::callback(ggml_log_level level, const char * text, void * data) {
    auto * self = static_cast<KvTraceLog *>(data);
    log_filter(level, text, nullptr);
    if (std::this_thread::get_id() != self->owner_) return;  // another thread's decode, not this run's
    const char * at = std::strstr(text, "find_slot: stream[");
    if (at == nullptr) return;
    int stream = 0, n = 0, used = 0, head = 0, size = 0, n_swa = 0;
    if (std::sscanf(at, "find_slot: stream[%d], n = %d, used = %d, head = %d, size = %d, n_swa = %d", &stream, &n,
                    &used, &head, &size, &n_swa) != 6)
        return;
    // find_slot also runs while llama.cpp plans a batch: keep the largest of the step's reports.
    KvSpan & s = self->seen_;
    if (n_swa > 0) {
        s.span_swa = std::max(s.span_swa, n);
        s.used_swa = std::max(s.used_swa, used);
    } else {
        s.span = std::max(s.span, n);
        s.used = std::max(s.used, used);
    }
}

}  // namespace eager
