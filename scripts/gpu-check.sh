#!/usr/bin/env bash
# Runs the shared model suite on an NVIDIA GPU machine from prebuilt binaries in .gpu/
# (scripts/build-gpu.sh with EMBER_GPU_SUITE=1): CubeCL CUDA (and wgpu over the NVIDIA Vulkan
# driver, when its suite is there), f32 and f16.
set -uo pipefail
cd "$(dirname "$0")/.."
# The Vulkan loader (.gl/), the .xz binaries unpacked, the CUDA libraries' path.
source scripts/gpu-env.sh
for z in .gpu/*.gz; do [ -e "$z" ] && gunzip -kf "$z" && chmod +x "${z%.gz}"; done
export EMBER_WORKSPACE=$PWD XDG_RUNTIME_DIR=/tmp RUST_BACKTRACE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== ember devices"; .gpu/ember devices
# The real models (SmolLM2, Gemma 3, MiniLM, Whisper: models/, 640 MB) do not travel; the
# tiny goldens and the checks on them run.
# Each suite's log goes to OUT (the first argument, default /tmp) as it runs, so a call cut
# off at its limit still returns what ran; CubeCL's kernel and autotune caches go to
# /tmp/cubecl-cache (with an empty cache the tiny tests spend minutes compiling: the first
# attempt, 2026-12-01, printed nothing in 380 s through a block-buffered grep).
out=${1:-/tmp}
printf '[compilation]\ncache = { file = "/tmp/cubecl-cache" }\n[autotune]\ncache = { file = "/tmp/cubecl-cache" }\n' > cubecl.toml
for suite in .gpu/suite-ember-cuda .gpu/suite-ember-wgpu; do
  [ -x "$suite" ] || continue
  echo "== $suite"
  EMBER_TEST_WGPU_DEVICE=vulkan timeout "${SUITE_LIMIT:-300}" "$suite" --skip smollm2 --skip gemma3 \
    --skip minilm --skip whisper --skip embedding --test-threads 1 > "$out/$(basename "$suite").log" 2>&1
  echo "rc $?"
  grep -E "^test |test result" "$out/$(basename "$suite").log"
done
echo "== CLI on the tiny model"
for cfg in "cuda cuda:0 f16" "cuda cuda:0 f32" "wgpu vulkan f16"; do
  set -- $cfg
  .gpu/ember --model crates/ember-tests/fixtures/tiny/gqa-untied/hf --backend $1 --device $2 --dtype $3 --raw --prompt "The quick brown fox" -n 16 2>&1 | tail -3
done
rm -f cubecl.toml
