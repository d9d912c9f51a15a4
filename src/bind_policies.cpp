// The engine's policies without a model: the branch decision, admission and the KV scheduler, for
// tests that feed them synthetic rows and prompts (and for Python code that must agree with them).
#include <pybind11/stl.h>

#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "admission.hpp"
#include "bindings.hpp"
#include "branch_policy.hpp"
#include "kv_ops.hpp"
#include "kv_scheduler.hpp"
#include "sequence_table.hpp"

using namespace eager;

namespace {

// The cache as the scheduler sees it: every operation asked for is logged, none is carried out; every
// copy is whole (no sliding window).
class RecordingKvOps final : public KvOps {
public:
    void copy_all(llama_seq_id from, llama_seq_id to) override { log("copy_all", from, to); }
    void remove(llama_seq_id id) override { log("remove", id); }
    bool copy_is_whole(llama_seq_id, int32_t) const override { return true; }
    void copy_prefix(llama_seq_id from, llama_seq_id to, int32_t len) override { log("copy_prefix", from, to, len); }
    void recompute(const std::vector<int32_t> & tokens, size_t begin, llama_seq_id id) override {
        log("recompute", id, static_cast<int64_t>(begin), static_cast<int64_t>(tokens.size()));
    }
    bool grow(int64_t cells) override {
        log("grow", cells);
        return cells <= memory_cells;
    }

    bool reshape_streams(int64_t streams, int64_t cells, const std::vector<std::pair<llama_seq_id, llama_seq_id>> & moves) override {
        log("reshape_streams", streams, cells, static_cast<int64_t>(moves.size()));
        return cells <= memory_cells;
    }

    int64_t memory_cells = std::numeric_limits<int64_t>::max();  // the largest cache the memory holds

    std::vector<py::tuple> entries;

private:
    template <typename... Args>
    void log(const char * what, Args... args) {
        entries.push_back(py::make_tuple(what, static_cast<int64_t>(args)...));
    }
};

// Token 0 ends a sequence; every piece is empty.
class PlainTokens final : public TokenText {
public:
    bool is_eog(int32_t token) const override { return token == 0; }
    std::string piece(int32_t) const override { return {}; }
};

// A run's lifecycle without a model: the sequence table and the KV scheduler over synthetic prompts,
// stepped as the engine steps them. Prompt i has prompt_tokens[i] tokens; each of its sequences
// generates the token 100 + its index, and EOS (token 0) once it has lengths[i] tokens (when EOS
// counts: config.ignore_eos off), else runs to max_new_tokens. Branches are asked for explicitly.
class KvHarness {
public:
    KvHarness(const EngineConfig & config, const std::vector<int> & prompt_tokens, const std::vector<int> & lengths,
              int max_sequences, int64_t cells, int64_t ceiling, int n_ids, int64_t stream_budget_cells,
              int64_t whole_stream_cells)
        : cfg_(config), lengths_(lengths), jobs_(make_jobs(prompt_tokens, max_sequences)),
          out_{std::vector<PromptResult>(jobs_.size()), RunStats{}},
          admission_(config.method, config.max_live_sequences, config.max_new_tokens, n_ids,
                     admission_cells(config, ceiling)),
          table_(text_, cfg_, jobs_, out_, ops_, n_ids, stream_budget_cells > 0),
          kv_(cfg_, table_, ops_, cells, ceiling, 0, stream_growth(n_ids, stream_budget_cells, whole_stream_cells)),
          full_streams_fail_(stream_budget_cells > 0) {
        if (lengths_.size() != jobs_.size()) throw std::invalid_argument("one length per prompt");
    }

    // Resumes and admits as the engine does before a step; returns the prompts started.
    std::vector<int> schedule() {
        std::vector<int> started;
        kv_.schedule(admission_, [&](int prompt) {
            started.push_back(prompt);
            const int root = table_.create_root(prompt);
            table_.prefilled(root);
            std::vector<int> slots{root};
            if (cfg_.method == Method::Parallel) {
                const std::vector<int> samples = table_.add_samples(root, jobs_[prompt].max_sequences - 1);
                slots.insert(slots.end(), samples.begin(), samples.end());
                admission_.count_final(jobs_[prompt].max_sequences);  // a Full Parallel prompt closes at once
            }
            for (int slot : slots) append(slot);  // the first token, from the prompt's logits
            release();
        });
        return started;
    }

