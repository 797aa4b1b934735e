#!/usr/bin/env bash
# Kernel launches per decoded token on a CubeCL backend, from CubeCL's execution log
# (`[profiling.logger] level = "minimal"` in a cubecl.toml of the working directory):
# launches of a run generating 17 tokens minus one generating 1, over 16, for the SmolLM2-135M
# shape with 1 and 2 layers (the difference is the cost of a layer). Each count follows an
# unlogged run that fills the autotune cache. Default: wgpu on lavapipe, f32.
# Usage: scripts/count-launches.sh [EMBER_BINARY] [BACKEND] [DEVICE] [DTYPE] [ATTENTION]
set -uo pipefail
bin=$(realpath "${1:-target/debug/ember}")
backend=${2:-wgpu}; device=${3:-vulkan:cpu}; dtype=${4:-f32}; attention=${5:-fused}
dir=$(mktemp -d); cd "$dir"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} HOME=$dir
# ember-cubecl's kernels count as on a GPU adapter (wgpu leaves them off on lavapipe unless
# asked); EMBER_CUBECL=off counts burn's ops alone.
export EMBER_CUBECL=${EMBER_CUBECL:-on}
run() {
  timeout 300 "$bin" --model "preset:smollm2-135m,layers=$1,vocab=1024" --backend "$backend" \
    --device "$device" --dtype "$dtype" --attention "$attention" --raw --prompt "a b c d" -n "$2" > /dev/null 2>&1
}
for layers in 1 2; do
  run $layers 17
  for n in 1 17; do
    printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\nappend = false\n' "$dir/exec-$layers-$n.log" > cubecl.toml
    run $layers $n
    rm -f cubecl.toml
  done
  a=$(grep -c . "exec-$layers-1.log"); b=$(grep -c . "exec-$layers-17.log")
  echo "$layers layers: $(( (b - a) / 16 )) launches per decoded token"
  sed 's/Executing //' "exec-$layers-17.log" | awk -F' [|] ' '{print $1}' | sort | uniq -c | sort -rn | head -12
done
