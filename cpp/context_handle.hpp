// The llama.cpp context a run decodes with, read at each use. Growing the KV cache
// (Model::grow_context) replaces the context in the middle of a run, so the parts of a run keep this
// handle to the model's context slot, never the pointer it held when the run began.
#pragma once

#include "llama.h"

namespace eager {

class ContextHandle {
public:
    explicit ContextHandle(llama_context * const & slot) : slot_(&slot) {}

    llama_context * get() const { return *slot_; }
    llama_memory_t memory() const { return llama_get_memory(*slot_); }

private:
    llama_context * const * slot_;
};

}  // namespace eager
