// Error types of the core. The binding maps them to Python exceptions, so a caller sees a
// ValueError for bad arguments and a RuntimeError for llama.cpp failures, never a crash.
#pragma once

#include <stdexcept>
#include <string>

namespace eager {

// The caller passed something that cannot work (maps to ValueError).
struct InvalidArgument : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// llama.cpp refused or failed (maps to RuntimeError).
struct LlamaError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The run was stopped from outside (Ctrl-C); the binding re-raises the pending Python error.
struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("interrupted") {}
};

}  // namespace eager
