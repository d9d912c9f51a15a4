// llama.cpp's log callback is one per process: who may swap it, and what of it is printed.
#pragma once

#include <mutex>

#include "ggml.h"

namespace eager {

// Only llama.cpp's errors are printed (everything with EAGER_CPP_VERBOSE set).
void log_filter(ggml_log_level level, const char * text, void * data);

// Held by whoever swaps the callback for a while (a model load, a traced run).
std::mutex & log_mutex();

}  // namespace eager
