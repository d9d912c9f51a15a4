#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <stdexcept>

#include "bindings.hpp"
#include "row_kernel.hpp"

#ifdef EAGER_CPP_HAVE_CUDA
#include "cuda/topk_entropy.hpp"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// topk_entropy(logits[rows, n_vocab]) -> (entropy[rows], top1[rows], top2[rows]), the same
// kernel the engine runs on every decoded row.
py::tuple topk_entropy(py::array_t<float, py::array::c_style | py::array::forcecast> logits, int k,
                       float temperature, int n_threads) {
    if (logits.ndim() != 1 && logits.ndim() != 2)
        throw std::invalid_argument("logits must be a 1-D row or a 2-D array of rows (rows, n_vocab)");
    if (k < 2 || k > eager::kMaxEntropyTopK)
        throw std::invalid_argument("k must be between 2 and " + std::to_string(eager::kMaxEntropyTopK));
    if (!(temperature > 0.0f)) throw std::invalid_argument("temperature must be > 0");
    const py::ssize_t rows = logits.ndim() == 2 ? logits.shape(0) : 1;
    const py::ssize_t n_vocab = logits.shape(logits.ndim() - 1);
    if (n_vocab < 2) throw std::invalid_argument("a row needs at least 2 logits");
    py::array_t<float> entropy(rows);
    py::array_t<int32_t> top1(rows), top2(rows);
    const float * data = logits.data();
    float * h = entropy.mutable_data();
    int32_t * t1 = top1.mutable_data();
    int32_t * t2 = top2.mutable_data();
    {
        py::gil_scoped_release release;
#ifdef _OPENMP
        const int threads = n_threads > 0 ? n_threads : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
#endif
        {
            eager::TopK top;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (py::ssize_t r = 0; r < rows; ++r) {
                eager::scan_row(data + r * n_vocab, static_cast<int>(n_vocab), k, top);
                h[r] = eager::topk_entropy_of(top, k, temperature);
                t1[r] = top.items[0].id;
                t2[r] = top.items[1].id;
            }
        }
    }
    (void) n_threads;
    return py::make_tuple(entropy, top1, top2);
}

// nth_not_excluded(row, exclude, rank): the token a branch seed takes from this logits row.
int32_t nth_not_excluded(py::array_t<float, py::array::c_style | py::array::forcecast> logits,
                         const std::vector<int32_t> & exclude, int rank) {
    if (logits.ndim() != 1 || logits.shape(0) < 1) throw std::invalid_argument("logits must be a non-empty 1-D row");
    if (rank < 1 || rank + static_cast<int>(exclude.size()) > eager::kMaxEntropyTopK)
        throw std::invalid_argument("rank must be >= 1 and rank + len(exclude) <= " + std::to_string(eager::kMaxEntropyTopK));
    eager::TopK top;
    eager::scan_row(logits.data(), static_cast<int>(logits.shape(0)), rank + static_cast<int>(exclude.size()), top);
    return eager::nth_not_excluded(top, exclude, rank);
}

// (available, reason): whether cuda_topk_entropy can run here.
py::tuple cuda_status() {
#ifdef EAGER_CPP_HAVE_CUDA
    std::string why;
    const bool ok = eager::cuda::device_available(&why);
    return py::make_tuple(ok, ok ? std::string() : why);
#else
    return py::make_tuple(false, std::string("eager_cpp was built without CUDA (build with -DEAGER_CPP_CUDA=ON)"));
#endif
}

#ifdef EAGER_CPP_HAVE_CUDA
// cuda_topk_entropy(logits[rows, n_vocab]) -> (entropy[rows], ids[rows, k], values[rows, k],
// kernel_ms, transfer_ms): the CUDA kernel on rows copied to the device.
py::tuple cuda_topk_entropy(py::array_t<float, py::array::c_style | py::array::forcecast> logits, int k,
                            float temperature) {
    if (logits.ndim() != 2) throw std::invalid_argument("logits must be a 2-D array of rows (rows, n_vocab)");
    if (k < 2 || k > eager::cuda::kMaxK) throw std::invalid_argument("k must be between 2 and 64");
    if (!(temperature > 0.0f)) throw std::invalid_argument("temperature must be > 0");
    const py::ssize_t rows = logits.shape(0), n_vocab = logits.shape(1);
    if (rows < 1 || n_vocab < k) throw std::invalid_argument("need at least one row of at least k logits");
    py::array_t<float> entropy(rows);
    py::array_t<int32_t> ids({rows, static_cast<py::ssize_t>(k)});
    py::array_t<float> values({rows, static_cast<py::ssize_t>(k)});
    eager::cuda::TopKTiming t;
    {
        py::gil_scoped_release release;
        t = eager::cuda::topk_entropy(logits.data(), static_cast<int>(rows), static_cast<int>(n_vocab), k, temperature,
                                      ids.mutable_data(), values.mutable_data(), entropy.mutable_data());
    }
    return py::make_tuple(entropy, ids, values, t.kernel_ms, t.transfer_ms);
}
#endif

}  // namespace

void bind_kernels(py::module_ & m) {
    m.def("topk_entropy", &topk_entropy, py::arg("logits"), py::arg("k") = 20, py::arg("temperature") = 1.0f,
          py::arg("n_threads") = 0,
          "Top-K entropy (natural log, renormalised over the K largest probabilities) and the top-1/top-2 "
          "token ids of each logits row.");
    m.def("nth_not_excluded", &nth_not_excluded, py::arg("logits"), py::arg("exclude"), py::arg("rank") = 1,
          "The rank-th most likely token of a logits row not in `exclude` (-1 when the row has too few).");
    m.def("cuda_status", &cuda_status, "(available, reason): whether the CUDA top-K entropy kernel can run here.");
#ifdef EAGER_CPP_HAVE_CUDA
    m.def("cuda_topk_entropy", &cuda_topk_entropy, py::arg("logits"), py::arg("k") = 20, py::arg("temperature") = 1.0f,
          "The CUDA top-K entropy kernel on host rows copied to the device (built with -DEAGER_CPP_CUDA=ON).");
#endif
}
