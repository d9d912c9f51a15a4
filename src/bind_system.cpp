#include <memory>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "cpu_buffers.hpp"
#include "system_info.hpp"

namespace {

// `with _core.CpuBufferScope(keep):` narrows the CPU extra buffer types for the loads inside the
// block (a llama-cpp-python reference model, say). Waiting for another scope releases the GIL.
class PyCpuBufferScope {
public:
    explicit PyCpuBufferScope(std::vector<std::string> keep) : keep_(std::move(keep)) {}
    bool enter() {
        if (scope_) throw std::runtime_error("CpuBufferScope is already entered");
        // (A second scope on this thread raises in CpuBufferScope: it would wait for itself.)
        py::gil_scoped_release release;
        scope_ = std::make_unique<eager::CpuBufferScope>(keep_);
        return scope_->narrowed();
    }
    void exit() { scope_.reset(); }

private:
    std::vector<std::string> keep_;
    std::unique_ptr<eager::CpuBufferScope> scope_;
};

}  // namespace

void bind_system(py::module_ & m) {
    py::enum_<eager::CpuBuffers>(m, "CpuBuffers")
        .value("SAFE", eager::CpuBuffers::Safe)
        .value("ALL", eager::CpuBuffers::All)
        .value("NONE", eager::CpuBuffers::None);

    py::class_<eager::CpuBufferPlan>(m, "CpuBufferPlan")
        .def_readonly("use_extra_bufts", &eager::CpuBufferPlan::use_extra_bufts)
        .def_readonly("keep", &eager::CpuBufferPlan::keep)
        .def_readonly("dropped", &eager::CpuBufferPlan::dropped)
        .def("__repr__", [](const eager::CpuBufferPlan & p) {
            return py::str("CpuBufferPlan(use_extra_bufts={}, keep={}, dropped={})")
                .format(p.use_extra_bufts, p.keep, p.dropped);
        });

    m.def("plan_cpu_buffers", &eager::plan_cpu_buffers, py::arg("offered"), py::arg("choice"), py::arg("guarded"),
          "Which offered CPU extra buffer types a load keeps (pure: names in, plan out).");
    m.def("default_guarded_cpu_buffers", &eager::default_guarded_cpu_buffers);
    m.def("offered_cpu_buffers", &eager::offered_cpu_buffers,
          "Extra buffer types llama.cpp's CPU backend offers on this machine, in its order.");

    py::class_<PyCpuBufferScope>(m, "CpuBufferScope")
        .def(py::init<std::vector<std::string>>(), py::arg("keep"))
        .def("__enter__", &PyCpuBufferScope::enter)
        .def("__exit__", [](PyCpuBufferScope & self, py::args) { self.exit(); });

    m.def("ram_available_bytes", &eager::ram_available_bytes,
          "RAM available to a new allocation (MemAvailable), -1 where the system does not say.");
    m.def("system_info", [] {
        const eager::SystemInfo info = eager::system_info();
        py::list devices;
        for (const auto & d : info.devices) {
            py::dict dev;
            dev["name"] = d.name;
            dev["description"] = d.description;
            dev["type"] = d.type;
            dev["memory_total"] = d.memory_total;
            dev["memory_free"] = d.memory_free;
            devices.append(dev);
        }
        py::dict out;
        out["ggml_version"] = info.ggml_version;
        out["ggml_commit"] = info.ggml_commit;
        out["backend_features"] = info.backend_features;
        out["devices"] = devices;
        out["cpu_extra_buffers"] = info.cpu_extra_buffers;
        out["default_threads"] = info.default_threads;
        out["gpu_offload"] = info.gpu_offload;
        return out;
    }, "The llama.cpp build and the backends it sees, as a dict (eager_cpp.system_info() adds the rest).");
}
