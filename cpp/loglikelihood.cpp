#include "loglikelihood.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "batch.hpp"
#include "errors.hpp"
#include "llama.h"
#include "run_plan.hpp"

namespace eager {

namespace {

using Request = std::pair<std::vector<int32_t>, std::vector<int32_t>>;

// One token of a group: where it goes in the cache, and the token its logits row must score (-1: none).
struct Entry {
    int32_t token;
    int32_t pos;
    int32_t seq;
    int32_t target;
    size_t request;
};

void check_request(const Request & r, size_t i, int n_vocab, int64_t limit) {
    const std::string which = "loglikelihood request " + std::to_string(i);
    if (r.first.empty())
        throw InvalidArgument(which + " has an empty context: score an empty context after the BOS token");
    if (r.second.empty()) throw InvalidArgument(which + " has an empty continuation");
    const int64_t n = static_cast<int64_t>(r.first.size() + r.second.size());
    if (n > limit)
        throw InvalidArgument(which + " is " + std::to_string(n) + " tokens, more than the model's context of " +
                              std::to_string(limit) + " (split it into windows)");
    for (const auto * part : {&r.first, &r.second})
        for (int32_t t : *part)
            if (t < 0 || t >= n_vocab)
                throw InvalidArgument(which + " has token id " + std::to_string(t) + " outside the vocabulary [0, " +
                                      std::to_string(n_vocab) + ")");
}

// Consecutive requests packed into groups of at most kScoreGroupSequences and kScoreGroupTokens tokens (a
// longer request alone): [begin, end) of each.
std::vector<std::pair<size_t, size_t>> plan_groups(const std::vector<Request> & requests) {
    std::vector<std::pair<size_t, size_t>> groups;
    size_t begin = 0;
    int64_t tokens = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
        const int64_t n = static_cast<int64_t>(requests[i].first.size() + requests[i].second.size());
        const bool full = i > begin && (tokens + n > kScoreGroupTokens || i - begin >= kScoreGroupSequences);
        if (full) {
            groups.emplace_back(begin, i);
            begin = i;
            tokens = 0;
        }
        tokens += n;
    }
    if (begin < requests.size()) groups.emplace_back(begin, requests.size());
    return groups;
}

// log softmax(row)[target] in double, and whether target is the row's argmax.
ContinuationScore score_row(const float * row, int n_vocab, int32_t target) {
    float best = row[0];
    for (int v = 1; v < n_vocab; ++v) best = std::max(best, row[v]);
    if (!std::isfinite(best)) throw LlamaError("the model returned non-finite logits while scoring a continuation");
    double sum = 0.0;
    for (int v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - best);
    ContinuationScore s;
    s.logprob = static_cast<double>(row[target]) - best - std::log(sum);
    // A NaN past row[0] leaves `best` finite but not the sum.
    if (!std::isfinite(s.logprob)) throw LlamaError("the model returned non-finite logits while scoring a continuation");
    s.greedy = row[target] >= best;
    return s;
}

std::vector<Entry> group_entries(const std::vector<Request> & requests, size_t begin, size_t end) {
    std::vector<Entry> entries;
    for (size_t r = begin; r < end; ++r) {
        const auto & [context, continuation] = requests[r];
        const int32_t n_ctx = static_cast<int32_t>(context.size());
        const int32_t n = n_ctx + static_cast<int32_t>(continuation.size());
        for (int32_t i = 0; i < n; ++i) {
            const int32_t token = i < n_ctx ? context[i] : continuation[i - n_ctx];
            // Row i predicts token i + 1: the rows from the context's last token to the one before the last.
            const int32_t target = i >= n_ctx - 1 && i + 1 < n ? continuation[i + 1 - n_ctx] : -1;
            entries.push_back({token, i, static_cast<int32_t>(r - begin), target, r});
        }
    }
    return entries;
}

void score_group(llama_context * ctx, Batch & batch, const std::vector<Entry> & entries, int n_vocab,
                 std::vector<ContinuationScore> & out) {
    size_t at = 0;
    while (at < entries.size()) {
        batch.clear();
        std::vector<std::pair<int32_t, const Entry *>> rows;  // (index in the batch, its entry)
        for (; at < entries.size() && batch.size() < batch.capacity(); ++at) {
            const Entry & e = entries[at];
            if (e.target >= 0 && static_cast<int32_t>(rows.size()) >= kScoreRowsPerDecode) break;
            const int32_t i = batch.add(e.token, e.pos, e.seq, e.target >= 0);
            if (e.target >= 0) rows.emplace_back(i, &e);
        }
        batch.decode(ctx, "loglikelihood scoring");
        for (const auto & [i, e] : rows) {
            const float * row = llama_get_logits_ith(ctx, i);
            if (row == nullptr) throw LlamaError("no logits while scoring a continuation");
            const ContinuationScore s = score_row(row, n_vocab, e->target);
            out[e->request].logprob += s.logprob;
            out[e->request].greedy = out[e->request].greedy && s.greedy;
        }
    }
}

}  // namespace

std::vector<ContinuationScore> score_continuations(Model & model, const std::vector<Request> & requests,
                                                   int n_threads) {
    const int n_vocab = model.n_vocab();
    const int64_t limit = std::min<int64_t>(model.n_ctx_train() > 0 ? model.n_ctx_train() : INT32_MAX, INT32_MAX);
    for (size_t i = 0; i < requests.size(); ++i) check_request(requests[i], i, n_vocab, limit);
    std::vector<ContinuationScore> out(requests.size());
    if (requests.empty()) return out;
    const auto groups = plan_groups(requests);
    int64_t cells = 0;
    size_t ids = 1;
    for (const auto & [begin, end] : groups) {
        int64_t tokens = 0;
        for (size_t r = begin; r < end; ++r)
            tokens += static_cast<int64_t>(requests[r].first.size() + requests[r].second.size());
        cells = std::max(cells, tokens);
        ids = std::max(ids, end - begin);
    }
    ContextShape shape;
    shape.n_ctx = round_up_cells(cells);
    shape.n_seq_max = static_cast<uint32_t>(ids);
    shape.n_batch = kBatchTokens;
    shape.n_threads = n_threads;
    llama_context * ctx = model.acquire_context(shape);
    MemoryGuard guard{model.context()};
    // The batch holds at most n_batch tokens: a llama_decode call takes no more.
    Batch batch(static_cast<int32_t>(llama_n_batch(ctx)));
    for (const auto & [begin, end] : groups) {
        llama_memory_clear(llama_get_memory(ctx), false);
        score_group(ctx, batch, group_entries(requests, begin, end), n_vocab, out);
    }
    return out;
}

}  // namespace eager
