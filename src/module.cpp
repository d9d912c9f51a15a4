#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "eager_cpp's native core: llama.cpp model ownership, the batched EAGer engine, entropy kernels.";
    // InvalidArgument derives from std::invalid_argument (-> ValueError) and LlamaError from
    // std::runtime_error (-> RuntimeError), which pybind11 translates already.
    bind_system(m);  // first: Model's constructor defaults to its CpuBuffers enum
    bind_model(m);
    bind_engine(m);
    bind_kernels(m);
    bind_policies(m);  // after bind_engine: it uses the Method and ThresholdMode enums
}
