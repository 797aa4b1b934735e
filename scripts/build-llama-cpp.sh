#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-quantize and llama-tokenize (CPU only) for reference work.
#
#   scripts/build-llama-cpp.sh            # idempotent: re-running only redoes what is missing
#
# llama.cpp comes from the PyPI sdist of llama-cpp-python, which vendors it (the only registry
# reachable here). Everything lands under the git-ignored tools/ directory:
#   tools/downloads/llama_cpp_python-<ver>.tar.gz   the sdist
#   tools/llama.cpp/src/                            the unpacked sdist (llama.cpp is vendor/llama.cpp)
#   tools/llama.cpp/build/                          cmake build tree (Release, static)
#   tools/llama.cpp/bin/{llama-bench,llama-quantize,llama-tokenize}
#
# CPU flags: GGML_NATIVE=OFF with explicit instruction sets read from /proc/cpuinfo (a
# -march=native build died with SIGILL on a host that advertises AMX without letting it run).
# AVX-512 is only enabled when every part ggml's GGML_AVX512 switch compiles for (F, CD, VL, DQ,
# BW) is advertised and a probe program using it actually runs. AMX is always off.
#
# Environment: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), JOBS (default 2).
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/tools"
DL="$TOOLS/downloads"
BASE="$TOOLS/llama.cpp"
SRC="$BASE/src"
BUILD="$BASE/build"
BIN="$BASE/bin"
TARGETS=(llama-bench llama-quantize llama-tokenize)
SDIST="llama_cpp_python-$VERSION.tar.gz"

log() { echo "build-llama-cpp: $*" >&2; }

mkdir -p "$DL" "$BASE" "$BIN"

# --- cmake ---------------------------------------------------------------------------------
if ! command -v cmake >/dev/null 2>&1; then
    if [ -x "$TOOLS/cmake-venv/bin/cmake" ]; then
        export PATH="$TOOLS/cmake-venv/bin:$PATH"
        log "using cmake from $TOOLS/cmake-venv"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "cmake missing: installing Debian's cmake with apt-get"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >&2
    else
        log "cmake missing: installing PyPI's cmake into $TOOLS/cmake-venv"
        python3 -m venv "$TOOLS/cmake-venv"
        "$TOOLS/cmake-venv/bin/pip" install -q cmake >&2
        export PATH="$TOOLS/cmake-venv/bin:$PATH"
    fi
fi
log "cmake: $(cmake --version | head -n1)"

# --- sdist ---------------------------------------------------------------------------------
if [ -f "$DL/$SDIST" ]; then
    log "sdist present: $DL/$SDIST"
else
    log "downloading llama-cpp-python==$VERSION sdist from PyPI"
    tmp="$(mktemp -d "$DL/.pip.XXXXXX")"
    python3 -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$tmp" >&2
    mv "$tmp/$SDIST" "$DL/$SDIST"
    rm -rf "$tmp"
fi

if [ -f "$SRC/.unpacked-$VERSION" ]; then
    log "source present: $SRC"
else
    log "unpacking $SDIST into $SRC"
    rm -rf "$SRC" "$BUILD"
    mkdir -p "$SRC"
    tar -xzf "$DL/$SDIST" -C "$SRC" --strip-components=1
    touch "$SRC/.unpacked-$VERSION"
fi
LLAMA="$SRC/vendor/llama.cpp"
[ -f "$LLAMA/CMakeLists.txt" ] || { log "no $LLAMA/CMakeLists.txt in the sdist"; exit 1; }

# --- CPU features --------------------------------------------------------------------------
FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { for f in "$@"; do [[ "$FLAGS" == *" $f "* ]] || return 1; done; }
# Compiles and runs a one-line program with the given -m flags and intrinsic body; true if it runs.
probe() {
    local cflags="$1" body="$2" dir
    dir="$(mktemp -d)"
    printf '#include <immintrin.h>\n#include <stdio.h>\nint main(void){ %s return 0; }\n' "$body" > "$dir/p.c"
    if cc -O0 $cflags "$dir/p.c" -o "$dir/p" 2>/dev/null && "$dir/p" >/dev/null 2>&1; then
        rm -rf "$dir"; return 0
    fi
    rm -rf "$dir"; return 1
}
onoff() { if "$@"; then echo ON; else echo OFF; fi; }

