#include "model.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <regex>
#include <thread>

#include "errors.hpp"
#include "llama.h"
#include "llama_log.hpp"
#include "stream_state.hpp"
#include "system_info.hpp"

namespace eager {

// llama.cpp logs every tensor it loads and warns about model quirks it already works
// around; only its errors reach a user here, unless EAGER_CPP_VERBOSE is set.
void log_filter(ggml_log_level level, const char * text, void *) {
    static const bool verbose = std::getenv("EAGER_CPP_VERBOSE") != nullptr;
    if (verbose || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

// The log callback is process-wide: one swap at a time.
std::mutex & log_mutex() {
    static std::mutex m;
    return m;
}

namespace {

void init_backend_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_filter, nullptr);
        llama_backend_init();
    });
}

// Our own callback while it lives, the previous one restored after. When a load in another thread
// holds the log, its callback (ours, in C) is installed already: nothing to swap, and no waiting (a
// Model freed with the GIL held must not wait for another thread's load).
class QuietLog {
public:
    QuietLog() : lock_(log_mutex(), std::try_to_lock) {
        if (!lock_.owns_lock()) return;
        llama_log_get(&previous_, &previous_data_);
        llama_log_set(log_filter, nullptr);
    }
    ~QuietLog() {
        if (lock_.owns_lock()) llama_log_set(previous_, previous_data_);
    }
    QuietLog(const QuietLog &) = delete;
    QuietLog & operator=(const QuietLog &) = delete;

private:
    std::unique_lock<std::mutex> lock_;
    ggml_log_callback previous_ = nullptr;
    void * previous_data_ = nullptr;
};

// llama.cpp's log during one model load: its error lines go into the exception when the load
// fails (llama.cpp prints the cause, e.g. a bad GGUF version, only to its log), and its
// "<name> model buffer size = <n> MiB" lines say which buffer types hold the weights.
class LoadLog {
public:
    LoadLog() : lock_(log_mutex()) {
        llama_log_get(&previous_, &previous_data_);
        llama_log_set(&LoadLog::callback, this);
    }
    ~LoadLog() { llama_log_set(previous_, previous_data_); }
    LoadLog(const LoadLog &) = delete;
    LoadLog & operator=(const LoadLog &) = delete;

    std::vector<WeightBuffer> weight_buffers() const {
        static const std::regex line(R"(^\S+:\s+(\S+) model buffer size =\s*([0-9.]+) MiB)");
        std::vector<WeightBuffer> out;
        std::smatch m;
        for (const auto & [level, text] : lines_)
            if (std::regex_search(text, m, line)) out.push_back({m[1].str(), std::stod(m[2].str())});
        return out;
    }

    // The layers of each KV cache llama.cpp made ("llama_kv_cache: size = ... (256 cells, 3 layers, ..."),
    // in the order it made them: an iswa cache makes its full layers' first, then its window layers'.
    std::vector<int> kv_cache_layers() const {
        static const std::regex line(R"(llama_kv_cache: size =.*\(\s*[0-9]+ cells,\s*([0-9]+) layers)");
        std::vector<int> out;
        std::smatch m;
        for (const auto & [level, text] : lines_)
            if (std::regex_search(text, m, line)) out.push_back(std::stoi(m[1].str()));
        return out;
    }

    // The last few error lines, joined, or "" when llama.cpp logged none.
    std::string errors(size_t most = 3) const {
        std::vector<std::string> picked;
        for (auto it = lines_.rbegin(); it != lines_.rend() && picked.size() < most; ++it)
            if (it->first == GGML_LOG_LEVEL_ERROR) picked.insert(picked.begin(), it->second);
        std::string out;
        for (const auto & text : picked) out += (out.empty() ? "" : "; ") + text;
        return out;
    }

private:
    static void callback(ggml_log_level level, const char * text, void * data) {
        auto * self = static_cast<LoadLog *>(data);
        log_filter(level, text, nullptr);
        // The callback is process-wide: lines from other threads (another Model's decode or free,
        // llama-cpp-python) are printed as usual but are not this load's, and are not kept.
        if (std::this_thread::get_id() != self->loader_) return;
        if (level != GGML_LOG_LEVEL_CONT) self->level_ = level;
        self->partial_ += text;
        size_t start = 0, end;
        while ((end = self->partial_.find('\n', start)) != std::string::npos) {
            if (end > start) self->lines_.emplace_back(self->level_, self->partial_.substr(start, end - start));
            start = end + 1;
        }
        self->partial_.erase(0, start);
    }

