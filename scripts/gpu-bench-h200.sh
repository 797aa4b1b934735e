set -u
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
[ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
gunzip -kf .gpu/ember.gz && chmod +x .gpu/ember
export XDG_RUNTIME_DIR=/tmp
.gpu/ember devices
for m in smollm2-135m smollm2-1.7b; do
  printf 'models = ["preset:%s"]\ntargets = ["wgpu@vulkan:0"]\ndtypes = ["f32", "f16"]\n' $m > /tmp/w-$m.toml
  start=$(date +%s)
  timeout 250 .gpu/ember bench --matrix /tmp/w-$m.toml -r 3 --warmup 1 --run-timeout 110 --out-dir $OUT/wgpu-$m > $OUT/wgpu-$m.log 2>&1
  echo "$m: rc $? in $(( $(date +%s) - start )) s"
done
