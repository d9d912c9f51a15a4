#include <pybind11/stl.h>

#include <optional>

#include "bindings.hpp"
#include "engine.hpp"
#include "errors.hpp"
#include "run_plan.hpp"

using namespace eager;

namespace {

// Runs the engine with the GIL released. Between steps the progress hook takes the GIL back
// to let Ctrl-C through (PyErr_CheckSignals) and to call the user's progress callback.
RunOutput run_engine(Model & model, const EngineConfig & config, const std::vector<PromptJob> & jobs,
                     const py::object & callback) {
    std::optional<py::error_already_set> pending;
    const bool has_callback = !callback.is_none();
    ProgressFn hook = [&](const Progress & p) -> bool {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) {
            pending.emplace();
            return false;
        }
        if (has_callback) {
            try {
                callback(p.prompts_done, p.prompts_total, p.live_sequences, p.generated_tokens, p.elapsed_seconds);
            } catch (py::error_already_set & e) {
                pending.emplace(std::move(e));
                return false;
            }
        }
        return true;
    };
    RunOutput out;
    bool interrupted = false;
    {
        py::gil_scoped_release release;
        try {
            out = generate(model, config, jobs, hook);
        } catch (const Interrupted &) {
            interrupted = true;
        }
    }
    if (interrupted) {
        if (pending) throw *pending;
        throw py::error_already_set();
    }
    return out;
}

}  // namespace

