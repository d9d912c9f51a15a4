// What a bug report needs to know about the llama.cpp this process runs on and the machine under it.
#pragma once

#include <cstddef>
#include <cstdint>
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

// RAM available to a new allocation (MemAvailable in /proc/meminfo), -1 where the system does not say.
int64_t ram_available_bytes();
// Whether this process can map `bytes` more of address space now (its RLIMIT_AS, `ulimit -v`, and the
// kernel's overcommit rules): a mapping that is made and given back at once, touching no page.
bool address_space_available(int64_t bytes);
// Free memory of the first GPU llama.cpp offers, -1 when it offers none.
int64_t gpu_memory_free_bytes();

}  // namespace eager
