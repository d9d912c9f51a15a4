// Which of llama.cpp's CPU "extra" buffer types may hold a model's weights.
//
// llama.cpp's CPU backend offers extra buffer types that repack weights for faster matmuls:
// CPU_REPACK (the AVX2/AVX-512 layout of Q4_0/Q4_K/IQ4_NL, where Q4_K's CPU speed comes from) and,
// on a CPU that reports AMX, AMX. The pinned llama.cpp's AMX matmul executes tile instructions that
// fault (SIGILL at `tilezero`) on some machines that report AMX and pass its own readiness check, so
// by default eager_cpp keeps weights out of AMX and keeps every other extra type.
//
// llama.cpp has no per-type switch (only `use_extra_bufts`, all or none). It builds a model's CPU
// buffer list from the array that `ggml_backend_dev_get_extra_bufts` returns, read once per model
// load; `CpuBufferScope` narrows that array for the duration of a load and restores it after.
#pragma once

#include <mutex>
#include <string>
#include <vector>

namespace eager {

enum class CpuBuffers {
    Safe,  // every extra buffer type except the guarded ones (default)
    All,   // every extra buffer type, AMX included (opt-in where AMX works)
    None,  // no extra buffer type: llama.cpp's use_extra_bufts = false
};

struct CpuBufferPlan {
    bool use_extra_bufts = true;       // llama_model_params.use_extra_bufts
    std::vector<std::string> keep;     // extra buffer types the load may use, in llama.cpp's order
    std::vector<std::string> dropped;  // offered types kept out of this load
};

// Guarded by default: the AMX buffer type (its name in ggml-cpu/amx).
std::vector<std::string> default_guarded_cpu_buffers();

// The decision, from the names alone: pure, so it is tested without a model or an AMX CPU.
CpuBufferPlan plan_cpu_buffers(const std::vector<std::string> & offered, CpuBuffers choice,
                               const std::vector<std::string> & guarded);

// Names of the extra buffer types the CPU backend offers on this machine, in its order (as first
// seen, whatever a scope currently narrows).
std::vector<std::string> offered_cpu_buffers();

// Narrows the CPU backend's extra buffer types to `keep` while it lives (one scope at a time in the
// process; model loads inside it see only those types). `narrowed()` is false when the array could
// not be rewritten as asked; the caller then loads with use_extra_bufts = false.
class CpuBufferScope {
public:
    explicit CpuBufferScope(const std::vector<std::string> & keep);
    ~CpuBufferScope();
    CpuBufferScope(const CpuBufferScope &) = delete;
    CpuBufferScope & operator=(const CpuBufferScope &) = delete;

    bool narrowed() const { return narrowed_; }

private:
    std::unique_lock<std::mutex> lock_;
    bool narrowed_ = false;
};

}  // namespace eager
