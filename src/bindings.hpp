// Each file binds one concept of the core; module.cpp assembles them into eager_cpp._core.
#pragma once

#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_model(py::module_ & m);
void bind_engine(py::module_ & m);
void bind_kernels(py::module_ & m);
void bind_system(py::module_ & m);
void bind_policies(py::module_ & m);
