// Partial KV copies: whole on sliding-window models, and possible across per-sequence streams.
//
// In a sliding-window cache llama.cpp may reuse a cell held by one sequence alone once the cell lies
// outside that sequence's window, whatever swa_full says, and it then purges the sequence's older
// positions, so a sequence holds a contiguous range [pos_min, pos_max] there. A copy of [0, len) is
// whole for a sequence that continues at position len when the window it needs there, [len - n_swa + 1,
// len), is still held: pos_min <= max(0, len - n_swa + 1). A copy that is not would attend over a window
// with holes: silently wrong logits. Callers then prefill instead of copying.
#pragma once

#include <algorithm>

#include "llama.h"

namespace eager {

inline bool copy_is_whole(llama_memory_t mem, llama_seq_id source, llama_pos len, int n_swa) {
    if (n_swa <= 0 || len <= 0) return true;
    const llama_pos pos_min = llama_memory_seq_pos_min(mem, source);
    return pos_min >= 0 && pos_min <= std::max<llama_pos>(0, len - n_swa + 1);
}

// Gives the fresh sequence `dest` the cells of positions [0, len) of `source`. In the unified cache
// that tags the source's cells with dest. Across per-sequence streams llama.cpp copies only whole
// streams (a ranged seq_cp there aborts the process), so the whole stream is copied and dest's
// positions from len on are dropped again (the buffer copy itself runs at the next decode).
inline void copy_prefix(llama_context * ctx, llama_seq_id source, llama_seq_id dest, llama_pos len) {
    llama_memory_t mem = llama_get_memory(ctx);
    if (llama_n_ctx_seq(ctx) == llama_n_ctx(ctx)) {  // one stream for every sequence
        llama_memory_seq_cp(mem, source, dest, 0, len);
        return;
    }
    llama_memory_seq_cp(mem, source, dest, -1, -1);
    llama_memory_seq_rm(mem, dest, len, -1);
}

}  // namespace eager
