#include "topk_entropy.hpp"

#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <stdexcept>

namespace eager::cuda {

namespace {

constexpr int kThreads = 256;

void check(cudaError_t rc, const char * what) {
    if (rc != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(rc));
}

// (value, id) order of the host kernel: larger logit first, ties to the lower token id.
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

// One block per row. Each thread keeps a sorted top-K of its strided slice of the row (one
// coalesced read of the row in all), then K rounds of a block-wide arg-max merge the lists.
__global__ void topk_entropy_kernel(const float * __restrict__ logits, int n_vocab, int k, float inv_temperature,
                                    int32_t * __restrict__ out_ids, float * __restrict__ out_values,
                                    float * __restrict__ out_entropy) {
    const float * row = logits + static_cast<size_t>(blockIdx.x) * n_vocab;
    float value[kMaxK];
    int id[kMaxK];
    for (int i = 0; i < k; ++i) {
        value[i] = -FLT_MAX;
        id[i] = INT_MAX;
    }
    for (int j = threadIdx.x; j < n_vocab; j += blockDim.x) {
        float x = row[j];
        if (x != x) continue;  // NaN never enters the top-K
        if (!better(x, j, value[k - 1], id[k - 1])) continue;
        int pos = k - 1;
        while (pos > 0 && better(x, j, value[pos - 1], id[pos - 1])) {
            value[pos] = value[pos - 1];
            id[pos] = id[pos - 1];
            --pos;
        }
        value[pos] = x;
        id[pos] = j;
    }

    __shared__ float best_value[kThreads];
    __shared__ int best_id[kThreads];
    __shared__ int best_thread[kThreads];
    __shared__ float picked_value[kMaxK];
    __shared__ int picked_id[kMaxK];
    int head = 0;
    for (int round = 0; round < k; ++round) {
        best_value[threadIdx.x] = head < k ? value[head] : -FLT_MAX;
        best_id[threadIdx.x] = head < k ? id[head] : INT_MAX;
        best_thread[threadIdx.x] = threadIdx.x;
        __syncthreads();
        for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
            if (threadIdx.x < stride) {
                const int other = threadIdx.x + stride;
                if (better(best_value[other], best_id[other], best_value[threadIdx.x], best_id[threadIdx.x])) {
                    best_value[threadIdx.x] = best_value[other];
                    best_id[threadIdx.x] = best_id[other];
                    best_thread[threadIdx.x] = best_thread[other];
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            picked_value[round] = best_value[0];
            picked_id[round] = best_id[0];
        }
        if (threadIdx.x == best_thread[0]) ++head;
        __syncthreads();
    }

    if (threadIdx.x == 0) {
        // H = log Z - sum(w x) / Z over the K best, in double as the host kernel does.
        const double m = picked_value[0];
        double z = 0.0, weighted = 0.0;
        for (int i = 0; i < k; ++i) {
            out_ids[blockIdx.x * k + i] = picked_id[i];
            out_values[blockIdx.x * k + i] = picked_value[i];
            if (picked_value[i] == -FLT_MAX || isinf(picked_value[i])) continue;
            const double x = (static_cast<double>(picked_value[i]) - m) * inv_temperature;
            const double w = exp(x);
            z += w;
            weighted += w * x;
        }
        const double h = z > 0.0 ? log(z) - weighted / z : 0.0;
        out_entropy[blockIdx.x] = static_cast<float>(h > 0.0 ? h : 0.0);
    }
}

template <typename T>
struct DeviceBuffer {
    T * ptr = nullptr;
    explicit DeviceBuffer(size_t n) { check(cudaMalloc(&ptr, n * sizeof(T)), "cudaMalloc"); }
    ~DeviceBuffer() { cudaFree(ptr); }
};

}  // namespace

bool device_available(std::string * why) {
    int count = 0;
    const cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess) {
        if (why) *why = cudaGetErrorString(rc);
        cudaGetLastError();  // clear the sticky error so later calls start clean
        return false;
    }
    if (count == 0) {
        if (why) *why = "no CUDA device";
        return false;
    }
    return true;
}

void topk_entropy_device(const float * d_logits, int n_rows, int n_vocab, int k, float temperature, int32_t * d_ids,
                         float * d_values, float * d_entropy, void * stream) {
    if (k < 2 || k > kMaxK) throw std::invalid_argument("k must be between 2 and 64");
    if (n_rows < 1 || n_vocab < k) throw std::invalid_argument("need at least one row of at least k logits");
    const float inv_t = 1.0f / (temperature > 0.0f ? temperature : 1.0f);
    topk_entropy_kernel<<<n_rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(d_logits, n_vocab, k, inv_t, d_ids,
                                                                                    d_values, d_entropy);
    check(cudaGetLastError(), "the top-K entropy kernel launch");
}

TopKTiming topk_entropy(const float * logits, int n_rows, int n_vocab, int k, float temperature, int32_t * ids,
                        float * values, float * entropy) {
    const size_t cells = static_cast<size_t>(n_rows) * n_vocab;
    DeviceBuffer<float> d_logits(cells);
    DeviceBuffer<int32_t> d_ids(static_cast<size_t>(n_rows) * k);
    DeviceBuffer<float> d_values(static_cast<size_t>(n_rows) * k);
    DeviceBuffer<float> d_entropy(n_rows);
    cudaEvent_t e0, e1, e2, e3;
    for (cudaEvent_t * e : {&e0, &e1, &e2, &e3}) check(cudaEventCreate(e), "cudaEventCreate");
    check(cudaEventRecord(e0), "cudaEventRecord");
    check(cudaMemcpy(d_logits.ptr, logits, cells * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy to device");
    check(cudaEventRecord(e1), "cudaEventRecord");
    topk_entropy_device(d_logits.ptr, n_rows, n_vocab, k, temperature, d_ids.ptr, d_values.ptr, d_entropy.ptr, nullptr);
    check(cudaEventRecord(e2), "cudaEventRecord");
    check(cudaMemcpy(ids, d_ids.ptr, static_cast<size_t>(n_rows) * k * sizeof(int32_t), cudaMemcpyDeviceToHost), "cudaMemcpy");
    check(cudaMemcpy(values, d_values.ptr, static_cast<size_t>(n_rows) * k * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    check(cudaMemcpy(entropy, d_entropy.ptr, n_rows * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    check(cudaEventRecord(e3), "cudaEventRecord");
    check(cudaEventSynchronize(e3), "cudaEventSynchronize");
    float upload = 0, kernel = 0, download = 0;
    cudaEventElapsedTime(&upload, e0, e1);
    cudaEventElapsedTime(&kernel, e1, e2);
    cudaEventElapsedTime(&download, e2, e3);
    for (cudaEvent_t e : {e0, e1, e2, e3}) cudaEventDestroy(e);
    return TopKTiming{kernel, static_cast<double>(upload) + download};
}

}  // namespace eager::cuda
