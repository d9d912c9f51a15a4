// What a bug report needs to know about the llama.cpp this process runs on and the machine under it.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace eager {

struct BackendDevice {
    std::string name;
    std::string description;
    std::string type;  // "cpu", "gpu", "igpu" or "accel"
    size_t memory_total = 0;
    size_t memory_free = 0;
};

struct SystemInfo {
    std::string ggml_version;
    std::string ggml_commit;
    std::string backend_features;  // llama_print_system_info: the features each backend was compiled with
    std::vector<BackendDevice> devices;
    std::vector<std::string> cpu_extra_buffers;  // offered by the CPU backend on this machine
    int default_threads = 0;
    bool gpu_offload = false;
};

SystemInfo system_info();

}  // namespace eager