    std::lock_guard<std::mutex> lock_;
    std::thread::id loader_ = std::this_thread::get_id();
    ggml_log_callback previous_ = nullptr;
    void * previous_data_ = nullptr;
    ggml_log_level level_ = GGML_LOG_LEVEL_INFO;
    std::string partial_;
    std::vector<std::pair<ggml_log_level, std::string>> lines_;
};

}  // namespace

// llama.cpp does not say which layers slide, only logs it when it makes a cache: a smallest context
// (256 cells, one sequence, a one-token batch) with the window cache shows the split.
static KvLayers probe_kv_layers(llama_model * model) {
    KvLayers layers;
    layers.full = llama_model_n_layer(model);
    layers.n_swa = llama_model_n_swa(model);
    if (layers.n_swa <= 0) return layers;
    llama_context_params params = llama_context_default_params();
    params.n_ctx = 256;
    params.n_batch = 1;
    params.n_ubatch = 1;
    params.n_seq_max = 1;
    params.n_threads = 1;
    params.n_threads_batch = 1;
    params.swa_full = false;
    params.no_perf = true;
    std::vector<int> caches;
    {
        LoadLog log;
        llama_context * ctx = llama_init_from_model(model, params);
        caches = log.kv_cache_layers();
        if (ctx != nullptr) llama_free(ctx);
    }
    if (caches.size() == 2) {
        layers.full = caches[0];
        layers.window = caches[1];
    } else {
        layers.n_swa = 0;  // one cache after all: every layer spans every cell
    }
    return layers;
}

int default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 4 : static_cast<int>(n);
}

Model::Model(const std::string & path, int n_gpu_layers, CpuBuffers cpu_buffers,
             const std::vector<std::string> & guarded)
    : path_(path), offloaded_(n_gpu_layers != 0 && llama_supports_gpu_offload()) {
    init_backend_once();
    cpu_plan_ = plan_cpu_buffers(offered_cpu_buffers(), cpu_buffers, guarded);
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = n_gpu_layers;
    std::string load_errors;
    {
        // The scope also serialises loads, so the log captured is this load's.
        CpuBufferScope scope(cpu_plan_.keep);
        // A scope that could not narrow the types falls back to none rather than risk a guarded one.
        params.use_extra_bufts = cpu_plan_.use_extra_bufts && (scope.narrowed() || cpu_plan_.dropped.empty());
        if (!params.use_extra_bufts && cpu_plan_.use_extra_bufts) {
            cpu_plan_.dropped.insert(cpu_plan_.dropped.end(), cpu_plan_.keep.begin(), cpu_plan_.keep.end());
            cpu_plan_.keep.clear();
            cpu_plan_.use_extra_bufts = false;
        }
        LoadLog log;
        model_ = llama_model_load_from_file(path.c_str(), params);
        weight_buffers_ = log.weight_buffers();
        load_errors = log.errors();
    }
    if (model_ == nullptr)
        throw LlamaError("llama.cpp could not load the model from '" + path + "'" +
                         (load_errors.empty() ? std::string() : ": " + load_errors));
    vocab_ = llama_model_get_vocab(model_);
    kv_layers_ = probe_kv_layers(model_);
}

Model::~Model() {
    // llama.cpp logs while freeing. The process-wide log callback may be llama-cpp-python's, a
    // ctypes function that crashes when called while Python finalises (a Model freed at exit), so
    // our own C callback serves for the frees.
    QuietLog quiet;
    if (ctx_ != nullptr) llama_free(ctx_);
    device_.detach(nullptr);
    if (model_ != nullptr) llama_model_free(model_);
}

int Model::n_vocab() const { return llama_vocab_n_tokens(vocab_); }
int Model::n_ctx_train() const { return llama_model_n_ctx_train(model_); }

double Model::kv_bytes_per_cell() const {
    const std::string arch = meta("general.architecture");
    const auto meta_int = [&](const std::string & key, int64_t fallback) -> int64_t {
        const std::string v = meta(key);
        if (v.empty()) return fallback;
        try {
            return std::stoll(v);
        } catch (...) {
            return fallback;
        }
    };
    const int64_t head_dim = llama_model_n_embd(model_) / std::max(1, llama_model_n_head(model_));
    const int64_t k = meta_int(arch + ".attention.key_length", head_dim);
    const int64_t v = meta_int(arch + ".attention.value_length", head_dim);
    return 2.0 * llama_model_n_layer(model_) * llama_model_n_head_kv(model_) * static_cast<double>(k + v);
}

