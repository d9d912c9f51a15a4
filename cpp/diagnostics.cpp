#include "diagnostics.hpp"

#include <algorithm>
#include <chrono>

#include "batch.hpp"
#include "engine.hpp"
#include "errors.hpp"
#include "llama.h"
#include "run_plan.hpp"

namespace eager {

namespace {

std::vector<float> copy_row(llama_context * ctx, int32_t i, int n_vocab) {
    const float * row = llama_get_logits_ith(ctx, i);
    if (row == nullptr) throw LlamaError("no logits in the fork probe");
    return std::vector<float>(row, row + n_vocab);
}

}  // namespace

ForkProbe probe_fork(Model & model, const std::vector<int32_t> & prefix, const std::vector<int32_t> & continuation,
                     int n_threads) {
    if (prefix.empty() || continuation.empty()) throw InvalidArgument("the fork probe needs a prefix and a continuation");
    const int n_vocab = model.n_vocab();
    const int32_t total = static_cast<int32_t>(prefix.size() + continuation.size());
    ContextShape shape;
    shape.n_ctx = static_cast<uint32_t>((2 * total + 511) / 256 * 256);
    shape.n_seq_max = 2;
    shape.n_batch = static_cast<uint32_t>(std::max<int32_t>(512, total));
    shape.n_threads = n_threads;
    llama_context * ctx = model.acquire_context(shape);
    llama_memory_t mem = llama_get_memory(ctx);
    MemoryGuard guard{model.context()};
    Batch batch(static_cast<int32_t>(shape.n_batch));
    ForkProbe probe;
    for (size_t i = 0; i < prefix.size(); ++i) batch.add(prefix[i], static_cast<int32_t>(i), 0, i + 1 == prefix.size());
    batch.decode(ctx, "the fork probe");
    llama_memory_seq_cp(mem, 0, 1, -1, -1);
    for (size_t j = 0; j < continuation.size(); ++j) {
        batch.clear();
        const int32_t pos = static_cast<int32_t>(prefix.size() + j);
        batch.add(continuation[j], pos, 0, true);
        batch.add(continuation[j], pos, 1, true);
        batch.decode(ctx, "the fork probe");
    }
    probe.parent = copy_row(ctx, 0, n_vocab);
    probe.child = copy_row(ctx, 1, n_vocab);

    llama_memory_clear(mem, true);
    batch.clear();
    for (int32_t i = 0; i < total; ++i) {
        const int32_t token = i < static_cast<int32_t>(prefix.size()) ? prefix[i] : continuation[i - prefix.size()];
        batch.add(token, i, 0, i + 1 == total);
    }
    batch.decode(ctx, "the fork probe");
    probe.fresh = copy_row(ctx, total - 1, n_vocab);
    return probe;
}

std::vector<DeviceRowProbe> probe_device_topk(Model & model, const std::vector<std::vector<int32_t>> & prompts,
                                              const DeviceTopKParams & params, int n_threads) {
    if (prompts.empty()) throw InvalidArgument("the device probe needs at least one prompt");
    const int n = static_cast<int>(prompts.size());
    if (n > 256) throw InvalidArgument("the device probe takes at most 256 prompts");
    int32_t total = 0;
    for (const auto & p : prompts) {
        if (p.empty()) throw InvalidArgument("the device probe got an empty prompt");
        total += static_cast<int32_t>(p.size());
    }
    ContextShape shape;
    shape.n_ctx = static_cast<uint32_t>((total + 511) / 256 * 256);
    shape.n_seq_max = static_cast<uint32_t>(n);
    shape.n_batch = static_cast<uint32_t>(std::max<int32_t>(512, total));
    shape.n_threads = n_threads;
    llama_context * ctx = model.acquire_context(shape);
    llama_memory_t mem = llama_get_memory(ctx);
    MemoryGuard guard{model.context()};

    Batch batch(total);
    std::vector<int32_t> rows;
    for (int s = 0; s < n; ++s)
        for (size_t i = 0; i < prompts[s].size(); ++i) {
            const bool last = i + 1 == prompts[s].size();
            const int32_t at = batch.add(prompts[s][i], static_cast<int32_t>(i), s, last);
            if (last) rows.push_back(at);
        }

    std::vector<DeviceRowProbe> out(n);
    {
        DeviceSamplers samplers;
        samplers.attach(ctx, n, params);
        struct Detach {
            DeviceSamplers & s;
            llama_context * c;
            ~Detach() { s.detach(c); }
        } detach{samplers, ctx};
        batch.decode(ctx, "the device probe");
        for (int s = 0; s < n; ++s) {
            const DeviceRow d = read_device_row(ctx, rows[s]);
            out[s].ids.assign(d.ids, d.ids + d.count);
            out[s].cand_logits.assign(d.logits, d.logits + d.count);
            out[s].cand_probs.assign(d.probs, d.probs + d.count);
            out[s].entropy = d.entropy;
        }
    }
    llama_memory_clear(mem, true);
    batch.decode(ctx, "the device probe");
    const int n_vocab = model.n_vocab();
    for (int s = 0; s < n; ++s) out[s].logits = copy_row(ctx, rows[s], n_vocab);
    return out;
}

double bench_bare_decode(Model & model, const std::vector<int32_t> & prompt, int n_sequences, int n_steps,
                         int n_threads) {
    if (prompt.empty() || n_sequences < 1 || n_sequences > kMaxSequenceIds || n_steps < 1)
        throw InvalidArgument("bench_bare_decode needs a prompt, 1..256 sequences and at least one step");
    ContextShape shape;
    shape.n_ctx = round_up_cells(static_cast<int64_t>(prompt.size()) + static_cast<int64_t>(n_sequences) * n_steps);
    shape.n_seq_max = n_sequences;
    shape.n_batch = kBatchTokens;
    shape.n_threads = n_threads;
    llama_context * ctx = model.acquire_context(shape);
    llama_memory_t mem = llama_get_memory(ctx);
    MemoryGuard guard{model.context()};
    Batch batch(static_cast<int32_t>(std::max<uint32_t>(llama_n_batch(ctx), n_sequences)));
    const int32_t n = static_cast<int32_t>(prompt.size());
    for (int32_t begin = 0; begin < n; begin += batch.capacity()) {
        batch.clear();
        for (int32_t i = begin; i < std::min(n, begin + batch.capacity()); ++i) batch.add(prompt[i], i, 0, i == n - 1);
        batch.decode(ctx, "prompt prefill");
    }
    for (int s = 1; s < n_sequences; ++s) llama_memory_seq_cp(mem, 0, s, -1, -1);
    const auto t0 = std::chrono::steady_clock::now();
    for (int step = 0; step < n_steps; ++step) {
        batch.clear();
        for (int s = 0; s < n_sequences; ++s) batch.add(prompt[(step + s) % n], n + step, s, true);
        batch.decode(ctx, "benchmark decode");
        if (llama_get_logits_ith(ctx, n_sequences - 1) == nullptr) throw LlamaError("no logits");
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace eager
