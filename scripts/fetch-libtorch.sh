#!/usr/bin/env bash
# Fetches libtorch for the `tch` backend from PyPI (no CUDA stack) into libtorch/:
# the torch 2.9.0 wheel that tch 0.22 expects, plus the two CUDA runtime libraries that
# libtorch_cpu.so links even on the CPU. libtorch_cuda.so is left out, so torch-sys builds a
# CPU-only binding. Use it with:
#   export LIBTORCH=$PWD/libtorch LD_LIBRARY_PATH=$PWD/libtorch/lib
# Needs python3 with pip; about 900 MB to download once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${EMBER_PYTHON:-python3}
dest=libtorch
if [ -f "$dest/.complete" ]; then
  echo "libtorch: already in $dest"
  exit 0
fi
rm -rf "$dest" "$dest.download"
mkdir -p "$dest/lib" "$dest.download"
"$PYTHON" -m pip download --no-deps --disable-pip-version-check --only-binary :all: \
  -d "$dest.download" \
  torch==2.9.0 nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90
"$PYTHON" - "$dest" "$dest.download" <<'PY'
import glob, os, sys, zipfile
dest, download = sys.argv[1], sys.argv[2]
keep_libs = {"libtorch_cpu.so", "libc10.so", "libtorch.so", "libgomp.so.1", "libshm.so",
             "libtorch_global_deps.so", "libcudart.so.12", "libcupti.so.12"}
for wheel in glob.glob(os.path.join(download, "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            base = os.path.basename(name)
            if name.startswith(("torch/include/", "torch/share/")):
                out = os.path.join(dest, name[len("torch/"):])
            elif base in keep_libs and "/lib/" in name:
                out = os.path.join(dest, "lib", base)
            else:
                continue
            if name.endswith("/"):
                continue
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
missing = keep_libs - set(os.listdir(os.path.join(dest, "lib")))
if missing:
    sys.exit(f"libtorch: the wheels lacked {sorted(missing)}")
PY
rm -rf "$dest.download"
echo "torch 2.9.0" > "$dest/.complete"
echo "libtorch: unpacked into $dest ($(du -sh "$dest" | cut -f1))"