    // One step of every running sequence; the first `failed_decodes` decodes find no cell. Returns the
    // cells held after the step.
    int64_t step(int failed_decodes) {
        std::vector<int> slots;
        const int64_t cells = kv_.step([&] {
            if (failed_decodes > 0) return --failed_decodes, false;
            slots.clear();
            for (int s = 0; s < table_.size(); ++s)
                if (!table_[s].paused()) slots.push_back(s);
            // As llama.cpp: a sequence whose stream is full finds no cell, and an id past the streams none at all.
            const int64_t per_stream = kv_.capacity() / std::max<int64_t>(1, kv_.streams());
            for (int s : slots)
                if (full_streams_fail_ && (table_[s].n_past + 1 > per_stream || table_[s].id >= kv_.streams())) return false;
            return true;
        });
        table_.fed(slots);
        for (int slot : slots) append(slot);
        release();
        return cells;
    }

    // The sequence in `slot` branches at its next token; returns the child's slot.
    int branch(int slot) {
        const int child = table_.branch(slot, 0.0f, token_for(slot), 100 + table_[slot].local + 1);
        return child;
    }

    // schedule() and step() until every prompt is done; returns the steps taken.
    int run(int max_steps) {
        int steps = 0;
        while (!table_.all_done()) {
            schedule();
            if (table_.running_count() == 0) continue;
            if (++steps > max_steps) throw std::runtime_error("the run did not finish in " + std::to_string(max_steps) + " steps");
            step(0);
        }
        return steps;
    }

    py::list sequences() const {
        py::list out;
        for (int s = 0; s < table_.size(); ++s) {
            const LiveSequence & seq = table_[s];
            out.append(py::make_tuple(seq.prompt, seq.local, seq.id, seq.status, seq.n_past, seq.generated));
        }
        return out;
    }
    // Per prompt, the number of tokens each sequence generated itself and how it finished.
    py::list results() const {
        py::list out;
        for (const PromptResult & p : out_.prompts) {
            py::list seqs;
            for (const SequenceResult & r : p.sequences)
                seqs.append(py::make_tuple(static_cast<int>(r.own_tokens.size()), r.finish_reason, r.parent));
            out.append(seqs);
        }
        return out;
    }

    const SequenceTable & table() const { return table_; }
    const KvScheduler & scheduler() const { return kv_; }
    const std::vector<py::tuple> & ops() const { return ops_.entries; }
    void set_memory_cells(int64_t cells) { ops_.memory_cells = cells; }

private:
    static std::vector<PromptJob> make_jobs(const std::vector<int> & prompt_tokens, int max_sequences) {
        std::vector<PromptJob> jobs;
        for (size_t i = 0; i < prompt_tokens.size(); ++i) {
            PromptJob job;
            job.tokens.assign(static_cast<size_t>(std::max(1, prompt_tokens[i])), 1);
            job.max_sequences = max_sequences;
            job.stream_id = i;
            jobs.push_back(std::move(job));
        }
        return jobs;
    }

    int32_t token_for(int slot) const {
        const LiveSequence & seq = table_[slot];
        return seq.generated + 1 >= lengths_[seq.prompt] && !cfg_.ignore_eos ? 0 : 100 + seq.local;
    }

    void append(int slot) { table_.append(slot, token_for(slot), 0.0f); }

    void release() {
        const SequenceTable::Released released = table_.release_finished();
        for (int length : released.lengths) admission_.sequence_finished(length);
        for (int prompt : released.prompts_done) {
            if (cfg_.method != Method::Parallel) admission_.count_final(table_.prompt(prompt).n_sequences);
            admission_.released(jobs_[prompt]);
        }
    }

