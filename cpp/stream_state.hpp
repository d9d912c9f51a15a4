// A sequence's KV state moved between contexts with different numbers of per-sequence streams.
//
// llama.cpp saves one sequence (llama_state_seq_get_data) as: a magic and the sequence id, then each KV cache's
// part (llama.cpp's iswa cache: the full layers' part, then the sliding-window layers'), each part as its
// stream count and one section per stream, a section being the stream's cell count and, when not 0, the
// cells of that sequence. With one stream per sequence id, exactly one section holds cells. llama.cpp only
// restores a part into a cache with the same stream count, so a run that changes its stream count
// (KvScheduler::shrink_streams) rewrites each part: the new count, empty sections (a zero count) around the
// one that holds the cells, at the destination's stream. Tied to the format of the pinned llama.cpp; every
// assumption is checked and a state that does not match is refused, never restored wrong.
#pragma once

#include <cstdint>
#include <vector>

namespace eager {

// full: the sequence's state (flags 0); window_only: its sliding-window part alone (LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY;
// the same bytes as `full` for a cache without one). The sequence's stream there is `from_stream` of
// `from_streams`; the result restores it into stream `to_stream` of `to_streams`. Throws LlamaError when the
// state is not laid out as described above.
std::vector<uint8_t> retarget_stream_state(const std::vector<uint8_t> & full, const std::vector<uint8_t> & window_only,
                                           uint32_t from_streams, uint32_t from_stream, uint32_t to_streams,
                                           uint32_t to_stream);

}  // namespace eager
