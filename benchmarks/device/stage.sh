#!/usr/bin/env bash
# Here, before the device calls: packs what the H200 run needs into .device/ (git-ignored),
# because nothing can be downloaded there and one call carries at most 64 MiB:
#   .device/src/llama_src.tar.gz   llama.cpp's sources from the pinned llama-cpp-python sdist (no
#                                  tools/examples/other backends), built there with CUDA
#   .device/src/llama_cpp_py.tar.gz the llama_cpp Python package (its libraries come from that build)
#   .device/src/wheels/            Python 3.12 wheels the H200 image lacks (diskcache, for llama_cpp)
#   .device/src/gsm8k_train_200.jsonl the benchmark's prompts
#   .device/model.partNN           the default GGUF in 48 MiB pieces, one device call each
# Usage: bash benchmarks/device/stage.sh [path/to/llama_cpp_python-0.3.36.tar.gz]
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/src/wheels .device/tmp
sdist="${1:-}"
if [ -z "$sdist" ]; then
  pip download --no-deps --no-binary :all: -d .device/tmp llama-cpp-python==0.3.36
  sdist=$(ls .device/tmp/llama_cpp_python-0.3.36.tar.gz)
fi
tar xzf "$sdist" -C .device/tmp
root=$(ls -d .device/tmp/llama_cpp_python-0.3.36)/vendor
tar czf .device/src/llama_src.tar.gz -C "$root" \
  --exclude='ggml-vulkan' --exclude='ggml-sycl' --exclude='ggml-cann' --exclude='ggml-musa' \
  --exclude='ggml-opencl' --exclude='ggml-webgpu' --exclude='ggml-hip' --exclude='ggml-zdnn' \
  --exclude='ggml-openvino' --exclude='ggml-metal' \
  llama.cpp/CMakeLists.txt llama.cpp/cmake llama.cpp/ggml llama.cpp/src llama.cpp/include \
  llama.cpp/vendor llama.cpp/common llama.cpp/licenses
site=$(python3 -c "import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))")
tar czf .device/src/llama_cpp_py.tar.gz -C "$site" --exclude='llama_cpp/lib' --exclude='__pycache__' llama_cpp
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .device/src/wheels diskcache==5.6.3
cp data/gsm8k_train_200.jsonl .device/src/
model=$(python3 -c "import eager_cpp; print(eager_cpp.default_model_path())")
split -b 48M -d "$model" .device/model.part
sha256sum "$model" | cut -d' ' -f1 > .device/src/model.sha256
rm -rf .device/tmp
du -sh .device/src .device/model.part*
echo "staged; the device calls are in benchmarks/device/README.md"
