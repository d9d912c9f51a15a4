#include <pybind11/stl.h>

#include "bindings.hpp"
#include "diagnostics.hpp"
#include "llama.h"
#include "loglikelihood.hpp"
#include "model.hpp"
#include <pybind11/numpy.h>

using eager::Model;

namespace {

template <typename T>
py::array_t<T> to_array(const std::vector<T> & v) {
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

}  // namespace

void bind_model(py::module_ & m) {
    py::class_<Model>(m, "Model")
        .def(py::init<const std::string &, int, eager::CpuBuffers, const std::vector<std::string> &>(),
             py::arg("path"), py::arg("n_gpu_layers") = 0, py::arg("cpu_buffers") = eager::CpuBuffers::Safe,
             py::arg("guarded") = eager::default_guarded_cpu_buffers(), py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("cpu_buffer_plan", &Model::cpu_buffer_plan)
        .def_property_readonly("weight_buffers", [](const Model & self) {
            py::list out;
            for (const auto & b : self.weight_buffers()) out.append(py::make_tuple(b.name, b.mib));
            return out;
        }, "(buffer type, MiB) of each weight buffer llama.cpp allocated at load, in its order.")
        .def_property_readonly("path", &Model::path)
        .def_property_readonly("n_vocab", &Model::n_vocab)
        .def_property_readonly("n_ctx_train", &Model::n_ctx_train)
        .def_property_readonly("kv_bytes_per_cell", &Model::kv_bytes_per_cell)
        .def_property_readonly("add_bos", &Model::add_bos)
        .def_property_readonly("description", &Model::description)
        .def_property_readonly("chat_template", &Model::builtin_chat_template)
        .def_property_readonly("context_n_ctx", [](const Model & self) { return self.context_shape().n_ctx; })
        .def("meta", &Model::meta, py::arg("key"))
        .def("tokenize", &Model::tokenize, py::arg("text"), py::arg("add_special") = true,
             py::arg("parse_special") = true)
        .def("token_to_piece", [](const Model & self, int32_t t) { return py::bytes(self.token_to_piece(t)); },
             py::arg("token"))
        .def("detokenize", [](const Model & self, const std::vector<int32_t> & tokens) {
                 return py::bytes(self.detokenize(tokens));
             }, py::arg("tokens"))
        .def("is_eog", &Model::is_eog, py::arg("token"))
        .def("apply_chat_template", &Model::apply_chat_template, py::arg("messages"), py::arg("template") = "")
        .def("probe_fork", [](Model & self, const std::vector<int32_t> & prefix, const std::vector<int32_t> & cont,
                              int n_threads) {
                 eager::ForkProbe probe;
                 {
                     py::gil_scoped_release release;
                     probe = eager::probe_fork(self, prefix, cont, n_threads);
                 }
                 return py::make_tuple(to_array(probe.parent), to_array(probe.child), to_array(probe.fresh));
             }, py::arg("prefix"), py::arg("continuation"), py::arg("n_threads") = 0)
        .def("score_continuations", [](Model & self, const std::vector<std::pair<std::vector<int32_t>,
                                                                           std::vector<int32_t>>> & requests,
                                       int n_threads) {
                 std::vector<eager::ContinuationScore> scores;
                 {
                     py::gil_scoped_release release;
                     scores = eager::score_continuations(self, requests, n_threads);
                 }
                 py::list out;
                 for (const auto & s : scores) out.append(py::make_tuple(s.logprob, s.greedy));
                 return out;
             }, py::arg("requests"), py::arg("n_threads") = 0,
             "(sum of log-softmax over the continuation's tokens, whether each is the argmax) of each "
             "(context tokens, continuation tokens) pair, decoded in batches of distinct sequence ids.")
        .def("probe_device_topk", [](Model & self, const std::vector<std::vector<int32_t>> & prompts, int candidates,
                                     int entropy_k, float entropy_temperature, float sample_temperature, int n_threads) {
                 eager::DeviceTopKParams params;
                 params.enabled = true;
                 params.candidates = candidates;
                 params.entropy_k = entropy_k;
                 params.entropy_temperature = entropy_temperature;
                 params.sample_temperature = sample_temperature;
                 std::vector<eager::DeviceRowProbe> rows;
                 {
                     py::gil_scoped_release release;
                     rows = eager::probe_device_topk(self, prompts, params, n_threads);
                 }
                 py::list out;
                 for (const auto & r : rows) {
                     py::dict d;
                     d["logits"] = to_array(r.logits);
                     d["ids"] = to_array(r.ids);
                     d["cand_logits"] = to_array(r.cand_logits);
                     d["cand_probs"] = to_array(r.cand_probs);
                     d["entropy"] = r.entropy;
                     out.append(d);
                 }
                 return out;
             }, py::arg("prompts"), py::arg("candidates") = 256, py::arg("entropy_k") = 20,
             py::arg("entropy_temperature") = 1.0f, py::arg("sample_temperature") = 1.0f, py::arg("n_threads") = 0,
             "Device top-K outputs and the raw logits of the last token of each prompt, from one forward pass.");
    m.def("builtin_chat_templates", &eager::builtin_chat_templates);
    m.def("supports_gpu_offload", &llama_supports_gpu_offload,
          "Whether the llama.cpp that eager_cpp runs on was built with a GPU backend.");
    m.def("bench_bare_decode", [](Model & model, const std::vector<int32_t> & prompt, int n_sequences, int n_steps,
                                  int n_threads) {
              py::gil_scoped_release release;
              return eager::bench_bare_decode(model, prompt, n_sequences, n_steps, n_threads);
          }, py::arg("model"), py::arg("prompt"), py::arg("n_sequences"), py::arg("n_steps"), py::arg("n_threads") = 0,
          "Seconds of n_steps bare llama_decode steps of n_sequences forks of `prompt` (the engine benchmark's peer).");
}
