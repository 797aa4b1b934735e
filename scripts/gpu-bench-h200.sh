#!/usr/bin/env bash
# The H200 bench of 2026-11-22 (README "Benchmarks"), split so that each `ember bench`
# finishes well inside one 10-minute device call: per preset model, CubeCL cuda with the
# PyTorch eager baseline, then wgpu on the NVIDIA Vulkan driver. Needs .gpu/ember.gz (built
# here: cargo build --release --no-default-features --features flex,cuda,wgpu; stripped)
# and the Vulkan loader packages in .gl/. Usage: bash scripts/gpu-bench-h200.sh OUT_DIR [cuda|wgpu]
set -u
cd "$(dirname "$0")/.."
out=${1:?output directory}
which=${2:-cuda}
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
[ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
gunzip -kf .gpu/ember.gz && chmod +x .gpu/ember
export XDG_RUNTIME_DIR=/tmp
.gpu/ember devices
for m in smollm2-135m smollm2-1.7b; do
  if [ "$which" = cuda ]; then
    printf 'models = ["preset:%s"]\ntargets = ["cuda@cuda:0"]\ndtypes = ["f32", "f16", "bf16"]\n[baselines]\npytorch = ["cuda"]\n' $m > /tmp/m-$m.toml
  else
    printf 'models = ["preset:%s"]\ntargets = ["wgpu@vulkan:0"]\ndtypes = ["f32", "f16"]\n' $m > /tmp/m-$m.toml
  fi
  start=$(date +%s)
  timeout 270 .gpu/ember bench --matrix /tmp/m-$m.toml -r 3 --warmup 1 --run-timeout 110 \
    --out-dir "$out/$which-$m" > "$out/$which-$m.log" 2>&1
  echo "$which $m: rc $? in $(( $(date +%s) - start )) s"
done