void bind_engine(py::module_ & m) {
    py::enum_<Method>(m, "Method").value("PARALLEL", Method::Parallel).value("EAGER_INIT", Method::EagerInit);
    py::enum_<ThresholdMode>(m, "ThresholdMode").value("FIXED", ThresholdMode::Fixed).value("P99", ThresholdMode::P99);
    py::enum_<KvLayout>(m, "KvLayout").value("UNIFIED", KvLayout::Unified).value("PER_SEQUENCE", KvLayout::PerSequence)
        .value("AUTO", KvLayout::Auto);
    py::enum_<CapRule>(m, "CapRule").value("PROMPT", CapRule::Prompt).value("ROW", CapRule::Row);
    py::enum_<WindowCache>(m, "WindowCache")
        .value("AUTO", WindowCache::Auto)
        .value("FULL", WindowCache::Full)
        .value("WINDOW", WindowCache::Window);

    py::class_<SamplingParams>(m, "SamplingParams")
        .def(py::init<>())
        .def_readwrite("temperature", &SamplingParams::temperature)
        .def_readwrite("top_k", &SamplingParams::top_k)
        .def_readwrite("top_p", &SamplingParams::top_p)
        .def_readwrite("min_p", &SamplingParams::min_p);

    // The limits the Python options check against, read from here rather than typed twice.
    m.attr("MAX_SEQUENCES") = eager::kMaxSequenceIds;
    m.attr("MAX_ENTROPY_TOP_K") = eager::kMaxEntropyTopK;
    m.attr("KV_CELL_PADDING") = eager::kCellPadding;  // llama.cpp's smallest cache, and the step it pads one to

    py::class_<EngineConfig>(m, "EngineConfig")
        .def(py::init<>())
        .def_readwrite("method", &EngineConfig::method)
        .def_readwrite("max_new_tokens", &EngineConfig::max_new_tokens)
        .def_readwrite("seed", &EngineConfig::seed)
        .def_readwrite("sampling", &EngineConfig::sampling)
        .def_readwrite("entropy_k", &EngineConfig::entropy_k)
        .def_readwrite("entropy_after_temperature", &EngineConfig::entropy_after_temperature)
        .def_readwrite("record_entropies", &EngineConfig::record_entropies)
        .def_readwrite("stop", &EngineConfig::stop)
        .def_readwrite("think_end_marker", &EngineConfig::think_end_marker)
        .def_readwrite("no_branch_window", &EngineConfig::no_branch_window)
        .def_readwrite("threshold_mode", &EngineConfig::threshold_mode)
        .def_readwrite("cap_rule", &EngineConfig::cap_rule)
        .def_readwrite("max_live_sequences", &EngineConfig::max_live_sequences)
        .def_readwrite("ignore_eos", &EngineConfig::ignore_eos)
        .def_readwrite("n_threads", &EngineConfig::n_threads)
        .def_readwrite("n_ctx", &EngineConfig::n_ctx)
        .def_readwrite("kv_memory", &EngineConfig::kv_memory)
        .def_readwrite("device_topk", &EngineConfig::device_topk)
        .def_readwrite("device_candidates", &EngineConfig::device_candidates)
        .def_readwrite("trace_steps", &EngineConfig::trace_steps)
        .def_readwrite("trace_rows", &EngineConfig::trace_rows)
        .def_readwrite("share_prompt_prefixes", &EngineConfig::share_prompt_prefixes)
        .def_readwrite("window_cache", &EngineConfig::window_cache)
        .def_readwrite("kv_layout", &EngineConfig::kv_layout);

    py::class_<RowTrace>(m, "RowTrace")
        .def_readonly("prompt", &RowTrace::prompt)
        .def_readonly("sequence", &RowTrace::sequence)
        .def_readonly("position", &RowTrace::position)
        .def_readonly("entropy", &RowTrace::entropy)
        .def_readonly("top1", &RowTrace::top1)
        .def_readonly("top2", &RowTrace::top2)
        .def_readonly("sampled", &RowTrace::sampled)
        .def_readonly("draw", &RowTrace::draw);
    py::class_<StepTrace>(m, "StepTrace")
        .def_readonly("tokens", &StepTrace::tokens)
        .def_readonly("prompts", &StepTrace::prompts)
        .def_readonly("decode_ms", &StepTrace::decode_ms)
        .def_readonly("kv_span", &StepTrace::kv_span)
        .def_readonly("kv_used", &StepTrace::kv_used)
        .def_readonly("kv_span_swa", &StepTrace::kv_span_swa)
        .def_readonly("kv_used_swa", &StepTrace::kv_used_swa)
        .def_readonly("kv_held", &StepTrace::kv_held);

    py::class_<BranchSeed>(m, "BranchSeed")
        .def(py::init([](std::vector<int32_t> prefix, std::vector<int32_t> exclude, int rank) {
                 return BranchSeed{std::move(prefix), std::move(exclude), rank};
             }),
             py::arg("prefix"), py::arg("exclude"), py::arg("rank") = 1)
        .def_readwrite("prefix", &BranchSeed::prefix)
        .def_readwrite("exclude", &BranchSeed::exclude)
        .def_readwrite("rank", &BranchSeed::rank);

    py::class_<PromptJob>(m, "PromptJob")
        .def(py::init<>())
        .def(py::init([](std::vector<int32_t> tokens, int max_sequences, float theta, uint64_t stream_id,
                         int sequence_index_base, std::vector<BranchSeed> seeds) {
                 return PromptJob{std::move(tokens), max_sequences, theta, stream_id, sequence_index_base,
                                  std::move(seeds)};
             }),
             py::arg("tokens"), py::arg("max_sequences"), py::arg("theta"), py::arg("stream_id"),
             py::arg("sequence_index_base") = 0, py::arg("seeds") = std::vector<BranchSeed>{})
        .def_readwrite("tokens", &PromptJob::tokens)
        .def_readwrite("max_sequences", &PromptJob::max_sequences)
        .def_readwrite("theta", &PromptJob::theta)
        .def_readwrite("stream_id", &PromptJob::stream_id)
        .def_readwrite("sequence_index_base", &PromptJob::sequence_index_base)
        .def_readwrite("seeds", &PromptJob::seeds);

    py::class_<SequenceResult>(m, "SequenceResult")
        .def_readonly("own_tokens", &SequenceResult::own_tokens)
        .def_readonly("entropies", &SequenceResult::entropies)
        .def_readonly("parent", &SequenceResult::parent)
        .def_readonly("branch_step", &SequenceResult::branch_step)
        .def_readonly("branch_entropy", &SequenceResult::branch_entropy)
        .def_property_readonly("text", [](const SequenceResult & s) { return py::bytes(s.text); })
        .def_readonly("finish_reason", &SequenceResult::finish_reason)
        .def_readonly("marker_step", &SequenceResult::marker_step);

    py::class_<PromptResult>(m, "PromptResult")
        .def_readonly("sequences", &PromptResult::sequences)
        .def_readonly("prompt_tokens", &PromptResult::prompt_tokens)
        .def_readonly("steps", &PromptResult::steps);

    py::class_<RunStats>(m, "RunStats")
        .def_readonly("prefill_seconds", &RunStats::prefill_seconds)
        .def_readonly("decode_seconds", &RunStats::decode_seconds)
        .def_readonly("row_kernel_seconds", &RunStats::row_kernel_seconds)
        .def_readonly("bookkeeping_seconds", &RunStats::bookkeeping_seconds)
        .def_readonly("steps", &RunStats::steps)
        .def_readonly("generated_tokens", &RunStats::generated_tokens)
        .def_readonly("prompt_tokens", &RunStats::prompt_tokens)
        .def_readonly("reprocessed_tokens", &RunStats::reprocessed_tokens)
        .def_readonly("shared_prompt_tokens", &RunStats::shared_prompt_tokens)
        .def_readonly("max_live_sequences", &RunStats::max_live_sequences)
        .def_readonly("kv_cells", &RunStats::kv_cells)
        .def_readonly("peak_kv_cells", &RunStats::peak_kv_cells)
        .def_readonly("kv_grows", &RunStats::kv_grows)
        .def_readonly("preemptions", &RunStats::preemptions)
        .def_readonly("recomputed_tokens", &RunStats::recomputed_tokens)
        .def_readonly("kv_ceiling_lowered", &RunStats::kv_ceiling_lowered)
        .def_readonly("kv_layout", &RunStats::kv_layout)
        .def_readonly("device_dropped_mass_max", &RunStats::device_dropped_mass_max)
        .def_readonly("step_trace", &RunStats::step_trace)
        .def_readonly("row_trace", &RunStats::row_trace);

    py::class_<RunOutput>(m, "RunOutput")
        .def_readonly("prompts", &RunOutput::prompts)
        .def_readonly("stats", &RunOutput::stats);

    m.def("generate", &run_engine, py::arg("model"), py::arg("config"), py::arg("jobs"),
          py::arg("progress") = py::none(),
          "Run the batched engine over the prompt jobs; progress(prompts_done, prompts_total, live, tokens, "
          "seconds) is called between steps.");
}