SSE42=$(onoff has sse4_2)
AVX=$(onoff has avx)
AVX2=$(onoff has avx2)
FMA=$(onoff has fma)
F16C=$(onoff has f16c)
BMI2=$(onoff has bmi2)
AVX_VNNI=$(onoff has avx_vnni)
AVX512=OFF
AVX512_VBMI=OFF
AVX512_VNNI=OFF
AVX512_BF16=OFF
if has avx512f avx512cd avx512vl avx512dq avx512bw; then
    if probe "-mavx512f -mavx512bw -mavx512vl -mavx512dq" \
        '__m512i a = _mm512_set1_epi16(3); a = _mm512_add_epi16(a, a); volatile int s = _mm512_reduce_add_epi32(a); (void)s;'; then
        AVX512=ON
        AVX512_VBMI=$(onoff has avx512vbmi)
        AVX512_VNNI=$(onoff has avx512_vnni)
        AVX512_BF16=$(onoff has avx512_bf16)
    else
        log "AVX-512 advertised but a probe using it did not run: leaving it off"
    fi
fi
if [ "$AVX2" = ON ] && ! probe "-mavx2 -mfma" \
    '__m256 a = _mm256_set1_ps(1.f); a = _mm256_fmadd_ps(a, a, a); volatile float f = _mm256_cvtss_f32(a); (void)f;'; then
    log "AVX2/FMA advertised but a probe using them did not run: leaving them off"
    AVX2=OFF; FMA=OFF; AVX_VNNI=OFF
fi

CMAKE_ARGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_SSE42="$SSE42" -DGGML_AVX="$AVX" -DGGML_AVX2="$AVX2" -DGGML_FMA="$FMA" -DGGML_F16C="$F16C"
    -DGGML_BMI2="$BMI2" -DGGML_AVX_VNNI="$AVX_VNNI"
    -DGGML_AVX512="$AVX512" -DGGML_AVX512_VBMI="$AVX512_VBMI" -DGGML_AVX512_VNNI="$AVX512_VNNI"
    -DGGML_AVX512_BF16="$AVX512_BF16"
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF -DGGML_CCACHE=OFF
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
)
log "cpu: sse4.2=$SSE42 avx=$AVX avx2=$AVX2 fma=$FMA f16c=$F16C bmi2=$BMI2 avx_vnni=$AVX_VNNI" \
    "avx512=$AVX512 vbmi=$AVX512_VBMI vnni=$AVX512_VNNI bf16=$AVX512_BF16 amx=OFF"

# --- configure + build ---------------------------------------------------------------------
want="$VERSION ${CMAKE_ARGS[*]}"
if [ -f "$BUILD/CMakeCache.txt" ] && [ "$(cat "$BUILD/.configured" 2>/dev/null)" = "$want" ]; then
    log "build tree configured with the same options: $BUILD"
else
    log "configuring $BUILD"
    rm -rf "$BUILD"
    cmake -S "$LLAMA" -B "$BUILD" "${CMAKE_ARGS[@]}" >&2
    echo "$want" > "$BUILD/.configured"
fi
log "building ${TARGETS[*]} with -j$JOBS"
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2

for t in "${TARGETS[@]}"; do
    if ! cmp -s "$BUILD/bin/$t" "$BIN/$t"; then
        install -m 755 "$BUILD/bin/$t" "$BIN/$t"
        log "installed $BIN/$t"
    else
        log "up to date: $BIN/$t"
    fi
done
"$BIN/llama-tokenize" --help >/dev/null 2>&1 || { log "llama-tokenize --help failed"; exit 1; }
log "done: $BIN"
