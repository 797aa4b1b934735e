#!/usr/bin/env bash
# Runs the shared model suite on an NVIDIA GPU machine from prebuilt binaries in .gpu/
# (see README "On an NVIDIA GPU"): CubeCL CUDA and wgpu over the NVIDIA Vulkan driver, f32 and
# f16. SmolLM2 (98 MB) is not carried, so its test is skipped there; the tiny goldens run.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
[ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
for z in .gpu/*.gz; do gunzip -kf "$z"; chmod +x "${z%.gz}"; done
export EMBER_WORKSPACE=$PWD XDG_RUNTIME_DIR=/tmp RUST_BACKTRACE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== ember devices"; .gpu/ember devices
for suite in .gpu/suite-ember-cuda .gpu/suite-ember-wgpu; do
  echo "== $suite"
  EMBER_TEST_WGPU_DEVICE=vulkan "$suite" --skip smollm2 --test-threads 1 2>&1 | grep -vE "^$|^running"
done
echo "== CLI on the tiny model"
for cfg in "cuda cuda:0 f16" "cuda cuda:0 f32" "wgpu vulkan f16"; do
  set -- $cfg
  .gpu/ember --model crates/ember-tests/fixtures/tiny/gqa-untied/hf --backend $1 --device $2 --dtype $3 --raw --prompt "The quick brown fox" -n 16 2>&1 | tail -3
done
