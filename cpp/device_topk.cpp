#include "device_topk.hpp"

#include <algorithm>
#include <string>

#include "errors.hpp"
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

namespace eager {

namespace {

struct SamplerState {
    DeviceTopKParams params;
};

// The ops of one row. `data->logits` is the row's full logits (a 1-D view of the output).
// Outputs: candidates = C token ids (unordered), logits = their logits, probs = their
// full-row probabilities followed by one more value, the top-K entropy.
void build_row_ops(ggml_context * ctx, llama_sampler_data * data, const DeviceTopKParams & p) {
    ggml_tensor * logits = ggml_reshape_1d(ctx, data->logits, ggml_nelements(data->logits));
    const int64_t n_vocab = logits->ne[0];
    // probs carries C + 1 values in a row of n_vocab, so at most n_vocab - 1 candidates: the one
    // left out is the least likely token of the row.
    const int c = static_cast<int>(std::min<int64_t>(p.candidates, n_vocab - 1));
    const int k = std::min(p.entropy_k, c);  // c >= 2: a vocabulary has more than 2 tokens

    ggml_tensor * ids = ggml_top_k(ctx, logits, c);
    ggml_tensor * cand_logits = ggml_get_rows(ctx, ggml_reshape_2d(ctx, logits, 1, n_vocab), ids);  // [1, C]

    // Probabilities under the whole row's softmax: the host learns how much mass lies
    // outside the candidates, which it cannot know from the candidates alone.
    const float sample_scale = 1.0f / (p.sample_temperature > 0.0f ? p.sample_temperature : 1.0f);
    ggml_tensor * row_probs = ggml_soft_max_ext(ctx, logits, nullptr, sample_scale, 0.0f);
    ggml_tensor * cand_probs = ggml_get_rows(ctx, ggml_reshape_2d(ctx, row_probs, 1, n_vocab), ids);

    // Top-K entropy: the K best of the C candidates, renormalised; p is clamped before the log
    // so a vanishing probability adds 0 instead of 0 * -inf.
    ggml_tensor * top_local = ggml_top_k(ctx, ggml_reshape_1d(ctx, cand_logits, c), k);
    ggml_tensor * top_logits = ggml_get_rows(ctx, cand_logits, top_local);  // [1, K]
    const float entropy_scale = 1.0f / (p.entropy_temperature > 0.0f ? p.entropy_temperature : 1.0f);
    ggml_tensor * pk = ggml_soft_max_ext(ctx, ggml_reshape_1d(ctx, top_logits, k), nullptr, entropy_scale, 0.0f);
    ggml_tensor * log_pk = ggml_log(ctx, ggml_clamp(ctx, pk, 1e-30f, 1.0f));
    ggml_tensor * entropy = ggml_scale(ctx, ggml_sum(ctx, ggml_mul(ctx, pk, log_pk)), -1.0f);  // [1]

    if (data->candidates != nullptr) {  // an earlier sampler already narrowed the row
        data->candidates = ggml_get_rows(ctx, ggml_reshape_2d(ctx, data->candidates, 1, data->candidates->ne[0]), ids);
        data->candidates = ggml_reshape_1d(ctx, data->candidates, c);
    } else {
        data->candidates = ids;
    }
    data->logits = ggml_reshape_1d(ctx, cand_logits, c);
    data->probs = ggml_concat(ctx, ggml_reshape_1d(ctx, cand_probs, c), ggml_reshape_1d(ctx, entropy, 1), 0);
    ggml_set_name(data->probs, "eager_topk_probs_entropy");
}

const char * sampler_name(const llama_sampler *) { return "eager-device-topk"; }

// Host fallback, required by the interface: keep the C most likely tokens. The engine never
// samples through it; it exists so the sampler means the same thing wherever it runs.
void sampler_apply(llama_sampler * smpl, llama_token_data_array * cur_p) {
    const auto * st = static_cast<SamplerState *>(smpl->ctx);
    const size_t c = std::min<size_t>(st->params.candidates, cur_p->size);
    std::partial_sort(cur_p->data, cur_p->data + c, cur_p->data + cur_p->size,
                      [](const llama_token_data & a, const llama_token_data & b) { return a.logit > b.logit; });
    cur_p->size = c;
    cur_p->sorted = true;
}

void sampler_free(llama_sampler * smpl) { delete static_cast<SamplerState *>(smpl->ctx); }

// The ops must all run where the logits are; otherwise llama.cpp would silently fall back.
bool sampler_backend_init(llama_sampler * smpl, ggml_backend_buffer_type_t buft, uint32_t) {
    ggml_backend_dev_t device = ggml_backend_buft_get_device(buft);
    if (device == nullptr) return true;  // the CPU backend runs every op
    const auto * st = static_cast<SamplerState *>(smpl->ctx);
    constexpr size_t kNodes = 64;
    ggml_init_params ip = {kNodes * ggml_tensor_overhead() + ggml_graph_overhead_custom(kNodes, false), nullptr, true};
    ggml_context * ctx = ggml_init(ip);
    if (ctx == nullptr) return false;
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, kNodes, false);
    llama_sampler_data data = {ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 4096), nullptr, nullptr, nullptr};
    build_row_ops(ctx, &data, st->params);
    for (ggml_tensor * t : {data.candidates, data.logits, data.probs}) ggml_build_forward_expand(gf, t);
    bool ok = true;
    for (int i = 0; i < ggml_graph_n_nodes(gf) && ok; ++i) ok = ggml_backend_dev_supports_op(device, ggml_graph_node(gf, i));
    ggml_free(ctx);
    return ok;
}

