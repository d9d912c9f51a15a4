#include "row_kernel.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define EAGER_HAVE_SSE2 1
#endif

namespace eager {

namespace {

constexpr int kBlock = 64;  // floats per block whose maximum decides whether to look closer

// Probabilities below exp(-kSampleLogitSpan) relative to the best token are dropped from
// sampling: 262,144 such tokens carry < 3e-8 of the mass in total.
constexpr float kSampleLogitSpan = 30.0f;

inline float block_max(const float * x) {
#ifdef EAGER_HAVE_SSE2
    __m128 m0 = _mm_loadu_ps(x), m1 = _mm_loadu_ps(x + 4), m2 = _mm_loadu_ps(x + 8), m3 = _mm_loadu_ps(x + 12);
    for (int i = 16; i < kBlock; i += 16) {
        m0 = _mm_max_ps(m0, _mm_loadu_ps(x + i));
        m1 = _mm_max_ps(m1, _mm_loadu_ps(x + i + 4));
        m2 = _mm_max_ps(m2, _mm_loadu_ps(x + i + 8));
        m3 = _mm_max_ps(m3, _mm_loadu_ps(x + i + 12));
    }
    __m128 m = _mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(m);
#else
    float lanes[8];
    for (int l = 0; l < 8; ++l) lanes[l] = x[l];
    for (int i = 8; i < kBlock; i += 8)
        for (int l = 0; l < 8; ++l) lanes[l] = lanes[l] > x[i + l] ? lanes[l] : x[i + l];
    float m = lanes[0];
    for (int l = 1; l < 8; ++l) m = m > lanes[l] ? m : lanes[l];
    return m;
#endif
}

// Inserts (id, v) where id is larger than every id already held, so an equal logit ranks
// after the existing ones.
inline void topk_insert(TopK & top, int32_t id, float v) {
    int pos = top.size;
    while (pos > 0 && top.items[pos - 1].logit < v) --pos;
    if (pos >= top.k) return;
    const int last = std::min(top.size, top.k - 1);
    for (int i = last; i > pos; --i) top.items[i] = top.items[i - 1];
    top.items[pos] = {id, v};
    if (top.size < top.k) ++top.size;
}

}  // namespace

void scan_row(const float * logits, int n_vocab, int k, TopK & top) {
    top.k = std::clamp(k, 1, kMaxEntropyTopK);
    top.size = 0;
    int i = 0;
    for (; i + kBlock <= n_vocab; i += kBlock) {
        // Nothing in this block can enter the top-K.
        if (top.size == top.k && block_max(logits + i) <= top.items[top.k - 1].logit) continue;
        for (int j = 0; j < kBlock; ++j) {
            const float v = logits[i + j];
            if (top.size < top.k || v > top.items[top.k - 1].logit) topk_insert(top, i + j, v);
        }
    }
    for (; i < n_vocab; ++i) {
        const float v = logits[i];
        if (top.size < top.k || v > top.items[top.k - 1].logit) topk_insert(top, i, v);
    }
}

void collect_at_least(const float * logits, int n_vocab, float threshold, std::vector<int32_t> & ids,
                      std::vector<float> & values) {
    ids.clear();
    values.clear();
    auto take = [&](int32_t id) {
        ids.push_back(id);
        values.push_back(logits[id]);
    };
    int i = 0;
#ifdef EAGER_HAVE_SSE2
    const __m128 t = _mm_set1_ps(threshold);
    for (; i + 16 <= n_vocab; i += 16) {
        unsigned mask = static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(logits + i), t))) |
                        static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(logits + i + 4), t))) << 4 |
                        static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(logits + i + 8), t))) << 8 |
                        static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(logits + i + 12), t))) << 12;
        while (mask != 0) {
            take(i + __builtin_ctz(mask));
            mask &= mask - 1;
        }
    }
#endif
    for (; i < n_vocab; ++i)
        if (logits[i] >= threshold) take(i);
}