int64_t Model::memory_available_bytes() const {
    // Offloaded layers keep their KV cache on the device: the free memory of the first GPU counts.
    const int64_t gpu_free = offloaded_ ? gpu_memory_free_bytes() : -1;
    if (gpu_free >= 0) return gpu_free;
    const int64_t ram = ram_available_bytes();
    return ram >= 0 ? ram : 4LL * 1024 * 1024 * 1024;  // no /proc: assume a small machine
}
bool Model::add_bos() const { return llama_vocab_get_add_bos(vocab_); }

std::string Model::description() const {
    char buf[256];
    const int n = llama_model_desc(model_, buf, sizeof(buf));
    return n > 0 ? std::string(buf, std::min<int>(n, sizeof(buf) - 1)) : std::string();
}

std::string Model::meta(const std::string & key) const {
    std::vector<char> buf(256);
    int n = llama_model_meta_val_str(model_, key.c_str(), buf.data(), buf.size());
    if (n < 0) return "";
    if (static_cast<size_t>(n) >= buf.size()) {
        buf.resize(n + 1);
        n = llama_model_meta_val_str(model_, key.c_str(), buf.data(), buf.size());
    }
    return std::string(buf.data(), n);
}

std::string Model::builtin_chat_template() const {
    const char * tmpl = llama_model_chat_template(model_, nullptr);
    return tmpl != nullptr ? std::string(tmpl) : std::string();
}

std::vector<int32_t> Model::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    std::vector<int32_t> tokens(text.size() + 8);
    int n = llama_tokenize(vocab_, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                           static_cast<int32_t>(tokens.size()), add_special, parse_special);
    if (n == INT32_MIN) throw InvalidArgument("text too long to tokenize");
    if (n < 0) {
        tokens.resize(-n);
        n = llama_tokenize(vocab_, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                           static_cast<int32_t>(tokens.size()), add_special, parse_special);
        if (n < 0) throw LlamaError("tokenization failed");
    }
    tokens.resize(n);
    return tokens;
}

std::string Model::token_to_piece(int32_t token) const {
    char buf[128];
    int n = llama_token_to_piece(vocab_, token, buf, sizeof(buf), 0, false);
    if (n >= 0) return std::string(buf, n);
    std::string big(-n, '\0');
    n = llama_token_to_piece(vocab_, token, big.data(), static_cast<int32_t>(big.size()), 0, false);
    big.resize(std::max(n, 0));
    return big;
}

std::string Model::detokenize(const std::vector<int32_t> & tokens) const {
    // Concatenating the byte pieces keeps a UTF-8 character that spans two tokens whole.
    std::string out;
    for (int32_t t : tokens) out += token_to_piece(t);
    return out;
}

bool Model::is_eog(int32_t token) const { return llama_vocab_is_eog(vocab_, token); }

std::string Model::apply_chat_template(const std::vector<std::pair<std::string, std::string>> & messages,
                                       const std::string & template_or_name) const {
    std::string tmpl = template_or_name.empty() ? builtin_chat_template() : template_or_name;
    if (tmpl.empty())
        throw InvalidArgument("the model has no chat template in its GGUF metadata; pass chat_template= "
                              "with a llama.cpp built-in name (e.g. 'chatml') or a template text");
    std::vector<llama_chat_message> chat;
    size_t total = 0;
    for (const auto & [role, content] : messages) {
        chat.push_back({role.c_str(), content.c_str()});
        total += role.size() + content.size();
    }
    std::vector<char> buf(2 * total + 256);
    int n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), true, buf.data(),
                                      static_cast<int32_t>(buf.size()));
    if (n < 0)
        throw InvalidArgument("chat template not supported by llama.cpp: pass one of the built-in names ("
                              "eager_cpp.builtin_chat_templates()) or a template llama.cpp recognises");
    if (static_cast<size_t>(n) > buf.size()) {
        buf.resize(n);
        n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), true, buf.data(),
                                      static_cast<int32_t>(buf.size()));
    }
    return std::string(buf.data(), n);
}

int64_t Model::kv_bytes(const ContextShape & shape) const {
    const int64_t streams = shape.kv_unified ? 1 : std::max<uint32_t>(1, shape.n_seq_max);
    const int64_t per_stream = shape.n_ctx / streams;
    const double per_layer = kv_bytes_per_cell() / std::max(1, kv_layers_.full + kv_layers_.window);
    int64_t window_cells = per_stream;
    if (!shape.swa_full && kv_layers_.window > 0)
        window_cells = std::min(per_stream, kv_layers_.window_cells(shape.kv_unified ? shape.n_seq_max : 1, shape.n_batch));
    return static_cast<int64_t>(
        streams * per_layer * (per_stream * static_cast<double>(kv_layers_.full) + window_cells * static_cast<double>(kv_layers_.window)));
}

