#!/usr/bin/env bash
# `ember bench` on the lent NVIDIA GPU machine, from a binary built here and carried in
# .gpu/ember.gz (with the Vulkan loader packages in .gl/). Usage, from the repository root:
#   bash scripts/gpu-bench.sh OUT_DIR [TARGET_FILTER] [ember bench flags...]
# TARGET_FILTER (a regex on bench/gpu.toml's targets, default all) splits a run across calls.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?output directory}; shift
filter=${1:-.}; shift || true
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
[ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
gunzip -kf .gpu/ember.gz && chmod +x .gpu/ember
export XDG_RUNTIME_DIR=/tmp
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.version.cuda)" 2>&1 | tail -1
.gpu/ember devices
matrix=$(mktemp --suffix=.toml)
python3 - "$filter" > "$matrix" <<'PY'
import re, sys
text = open("bench/gpu.toml").read()
keep = re.compile(sys.argv[1])
m = re.search(r'targets = \[(.*?)\]', text)
targets = [t.strip().strip('"') for t in m.group(1).split(",") if t.strip()]
chosen = ", ".join(f'"{t}"' for t in targets if keep.search(t))
text = text.replace(m.group(0), f"targets = [{chosen}]")
if not keep.search("pytorch"):
    text = text.replace('pytorch = ["cuda"]', "pytorch = []")
print(text)
PY
.gpu/ember bench --matrix "$matrix" --out-dir "$out" "$@"