float topk_entropy_of(const TopK & top, int k, float temperature) {
    const int n = std::min(k, top.size);
    if (n <= 0) return 0.0f;
    const double m = top.items[0].logit;
    if (!std::isfinite(m)) return 0.0f;
    const double inv_t = 1.0 / (temperature > 0.0f ? temperature : 1.0f);
    double z = 0.0, weighted = 0.0;
    for (int i = 0; i < n; ++i) {
        const double x = (static_cast<double>(top.items[i].logit) - m) * inv_t;
        if (!std::isfinite(x)) continue;  // -inf logits have probability 0
        const double w = std::exp(x);
        z += w;
        weighted += w * x;
    }
    // H = -sum p log p with p = w / z and log p = x - log z.
    const double h = std::log(z) - weighted / z;
    return static_cast<float>(h > 0.0 ? h : 0.0);
}

namespace {

// exp(x) for x <= 0 in float, Cephes' polynomial (about 1 ulp), written so the compiler
// vectorizes the loop that calls it; -inf gives 0.
inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float fx = x * 1.44269504088896341f + 0.5f;
    int32_t n = static_cast<int32_t>(fx);
    n -= static_cast<float>(n) > fx ? 1 : 0;  // floor for negative values
    const float nf = static_cast<float>(n);
    x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    const float z = x * x;
    float y = 1.9875691500E-4f;
    y = y * x + 1.3981999507E-3f;
    y = y * x + 8.3334519073E-3f;
    y = y * x + 4.1665795894E-2f;
    y = y * x + 1.6666665459E-1f;
    y = y * x + 5.0000001201E-1f;
    y = y * z + x + 1.0f;
    int32_t bits = (n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return y * scale;
}

int32_t sample_from_candidates(std::vector<int32_t> & ids, std::vector<float> & values, float max_logit,
                               const SamplingParams & sp, double u) {
    size_t n = ids.size();
    if (n == 0) return -1;
    if (sp.top_k > 0 || sp.top_p < 1.0f) {
        // Rare options: order the candidates by logit (ties to the lower id), then cut.
        std::vector<size_t> order(n);
        for (size_t i = 0; i < n; ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
            return values[a] > values[b] || (values[a] == values[b] && ids[a] < ids[b]);
        });
        if (sp.top_k > 0 && static_cast<size_t>(sp.top_k) < n) order.resize(sp.top_k);
        std::vector<int32_t> sorted_ids(order.size());
        std::vector<float> sorted_values(order.size());
        for (size_t i = 0; i < order.size(); ++i) {
            sorted_ids[i] = ids[order[i]];
            sorted_values[i] = values[order[i]];
        }
        ids.swap(sorted_ids);
        values.swap(sorted_values);
        n = ids.size();
    }
    const float inv_t = 1.0f / sp.temperature;
    float * w = values.data();
    for (size_t i = 0; i < n; ++i) w[i] = exp_nonpositive((w[i] - max_logit) * inv_t);
    if (sp.min_p > 0.0f)  // the best token has weight 1, so p >= min_p * p_max is w >= min_p
        for (size_t i = 0; i < n; ++i) w[i] = w[i] < sp.min_p ? 0.0f : w[i];
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) total += w[i];
    if (sp.top_p < 1.0f) {
        double kept = 0.0;
        size_t keep = 0;
        while (keep < n && kept < sp.top_p * total) kept += w[keep++];
        n = std::max<size_t>(keep, 1);
        total = kept > 0.0 ? kept : w[0];
    }
    double target = u * total;
    for (size_t i = 0; i < n; ++i) {
        target -= w[i];
        if (target < 0.0 && w[i] > 0.0f) return ids[i];
    }
    // Rounding left a sliver of the target: the last token with weight takes it.
    for (size_t i = n; i-- > 0;)
        if (w[i] > 0.0f) return ids[i];
    return ids[0];
}

}  // namespace

