// The engine's policies without a model: the branch decision and admission, for tests that feed
// them synthetic rows and prompts (and for Python code that must agree with them).
#include <pybind11/stl.h>

#include "admission.hpp"
#include "bindings.hpp"
#include "branch_policy.hpp"

using namespace eager;

void bind_policies(py::module_ & m) {
    py::module_ p = m.def_submodule("policies", "The engine's branch policy and admission, callable without a model.");

    py::class_<BranchState>(p, "BranchState")
        .def(py::init<>())
        .def_readwrite("open", &BranchState::open)
        .def_readwrite("steps_without_branch", &BranchState::steps_without_branch)
        .def_readwrite("history", &BranchState::history);

    py::class_<BranchPolicy>(p, "BranchPolicy")
        .def(py::init<Method, ThresholdMode, int>(), py::arg("method"), py::arg("threshold_mode"),
             py::arg("no_branch_window"))
        .def("may_branch", &BranchPolicy::may_branch, py::arg("state"), py::arg("past_marker"),
             py::arg("n_sequences"), py::arg("max_sequences"))
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
}
