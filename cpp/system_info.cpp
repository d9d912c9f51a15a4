#include "system_info.hpp"

#include <sys/mman.h>

#include <fstream>
#include <string>

#include "cpu_buffers.hpp"
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"
#include "model.hpp"

namespace eager {

namespace {

const char * device_type_name(enum ggml_backend_dev_type type) {
    switch (type) {
        case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
    }
    return "unknown";
}

}  // namespace

SystemInfo system_info() {
    SystemInfo info;
    info.ggml_version = ggml_version();
    info.ggml_commit = ggml_commit();
    info.backend_features = llama_print_system_info();
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        BackendDevice d;
        d.name = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        d.type = device_type_name(ggml_backend_dev_type(dev));
        ggml_backend_dev_memory(dev, &d.memory_free, &d.memory_total);
        info.devices.push_back(d);
    }
    info.cpu_extra_buffers = offered_cpu_buffers();
    info.default_threads = default_threads();
    info.gpu_offload = llama_supports_gpu_offload();
    return info;
}

int64_t ram_available_bytes() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    int64_t kib = 0;
    std::string unit;
    while (meminfo >> key >> kib >> unit)
        if (key == "MemAvailable:") return kib * 1024;
    return -1;
}

bool address_space_available(int64_t bytes) {
    if (bytes <= 0) return true;
    void * probe = mmap(nullptr, static_cast<size_t>(bytes), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (probe == MAP_FAILED) return false;
    munmap(probe, static_cast<size_t>(bytes));
    return true;
}

int64_t gpu_memory_free_bytes() {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_GPU) continue;
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(dev, &free, &total);
        return static_cast<int64_t>(free);
    }
    return -1;
}

}  // namespace eager