    static StreamGrowth stream_growth(int n_ids, int64_t budget_cells, int64_t whole_cells) {
        StreamGrowth growth;
        growth.streams = n_ids;
        growth.budget_bytes = static_cast<double>(budget_cells);  // a byte a cell
        growth.whole_cells = whole_cells;
        return growth;
    }

    EngineConfig cfg_;
    std::vector<int> lengths_;
    std::vector<PromptJob> jobs_;
    RunOutput out_;
    Admission admission_;
    RecordingKvOps ops_;
    PlainTokens text_;
    SequenceTable table_;
    KvScheduler kv_;
    bool full_streams_fail_;
};

}  // namespace

void bind_policies(py::module_ & m) {
    py::module_ p = m.def_submodule("policies", "The engine's branch policy and admission, callable without a model.");

    py::class_<BranchState>(p, "BranchState")
        .def(py::init<>())
        .def_readwrite("open", &BranchState::open)
        .def_readwrite("steps_without_branch", &BranchState::steps_without_branch)
        .def_readwrite("history", &BranchState::history);

    py::class_<BranchPolicy>(p, "BranchPolicy")
        .def(py::init<Method, ThresholdMode, int, CapRule>(), py::arg("method"), py::arg("threshold_mode"),
             py::arg("no_branch_window"), py::arg("cap_rule") = CapRule::Prompt)
        // n_sequences: the prompt's sequences now; at_step_start (default: n_sequences) and row_position:
        // what the row rule counts (CapCount).
        .def("may_branch", [](const BranchPolicy & policy, const BranchState & state, bool past_marker, int n_sequences,
                              int max_sequences, int row_position, std::optional<int> at_step_start) {
                 return policy.may_branch(state, past_marker,
                                          CapCount{at_step_start.value_or(n_sequences), row_position, n_sequences},
                                          max_sequences);
             }, py::arg("state"), py::arg("past_marker"), py::arg("n_sequences"), py::arg("max_sequences"),
             py::arg("row_position") = 0, py::arg("at_step_start") = py::none())
        .def("branches", [](const BranchPolicy & policy, float entropy, int top1, int top2, float theta,
                            const BranchState & state) {
                 RowResult row;
                 row.entropy = entropy;
                 row.top1 = top1;
                 row.top2 = top2;
                 return policy.branches(row, theta, state);
             }, py::arg("entropy"), py::arg("top1"), py::arg("top2"), py::arg("theta"), py::arg("state"))
        .def("observe", &BranchPolicy::observe, py::arg("state"), py::arg("entropy"))
        .def("mark_branch", &BranchPolicy::mark_branch, py::arg("state"))
        .def("end_step", &BranchPolicy::end_step, py::arg("state"), py::arg("n_sequences"), py::arg("max_sequences"))
        .def("close_if_capped", &BranchPolicy::close_if_capped, py::arg("state"), py::arg("n_sequences"),
             py::arg("max_sequences"));
    p.def("percentile_99", &percentile_99, py::arg("values"));

    py::class_<PromptLoad>(p, "PromptLoad")
        .def(py::init([](int max_sequences, int n_sequences, int live, bool branching, int64_t live_tokens) {
                 return PromptLoad{max_sequences, n_sequences, live, branching, live_tokens};
             }), py::arg("max_sequences"), py::arg("n_sequences"), py::arg("live"), py::arg("branching"),
             py::arg("live_tokens") = 0);

    py::class_<Admission>(p, "Admission")
        .def(py::init<Method, int, int, int, int64_t>(), py::arg("method"), py::arg("max_live_sequences"),
             py::arg("max_new_tokens"), py::arg("ids_available"), py::arg("cells"))
        .def("may_admit", &Admission::may_admit, py::arg("job"), py::arg("in_flight"), py::arg("live"),
             py::arg("cells_held"), py::arg("staggered") = false)
        .def("admitted", &Admission::admitted, py::arg("job"))
        .def("released", &Admission::released, py::arg("job"))
        .def("count_final", &Admission::count_final, py::arg("n_sequences"))
        .def("sequence_finished", &Admission::sequence_finished, py::arg("length"))
        .def("growth_estimate", &Admission::growth_estimate)
        .def("expected_length", &Admission::expected_length)
        .def("expected_live", &Admission::expected_live, py::arg("in_flight"), py::arg("estimate"))
        .def("expected_growth", &Admission::expected_growth, py::arg("in_flight"), py::arg("estimate"));

    py::enum_<SequenceStatus>(p, "SequenceStatus")
        .value("RUNNING", SequenceStatus::Running)
        .value("HELD_BACK", SequenceStatus::HeldBack)
        .value("PAUSED", SequenceStatus::Paused)
        .value("FINISHED", SequenceStatus::Finished);
    py::enum_<PromptStatus>(p, "PromptStatus")
        .value("WAITING", PromptStatus::Waiting)
        .value("RUNNING", PromptStatus::Running)
        .value("DONE", PromptStatus::Done);

    py::class_<KvHarness>(p, "KvHarness",
                          "The sequence table and the KV scheduler over synthetic prompts, stepped as the engine "
                          "steps them, with a cache that only records what it is asked to do.")
        .def(py::init<const EngineConfig &, const std::vector<int> &, const std::vector<int> &, int, int64_t, int64_t,
                      int, int64_t, int64_t>(),
             py::arg("config"), py::arg("prompt_tokens"), py::arg("lengths"), py::arg("max_sequences"),
             py::arg("cells"), py::arg("ceiling"), py::arg("n_ids") = 256, py::arg("stream_budget_cells") = 0,
             py::arg("whole_stream_cells") = 0,
             "stream_budget_cells > 0: per-sequence streams (config.kv_layout) that may outgrow that budget (a byte "
             "a cell) and preempt, each at most whole_stream_cells; a step then fails, as in llama.cpp, while a "
             "running sequence's stream is full")
        .def("schedule", &KvHarness::schedule)
        .def("step", &KvHarness::step, py::arg("failed_decodes") = 0)
        .def("branch", &KvHarness::branch, py::arg("slot"))
        .def("run", &KvHarness::run, py::arg("max_steps") = 100000)
        .def("sequences", &KvHarness::sequences,
             "(prompt, index, sequence id, status, n_past, generated) of each sequence in the table")
        .def("results", &KvHarness::results)
        .def("prompt_status", [](const KvHarness & h, int i) { return h.table().prompt(i).status; }, py::arg("prompt"))
        .def_property_readonly("in_flight", [](const KvHarness & h) { return h.table().in_flight(); })
        .def_property_readonly("running", [](const KvHarness & h) { return h.table().running_count(); })
        .def_property_readonly("paused", [](const KvHarness & h) { return h.table().paused_count(); })
        .def_property_readonly("cells_held", [](const KvHarness & h) { return h.scheduler().cells_held(); })
        .def_property_readonly("capacity", [](const KvHarness & h) { return h.scheduler().capacity(); })
        .def_property_readonly("streams", [](const KvHarness & h) { return h.scheduler().streams(); })
        .def_property_readonly("grows", [](const KvHarness & h) { return h.scheduler().grows(); })
        .def_property_readonly("peak_cells", [](const KvHarness & h) { return h.scheduler().peak_cells(); })
        .def_property_readonly("preemptions", [](const KvHarness & h) { return h.scheduler().preemptions(); })
        .def_property_readonly("recomputed_tokens", [](const KvHarness & h) { return h.scheduler().recomputed_tokens(); })
        .def_property_readonly("ceiling_lowered", [](const KvHarness & h) { return h.scheduler().ceiling_lowered(); })
        .def("limit_memory", &KvHarness::set_memory_cells, py::arg("cells"),
             "the largest cache the (pretend) memory holds: a growth past it fails")
        .def_property_readonly("ops", &KvHarness::ops, "what the cache was asked, in order: (operation, arguments...)");
}