void sampler_backend_apply(llama_sampler * smpl, ggml_context * ctx, ggml_cgraph *, llama_sampler_data * data) {
    build_row_ops(ctx, data, static_cast<SamplerState *>(smpl->ctx)->params);
}

llama_sampler_i kSamplerInterface = {
    /* .name              = */ sampler_name,
    /* .accept            = */ nullptr,
    /* .apply             = */ sampler_apply,
    /* .reset             = */ nullptr,
    /* .clone             = */ nullptr,
    /* .free              = */ sampler_free,
    /* .backend_init      = */ sampler_backend_init,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ sampler_backend_apply,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ nullptr,
    /* .copy_state        = */ nullptr,
};

}  // namespace

DeviceSamplers::~DeviceSamplers() { detach(nullptr); }

void DeviceSamplers::attach(llama_context * ctx, int n_seq, const DeviceTopKParams & params) {
    detach(ctx);
    if (params.candidates < 2 || params.entropy_k < 2 || params.entropy_k > params.candidates)
        throw InvalidArgument("device_candidates must be at least 2 and at least top_k_entropy");
    params_ = params;
    for (int id = 0; id < n_seq; ++id) {
        llama_sampler * chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(chain, llama_sampler_init(&kSamplerInterface, new SamplerState{params}));
        chains_.push_back(chain);
        if (!llama_set_sampler(ctx, id, chain)) {
            detach(ctx);
            throw LlamaError("llama.cpp cannot run the device top-K ops on this model's backend; "
                             "run with device_topk=False (the host kernel)");
        }
    }
}

void DeviceSamplers::detach(llama_context * ctx) {
    if (ctx != nullptr)
        for (size_t id = 0; id < chains_.size(); ++id) llama_set_sampler(ctx, static_cast<llama_seq_id>(id), nullptr);
    for (llama_sampler * chain : chains_) llama_sampler_free(chain);
    chains_.clear();
}

DeviceRow read_device_row(llama_context * ctx, int32_t i) {
    DeviceRow row;
    row.ids = llama_get_sampled_candidates_ith(ctx, i);
    row.logits = llama_get_sampled_logits_ith(ctx, i);
    row.probs = llama_get_sampled_probs_ith(ctx, i);
    row.count = static_cast<int>(llama_get_sampled_candidates_count_ith(ctx, i));
    if (row.ids == nullptr || row.logits == nullptr || row.probs == nullptr || row.count < 1 ||
        llama_get_sampled_logits_count_ith(ctx, i) != static_cast<uint32_t>(row.count) ||
        llama_get_sampled_probs_count_ith(ctx, i) != static_cast<uint32_t>(row.count) + 1)
        throw LlamaError("llama.cpp returned no device top-K results for an output row");
    row.entropy = row.probs[row.count];
    return row;
}

}  // namespace eager