RowResult process_row(const float * logits, int n_vocab, const RowRequest & request, double u, RowScratch & scratch) {
    RowResult out;
    const bool greedy = !(request.sampling.temperature > 0.0f);
    const float margin = greedy ? -1.0f : kSampleLogitSpan * request.sampling.temperature;
    const int k = request.want_entropy ? std::max(2, request.entropy_k) : 2;
    TopK top;
    scan_row(logits, n_vocab, k, top);
    out.top1 = top.size > 0 ? top.items[0].id : -1;
    out.top2 = top.size > 1 ? top.items[1].id : out.top1;
    out.entropy = request.want_entropy ? topk_entropy_of(top, request.entropy_k, request.entropy_temperature)
                                       : std::numeric_limits<float>::quiet_NaN();
    out.sampled = out.top1;
    if (!greedy && top.size > 0 && std::isfinite(top.items[0].logit)) {
        const float max_logit = top.items[0].logit;
        collect_at_least(logits, n_vocab, max_logit - margin, scratch.ids, scratch.values);
        const int32_t t = sample_from_candidates(scratch.ids, scratch.values, max_logit, request.sampling, u);
        if (t >= 0) out.sampled = t;
    }
    return out;
}

RowResult process_candidates(const int32_t * ids, const float * logits, int n, float entropy,
                             const RowRequest & request, double u, RowScratch & scratch) {
    RowResult out;
    // Top-2 by logit, ties to the lower id, as the host scan orders them.
    auto better = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && ids[a] < ids[b]); };
    int first = -1, second = -1;
    for (int i = 0; i < n; ++i) {
        if (first < 0 || better(i, first)) {
            second = first;
            first = i;
        } else if (second < 0 || better(i, second)) {
            second = i;
        }
    }
    out.top1 = first >= 0 ? ids[first] : -1;
    out.top2 = second >= 0 ? ids[second] : out.top1;
    out.entropy = request.want_entropy ? entropy : std::numeric_limits<float>::quiet_NaN();
    out.sampled = out.top1;
    const bool greedy = !(request.sampling.temperature > 0.0f);
    if (!greedy && first >= 0 && std::isfinite(logits[first])) {
        const float max_logit = logits[first];
        const float threshold = max_logit - kSampleLogitSpan * request.sampling.temperature;
        // Ascending ids, as collect_at_least yields them, so the same draw picks the same token.
        scratch.pairs.clear();
        for (int i = 0; i < n; ++i)
            if (logits[i] >= threshold) scratch.pairs.push_back({ids[i], logits[i]});
        std::sort(scratch.pairs.begin(), scratch.pairs.end(),
                  [](const TokenLogit & a, const TokenLogit & b) { return a.id < b.id; });
        scratch.ids.resize(scratch.pairs.size());
        scratch.values.resize(scratch.pairs.size());
        for (size_t i = 0; i < scratch.pairs.size(); ++i) {
            scratch.ids[i] = scratch.pairs[i].id;
            scratch.values[i] = scratch.pairs[i].logit;
        }
        const int32_t t = sample_from_candidates(scratch.ids, scratch.values, max_logit, request.sampling, u);
        if (t >= 0) out.sampled = t;
    }
    return out;
}

void top_of_candidates(const int32_t * ids, const float * logits, int n, int k, TopK & top) {
    top.k = std::clamp(k, 1, kMaxEntropyTopK);
    top.size = 0;
    std::vector<TokenLogit> pairs(static_cast<size_t>(std::max(n, 0)));
    for (int i = 0; i < n; ++i) pairs[i] = {ids[i], logits[i]};
    const int take = std::min(top.k, n);
    std::partial_sort(pairs.begin(), pairs.begin() + take, pairs.end(), [](const TokenLogit & a, const TokenLogit & b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    });
    for (int i = 0; i < take; ++i) top.items[i] = pairs[i];
    top.size = take;
}

int32_t nth_not_excluded(const TopK & top, const std::vector<int32_t> & exclude, int rank) {
    int seen = 0;
    for (int i = 0; i < top.size; ++i) {
        const int32_t id = top.items[i].id;
        if (std::find(exclude.begin(), exclude.end(), id) != exclude.end()) continue;
        if (++seen == rank) return id;
    }
    return -1;
}

}  // namespace eager
