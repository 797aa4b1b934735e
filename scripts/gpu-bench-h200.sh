#!/usr/bin/env bash
# The H200 bench of 2026-11-22 (README "Benchmarks"), split so that each `ember bench`
# finishes well inside one 10-minute device call: per preset model, CubeCL cuda with the
# PyTorch eager baseline, then wgpu on the NVIDIA Vulkan driver. Needs .gpu/ember.gz (built
# here: cargo build --release --no-default-features --features flex,cuda,wgpu; stripped)
# and the Vulkan loader packages in .gl/. Usage: bash scripts/gpu-bench-h200.sh OUT_DIR [cuda|wgpu|sweep]
set -u
cd "$(dirname "$0")/.."
out=${1:?output directory}
which=${2:-cuda}
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
[ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
gunzip -kf .gpu/ember.gz && chmod +x .gpu/ember
export XDG_RUNTIME_DIR=/tmp
.gpu/ember devices
if [ "$which" = sweep ]; then
  # Per-token cost against depth: decode of the 135M shape with 1, 2, 8 and 30 layers, f16,
  # on cuda and wgpu. The slope is the cost of a layer, the intercept what a token costs
  # outside the layers (embedding, final norm, lm_head, sampling, host round trip).
  printf 'models = ["preset:smollm2-135m,layers=1", "preset:smollm2-135m,layers=2", "preset:smollm2-135m,layers=8", "preset:smollm2-135m"]\ntargets = ["cuda@cuda:0", "wgpu@vulkan:0"]\ndtypes = ["f16"]\n' > /tmp/sweep.toml
  start=$(date +%s)
  timeout 500 .gpu/ember bench --matrix /tmp/sweep.toml -p 64 -n 128 -r 3 --warmup 1 \
    --accuracy-tokens 32 --run-timeout 120 --out-dir "$out/sweep" > "$out/sweep.log" 2>&1
  echo "sweep: rc $? in $(( $(date +%s) - start )) s"
  exit 0
fi
for m in smollm2-135m smollm2-1.7b; do
  if [ "$which" = cuda ]; then
    printf 'models = ["preset:%s"]\ntargets = ["cuda@cuda:0"]\ndtypes = ["f32", "f16", "bf16"]\n[baselines]\npytorch = ["cuda"]\n' $m > /tmp/m-$m.toml
  else
    printf 'models = ["preset:%s"]\ntargets = ["wgpu@vulkan:0"]\ndtypes = ["f32", "f16"]\n' $m > /tmp/m-$m.toml
  fi
  start=$(date +%s)
  timeout 285 .gpu/ember bench --matrix /tmp/m-$m.toml -r 3 --warmup 1 --run-timeout 110 \
    --out-dir "$out/$which-$m" > "$out/$which-$m.log" 2>&1
  echo "$which $m: rc $? in $(( $(date +%s) - start )) s"
done
