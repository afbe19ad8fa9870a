# Sourced on the GPU machine by scripts/gpu-check.sh and scripts/gpu-ort-check.sh
# with $dir the unpacked pack: the library path, ONNX Runtime, the test
# root and the demo models for the test binary built elsewhere.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# CUDA's libraries may come from NVIDIA's wheels (nvidia/*/lib in Python's
# site-packages, as on the GPU test machine) rather than a system toolkit.
wheel_libs=$(python3 - 2>/dev/null <<'PY' || true
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
print(":".join(d for d in dirs if os.path.isdir(d)))
PY
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib; do
  [[ -d "$d" ]] && wheel_libs="${wheel_libs:+$wheel_libs:}$d"
done
export LD_LIBRARY_PATH="$dir/lib${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The tests read the models and images of this tree, not the build machine's.
export SHITU_TEST_ROOT="$root"
# A CPU ONNX Runtime for the pipeline test: the machine's own Python
# package's library, unless one is given.
if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
  ORT_DYLIB_PATH=$(python3 - 2>/dev/null <<'PY' || true
import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
print(libs[0] if libs else "")
PY
)
  export ORT_DYLIB_PATH
fi
echo "gpu: ONNX Runtime ${ORT_DYLIB_PATH:-not found}" >&2
# The demo models, if they came in parts (scripts/gpu-check.sh --models-parts).
if [[ ! -f "$root/engines/demo/rec.onnx" && -f "$root/.deps/device-parts/models.sha256" ]]; then
  bash "$root/scripts/gpu/parts.sh" join models "$root/.deps/device-parts" "$root/engines/demo"
fi