int64_t Model::context_bytes(const ContextShape & shape) const {
    // The KV cells, llama.cpp's compute buffer (its largest tensor the logits of a whole micro-batch) and its
    // output buffer (a logits row per sequence id), and room for the activations and the scheduler's graph.
    const int64_t row = static_cast<int64_t>(n_vocab()) * static_cast<int64_t>(sizeof(float));
    return kv_bytes(shape) +
           row * (static_cast<int64_t>(shape.n_batch) + static_cast<int64_t>(shape.n_seq_max)) + (64LL << 20);
}

llama_context * Model::init_context(const ContextShape & shape) const {
    // llama.cpp asserts, ending the process, when a small allocation fails after its large buffers fit: a
    // context is only tried when the memory it takes can be mapped (on the CPU, where those buffers live).
    if (!offloaded_ && !address_space_available(context_bytes(shape))) return nullptr;
    llama_context_params params = llama_context_default_params();
    params.n_ctx = shape.n_ctx;
    params.n_batch = shape.n_batch;
    params.n_ubatch = shape.n_batch;  // a whole step is one micro-batch
    params.n_seq_max = shape.n_seq_max;
    params.n_threads = shape.n_threads;
    params.n_threads_batch = shape.n_threads;
    // Unified: a fork only tags the parent's KV cells with the child's id, no tensor copy. Streams: a
    // fork copies the parent's stream (kv_copy.hpp).
    params.kv_unified = shape.kv_unified;
    params.swa_full = shape.swa_full;
    params.no_perf = true;
    // The engine never asks for two outputs of one sequence in a step; saying so keeps the
    // device samplers' graph and buffers to one row per sequence.
    params.n_outputs_max_per_seq = 1;
    return llama_init_from_model(model_, params);
}

void Model::create_context(const ContextShape & shape) {
    if (ctx_ != nullptr) {
        llama_free(ctx_);
        ctx_ = nullptr;
        device_.detach(nullptr);
    }
    ctx_ = init_context(shape);
    if (ctx_ == nullptr)
        throw LlamaError("llama.cpp could not create a context with " + std::to_string(shape.n_ctx) + " KV cells and " +
                         std::to_string(shape.n_seq_max) + " sequence ids: it takes about " +
                         std::to_string(context_bytes(shape) >> 20) + " MiB (the KV cache and llama.cpp's compute " +
                         "and output buffers), more than this process can allocate (the memory available, or its " +
                         "address-space limit: ulimit -v, RLIMIT_AS); lower kv_memory (or n_ctx), max_sequences or " +
                         "max_new_tokens, or free memory");
    shape_ = shape;
    shape_.n_ctx = llama_n_ctx(ctx_);
    shape_.device = DeviceTopKParams{};
}

llama_context * Model::acquire_context(const ContextShape & wanted) {
    ContextShape shape = wanted;
    if (shape.n_threads <= 0) shape.n_threads = default_threads();
    // Streams split the cells evenly across the ids: a reused context keeps them only with the same
    // number of ids, so each stream is at least as long as asked.
    const bool ids_fit = shape.kv_unified ? shape_.n_seq_max >= shape.n_seq_max : shape_.n_seq_max == shape.n_seq_max;
    // Streams with the window cache grow only at the sizes the run planned (grown_stream_cells): a larger
    // context left by another run would size the window cache and wrap it differently.
    const bool size_fits = !shape.kv_unified && !shape.swa_full ? shape_.n_ctx == shape.n_ctx : shape_.n_ctx >= shape.n_ctx;
    const bool fits = ctx_ != nullptr && size_fits && ids_fit && shape_.n_batch >= shape.n_batch &&
                      shape_.n_threads == shape.n_threads && shape_.swa_full == shape.swa_full &&
                      shape_.kv_unified == shape.kv_unified;
    if (!fits) create_context(shape);
    // Samplers change without a new context: attaching only rebuilds the compute graph.
    if (shape.device.enabled && (!device_.attached() || device_.params() != shape.device)) {
        device_.attach(ctx_, static_cast<int>(shape_.n_seq_max), shape.device);
    } else if (!shape.device.enabled && device_.attached()) {
        device_.detach(ctx_);
    }
    shape_.device = shape.device;
    // A new context's buffer is zeroed by llama.cpp; a reused one was cleared after its last run (batch.hpp).
    llama_memory_clear(llama_get_memory(ctx_), false);
    return ctx_;
}

