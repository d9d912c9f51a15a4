#include "cpu_buffers.hpp"

#include <algorithm>
#include <stdexcept>

#include "ggml-backend.h"

namespace eager {

namespace {

// One scope at a time: the array is process-wide, shared with llama-cpp-python's loads.
std::mutex & scope_mutex() {
    static std::mutex m;
    return m;
}

// The CPU backend's null-terminated array of extra buffer types (a static inside ggml-cpu, the
// one make_cpu_buft_list reads), or nullptr when the backend offers none.
ggml_backend_buffer_type_t * extra_buffer_array() {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) return nullptr;
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu);
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
    return get_extra != nullptr ? get_extra(cpu) : nullptr;
}

// The array's entries as the backend first offered them, so a scope can always restore them.
const std::vector<ggml_backend_buffer_type_t> & original_entries() {
    static const std::vector<ggml_backend_buffer_type_t> entries = [] {
        std::vector<ggml_backend_buffer_type_t> out;
        for (ggml_backend_buffer_type_t * p = extra_buffer_array(); p != nullptr && *p != nullptr; ++p)
            out.push_back(*p);
        return out;
    }();
    return entries;
}

bool contains(const std::vector<std::string> & names, const std::string & name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

void write_entries(ggml_backend_buffer_type_t * array, const std::vector<ggml_backend_buffer_type_t> & entries,
                   size_t capacity) {
    // capacity = original entry count; the array holds one more slot, the terminator.
    for (size_t i = 0; i <= capacity; ++i) array[i] = i < entries.size() ? entries[i] : nullptr;
}

}  // namespace

std::vector<std::string> default_guarded_cpu_buffers() { return {"AMX"}; }

CpuBufferPlan plan_cpu_buffers(const std::vector<std::string> & offered, CpuBuffers choice,
                               const std::vector<std::string> & guarded) {
    CpuBufferPlan plan;
    for (const auto & name : offered) {
        const bool keep = choice == CpuBuffers::All || (choice == CpuBuffers::Safe && !contains(guarded, name));
        (keep ? plan.keep : plan.dropped).push_back(name);
    }
    // With nothing left to keep, llama.cpp's own switch says the same without touching the array.
    plan.use_extra_bufts = choice != CpuBuffers::None && !plan.keep.empty();
    return plan;
}

std::vector<std::string> offered_cpu_buffers() {
    // No lock: original_entries() is filled before any scope first narrows the array (a scope's
    // constructor reads it before writing), and is constant after.
    std::vector<std::string> names;
    for (auto * buft : original_entries()) names.emplace_back(ggml_backend_buft_name(buft));
    return names;
}

namespace {
thread_local bool in_scope = false;  // a second scope on the same thread would wait for itself
}  // namespace

CpuBufferScope::CpuBufferScope(const std::vector<std::string> & keep) {
    if (in_scope)
        throw std::logic_error("a model load inside a CPU buffer scope on the same thread (load it outside the "
                               "'with CpuBufferScope' block)");
    lock_ = std::unique_lock<std::mutex>(scope_mutex());
    in_scope = true;
    const auto & original = original_entries();
    ggml_backend_buffer_type_t * array = extra_buffer_array();
    if (array == nullptr) {
        narrowed_ = keep.empty();
        return;
    }
    std::vector<ggml_backend_buffer_type_t> kept;
    for (auto * buft : original)
        if (contains(keep, ggml_backend_buft_name(buft))) kept.push_back(buft);
    write_entries(array, kept, original.size());
    // Read back: the loader sees exactly what this array now holds.
    size_t n = 0;
    while (array[n] != nullptr) ++n;
    narrowed_ = n == kept.size() && std::equal(kept.begin(), kept.end(), array);
}

CpuBufferScope::~CpuBufferScope() {
    ggml_backend_buffer_type_t * array = extra_buffer_array();
    if (array != nullptr) write_entries(array, original_entries(), original_entries().size());
    in_scope = false;
}

}  // namespace eager
