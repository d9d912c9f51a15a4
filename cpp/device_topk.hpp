// The device half of the per-row work: top-C candidates, their probabilities and the top-K
// entropy are computed inside llama.cpp's compute graph, on whatever backend runs the model
// (CUDA, Metal, Vulkan or the CPU), so a step copies C + 1 values per sequence to the host
// instead of a whole logits row (1 MiB for Gemma 3's 262,144-token vocabulary).
//
// It rides on llama.cpp's backend-sampling API: one sampler chain per KV sequence id, whose
// ops llama.cpp appends to the graph after the output layer. The host then orders the C
// candidates, takes the top-2 for branching and samples with its own per-sequence streams,
// exactly as it does from a full row, but renormalised over the candidates.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

struct llama_context;
struct llama_sampler;

namespace eager {

struct DeviceTopKParams {
    bool enabled = false;
    int candidates = 256;               // C: tokens per row the host may sample from
    int entropy_k = 20;                 // K of the top-K entropy (K <= C)
    float entropy_temperature = 1.0f;   // logits divided by this before the entropy
    float sample_temperature = 1.0f;    // temperature of the candidate probabilities (0 = greedy: 1)

    bool operator==(const DeviceTopKParams & o) const {
        return enabled == o.enabled && candidates == o.candidates && entropy_k == o.entropy_k &&
               entropy_temperature == o.entropy_temperature && sample_temperature == o.sample_temperature;
    }
    bool operator!=(const DeviceTopKParams & o) const { return !(*this == o); }
};

// What the device computed for one output row, read from llama.cpp's host copies.
struct DeviceRow {
    const int32_t * ids = nullptr;  // C candidate token ids, in no particular order
    const float * logits = nullptr; // their raw logits
    const float * probs = nullptr;  // their probabilities under the full-row softmax at sample_temperature
    int count = 0;                  // C (fewer when the vocabulary is smaller)
    float entropy = 0.0f;           // top-K entropy, natural log
};

// The sampler chains of one context, one per sequence id. They must outlive their use by the
// context, so the owner detaches them (or frees the context) before destroying this.
class DeviceSamplers {
public:
    DeviceSamplers() = default;
    ~DeviceSamplers();
    DeviceSamplers(const DeviceSamplers &) = delete;
    DeviceSamplers & operator=(const DeviceSamplers &) = delete;

    // Attaches chains with `params` to sequence ids 0..n_seq-1 (detaching any previous ones);
    // throws when the backend cannot run the ops.
    void attach(llama_context * ctx, int n_seq, const DeviceTopKParams & params);
    // Detaches every chain from `ctx` (pass nullptr when the context is already freed).
    void detach(llama_context * ctx);

    const DeviceTopKParams & params() const { return params_; }
    bool attached() const { return !chains_.empty(); }

private:
    std::vector<llama_sampler *> chains_;
    DeviceTopKParams params_;
};

// The device results of output row `i` (the batch index, as for llama_get_logits_ith).
DeviceRow read_device_row(llama_context * ctx, int32_t i);

}  // namespace eager
