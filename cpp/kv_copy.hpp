// Partial KV copies that stay whole on sliding-window models.
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

}  // namespace eager
