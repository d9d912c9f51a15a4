#!/usr/bin/env bash
# There, in one call of at most 8 minutes, after the model pieces are kept (README.md):
# builds llama.cpp with CUDA for the H200 (sm_90) from the carried sources, builds eager_cpp's
# CUDA variant against it, runs the device tests on the GPU and the device benchmark.
# Everything it reports lands in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
out=${OUT:-/tmp/out}; mkdir -p "$out"
work=/tmp/eager-device; site=$work/site; mkdir -p "$work" "$site/include"
log() { echo "[h200 $(date +%T)] $*"; }
PY=${PYTHON:-python3}

log "model"
cat .device-keep/model.part* > "$work/model.gguf"
echo "$(cat .device/src/model.sha256)  $work/model.gguf" | sha256sum -c -

log "llama.cpp with CUDA"
tar xzf .device/src/llama_src.tar.gz -C "$work"
# FlashAttention's CUDA kernels are most of ggml-cuda's compile time; both paths compared here
# run the same attention, so they are left out (set GGML_CUDA_FA=ON to build them).
cuda_flags="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=${GGML_CUDA_FA:-OFF} -DGGML_CUDA_NCCL=OFF"
eager_flags="-C cmake.define.EAGER_CPP_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90"
gpu_layers=-1
if [ -n "${EAGER_DEVICE_DRY_RUN:-}" ]; then  # rehearsal on a CPU machine: same steps, no CUDA
  cuda_flags="-DGGML_CUDA=OFF"; eager_flags=""; gpu_layers=0
fi
cmake -S "$work/llama.cpp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release $cuda_flags -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DGGML_NATIVE=ON > "$out/cmake_llama.log" 2>&1
cmake --build "$work/build" -j "$(nproc)" --target llama > "$out/build_llama.log" 2>&1

log "llama_cpp package over that build"
tar xzf .device/src/llama_cpp_py.tar.gz -C "$site"
mkdir -p "$site/llama_cpp/lib"
find "$work/build" -name '*.so*' \( -type f -o -type l \) -exec cp -L {} "$site/llama_cpp/lib/" \;
cp "$work/llama.cpp/include/"*.h "$work/llama.cpp/ggml/include/"*.h "$site/include/"
$PY -m pip install -q --no-index --no-deps --target "$site" .device/src/wheels/*.whl
export PYTHONPATH=$site

log "eager_cpp, CUDA variant"
$PY -m pip install -q --no-build-isolation --no-deps --no-index --target "$site" $eager_flags \
  -C build-dir="$work/eager-build" . > "$out/build_eager.log" 2>&1
cd "$work"  # import the installed package, not the source tree
$PY -c "
import eager_cpp, sys
print(eager_cpp.__file__, 'gpu offload:', eager_cpp._core.supports_gpu_offload(), 'cuda kernel:', eager_cpp.engine.kernels.cuda_available())
sys.exit(0 if eager_cpp.__file__.startswith('$site') else 'another eager_cpp shadows the one just built')"

log "device tests on the GPU"
export EAGER_CPP_MODEL="$work/model.gguf" EAGER_CPP_TEST_GPU_LAYERS=$gpu_layers EAGER_CPP_DATA="$repo/.device/src"
$PY -m pytest -q -p no:cacheprovider --rootdir "$repo" -c "$repo/pyproject.toml" "$repo/tests/test_device.py" \
  2>&1 | tee "$out/test_device.log" || true

log "benchmark: device vs host path"
$PY "$repo/benchmarks/bench_device.py" --model "$work/model.gguf" --gpu-layers $gpu_layers --threads "$(nproc)" ${BENCH_ARGS:-} \
  --data "$repo/.device/src/gsm8k_train_200.jsonl" --out "$out/bench_device.json" 2>&1 | tee "$out/bench_device.log"
log "done"