bool Model::replace_context(const ContextShape & shape) {
    // The new context is made while the old one still holds the run's cells: when llama.cpp cannot allocate
    // it, the run goes on in the old one (freeing it first would take less memory at the peak, but a failure
    // would then leave nothing to go on in).
    llama_context * replacement = init_context(shape);
    if (replacement == nullptr) return false;
    llama_free(ctx_);
    device_.detach(nullptr);
    ctx_ = replacement;
    shape_.n_seq_max = llama_n_seq_max(ctx_);
    shape_.n_ctx = llama_n_ctx(ctx_);
    if (shape.device.enabled) device_.attach(ctx_, static_cast<int>(shape_.n_seq_max), shape.device);
    shape_.device = shape.device;
    return true;
}

bool Model::grow_context(uint32_t n_ctx) {
    if (ctx_ == nullptr) throw LlamaError("no context to grow");
    if (llama_n_ctx(ctx_) >= n_ctx) return true;
    // The whole cache (sequence id -1): every used cell with its position and all its sequences, so
    // cells that several sequences share stay shared; with streams, each stream's cells into the same
    // stream of the larger context, from its cell 0 (the caller has let a decode apply llama.cpp's queued
    // stream copies first: their data would be missing from the state).
    std::vector<uint8_t> cells;
    try {
        cells.resize(llama_state_seq_get_size(ctx_, -1));
    } catch (const std::bad_alloc &) {
        return false;  // no memory even for the copy: the context stays as it is
    }
    const size_t size = cells.size();
    if (size == 0 || llama_state_seq_get_data(ctx_, cells.data(), size, -1) != size)
        throw LlamaError("could not copy the KV cache out to grow it to " + std::to_string(n_ctx) + " cells");
    ContextShape shape = shape_;
    shape.n_ctx = n_ctx;
    if (!replace_context(shape)) return false;
    if (llama_state_seq_set_data(ctx_, cells.data(), size, -1) != size)
        throw LlamaError("could not copy the KV cache back into a context of " + std::to_string(n_ctx) + " cells");
    return true;
}

bool Model::reshape_streams(uint32_t n_seq_max, uint32_t n_ctx,
                            const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves) {
    if (ctx_ == nullptr) throw LlamaError("no context to reshape");
    // Each moved sequence's cells out of the old context while it still holds them; the caller has let a
    // decode apply llama.cpp's queued stream copies first (grow_context says why).
    // llama.cpp restores a sequence only into a context with as many streams: each state is rewritten for the
    // new count and its new stream (stream_state.hpp).
    const auto save = [this](llama_seq_id id, llama_state_seq_flags flags) {
        std::vector<uint8_t> state(llama_state_seq_get_size_ext(ctx_, id, flags));
        if (state.empty() || llama_state_seq_get_data_ext(ctx_, state.data(), state.size(), id, flags) != state.size())
            throw LlamaError("could not copy sequence " + std::to_string(id) + "'s KV stream out");
        return state;
    };
    const uint32_t streams_before = llama_n_seq_max(ctx_);
    std::vector<std::vector<uint8_t>> states(moves.size());
    try {
        for (size_t i = 0; i < moves.size(); ++i)
            states[i] = retarget_stream_state(save(moves[i].first, LLAMA_STATE_SEQ_FLAGS_NONE),
                                              save(moves[i].first, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY), streams_before,
                                              static_cast<uint32_t>(moves[i].first), n_seq_max,
                                              static_cast<uint32_t>(moves[i].second));
    } catch (const std::bad_alloc &) {
        return false;  // no memory even for the copies: the context stays as it is
    }
    ContextShape shape = shape_;
    shape.n_seq_max = n_seq_max;
    shape.n_ctx = n_ctx;
    if (!replace_context(shape)) return false;
    for (size_t i = 0; i < moves.size(); ++i) {
        const size_t size = states[i].size();
        if (llama_state_seq_set_data(ctx_, states[i].data(), size, moves[i].second) != size)
            throw LlamaError("could not copy sequence " + std::to_string(moves[i].first) + "'s KV stream into stream " +
                             std::to_string(moves[i].second) + " of a context of " + std::to_string(n_ctx) + " cells");
    }
    return true;
}

std::vector<std::string> builtin_chat_templates() {
    std::vector<const char *> names(128);
    int n = llama_chat_builtin_templates(names.data(), names.size());
    if (n > static_cast<int>(names.size())) {
        names.resize(n);
        n = llama_chat_builtin_templates(names.data(), names.size());
    }
    return std::vector<std::string>(names.begin(), names.begin() + n);
}

}  // namespace eager
