#include "stream_state.hpp"

#include <cstring>
#include <string>

#include "errors.hpp"

namespace eager {

namespace {

constexpr size_t kHeaderBytes = 2 * sizeof(uint32_t);  // the magic and the sequence id

uint32_t read_u32(const uint8_t * at) {
    uint32_t v;
    std::memcpy(&v, at, sizeof(v));
    return v;
}

void append_u32(std::vector<uint8_t> & out, uint32_t v) {
    const auto * bytes = reinterpret_cast<const uint8_t *>(&v);
    out.insert(out.end(), bytes, bytes + sizeof(v));
}

// One cache's part [begin, end): its stream count, then a zero count for every stream but from_stream, whose
// section (count and cells) runs from its offset to where the zero counts after it begin.
void retarget_part(const uint8_t * begin, const uint8_t * end, uint32_t from_streams, uint32_t from_stream,
                   uint32_t to_streams, uint32_t to_stream, std::vector<uint8_t> & out) {
    const size_t size = static_cast<size_t>(end - begin);
    const size_t empties = static_cast<size_t>(from_streams - 1) * sizeof(uint32_t);
    if (size < sizeof(uint32_t) + empties + sizeof(uint32_t) || read_u32(begin) != from_streams)
        throw LlamaError("internal error: a KV stream's saved state does not hold " + std::to_string(from_streams) + " streams");
    const size_t section_begin = sizeof(uint32_t) * (1 + from_stream);
    const size_t section_end = size - sizeof(uint32_t) * (from_streams - 1 - from_stream);
    for (size_t at = sizeof(uint32_t); at < section_begin; at += sizeof(uint32_t))
        if (read_u32(begin + at) != 0) throw LlamaError("internal error: a KV stream's saved state holds another stream's cells");
    for (size_t at = section_end; at < size; at += sizeof(uint32_t))
        if (read_u32(begin + at) != 0) throw LlamaError("internal error: a KV stream's saved state holds another stream's cells");
    append_u32(out, to_streams);
    for (uint32_t s = 0; s < to_stream; ++s) append_u32(out, 0);
    out.insert(out.end(), begin + section_begin, begin + section_end);
    for (uint32_t s = to_stream + 1; s < to_streams; ++s) append_u32(out, 0);
}

}  // namespace

std::vector<uint8_t> retarget_stream_state(const std::vector<uint8_t> & full, const std::vector<uint8_t> & window_only,
                                           uint32_t from_streams, uint32_t from_stream, uint32_t to_streams,
                                           uint32_t to_stream) {
    if (from_stream >= from_streams || to_stream >= to_streams || full.size() < kHeaderBytes ||
        window_only.size() < kHeaderBytes || window_only.size() > full.size())
        throw LlamaError("internal error: a KV stream's saved state cannot be moved to stream " + std::to_string(to_stream));
    std::vector<uint8_t> out(full.begin(), full.begin() + kHeaderBytes);
    const uint8_t * body = full.data() + kHeaderBytes;
    const uint8_t * body_end = full.data() + full.size();
    if (window_only.size() == full.size()) {  // one cache: no window part apart
        retarget_part(body, body_end, from_streams, from_stream, to_streams, to_stream, out);
        return out;
    }
    // The full layers' part, then the window part, which must be the bytes the window-only state holds.
    const uint8_t * window = body_end - (window_only.size() - kHeaderBytes);
    if (std::memcmp(window, window_only.data() + kHeaderBytes, window_only.size() - kHeaderBytes) != 0)
        throw LlamaError("internal error: a KV stream's saved state does not end with its sliding-window part");
    retarget_part(body, window, from_streams, from_stream, to_streams, to_stream, out);
    retarget_part(window, body_end, from_streams, from_stream, to_streams, to_stream, out);
    return out;
}

}  // namespace eager
