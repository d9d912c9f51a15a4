#include "model.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "errors.hpp"
#include "llama.h"

namespace eager {

namespace {

// llama.cpp logs every tensor it loads and warns about model quirks it already works
// around; only its errors reach a user here, unless EAGER_CPP_VERBOSE is set.
void log_filter(ggml_log_level level, const char * text, void *) {
    static const bool verbose = std::getenv("EAGER_CPP_VERBOSE") != nullptr;
    if (verbose || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

void init_backend_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_filter, nullptr);
        llama_backend_init();
    });
}

int default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 4 : static_cast<int>(n);
}

}  // namespace

Model::Model(const std::string & path, int n_gpu_layers) : path_(path) {
    init_backend_once();
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = n_gpu_layers;
    model_ = llama_model_load_from_file(path.c_str(), params);
    if (model_ == nullptr) throw LlamaError("llama.cpp could not load the model from '" + path + "'");
    vocab_ = llama_model_get_vocab(model_);
}

Model::~Model() {
    if (ctx_ != nullptr) llama_free(ctx_);
    device_.detach(nullptr);
    if (model_ != nullptr) llama_model_free(model_);
}

int Model::n_vocab() const { return llama_vocab_n_tokens(vocab_); }
int Model::n_ctx_train() const { return llama_model_n_ctx_train(model_); }
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

llama_context * Model::acquire_context(const ContextShape & wanted) {
    ContextShape shape = wanted;
    if (shape.n_threads <= 0) shape.n_threads = default_threads();
    const bool fits = ctx_ != nullptr && shape_.n_ctx >= shape.n_ctx && shape_.n_seq_max >= shape.n_seq_max &&
                      shape_.n_batch >= shape.n_batch && shape_.n_threads == shape.n_threads &&
                      shape_.swa_full == shape.swa_full;
    if (!fits) {
        if (ctx_ != nullptr) {
            llama_free(ctx_);
            ctx_ = nullptr;
            device_.detach(nullptr);
        }
        llama_context_params params = llama_context_default_params();
        params.n_ctx = shape.n_ctx;
        params.n_batch = shape.n_batch;
        params.n_ubatch = shape.n_batch;  // a whole step is one micro-batch
        params.n_seq_max = shape.n_seq_max;
        params.n_threads = shape.n_threads;
        params.n_threads_batch = shape.n_threads;
        // A fork then only tags the parent's KV cells with the child's id: no tensor copy.
        params.kv_unified = true;
        params.swa_full = shape.swa_full;
        params.no_perf = true;
        // The engine never asks for two outputs of one sequence in a step; saying so keeps the
        // device samplers' graph and buffers to one row per sequence.
        params.n_outputs_max_per_seq = 1;
        ctx_ = llama_init_from_model(model_, params);
        if (ctx_ == nullptr)
            throw LlamaError("llama.cpp could not create a context with " + std::to_string(shape.n_ctx) +
                             " KV cells; reduce max_sequences, max_new_tokens or n_ctx");
        shape_ = shape;
        shape_.n_ctx = llama_n_ctx(ctx_);
    }
    // Samplers change without a new context: attaching only rebuilds the compute graph.
    if (shape.device.enabled && (!device_.attached() || device_.params() != shape.device)) {
        device_.attach(ctx_, static_cast<int>(shape_.n_seq_max), shape.device);
    } else if (!shape.device.enabled && device_.attached()) {
        device_.detach(ctx_);
    }
    shape_.device = shape.device;
    llama_memory_clear(llama_get_memory(ctx_), true);
    return ctx_;
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
