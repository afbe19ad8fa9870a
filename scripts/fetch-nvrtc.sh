#!/usr/bin/env bash
# Puts NVRTC (the CUDA runtime compiler) from NVIDIA's PyPI wheel into
# DEST/lib/, unless that version is already there. It needs no GPU: CI uses
# it to compile every CUDA source of the crate (tests/it/nvrtc.rs).
#
#   scripts/fetch-nvrtc.sh 12|13 DEST
#
# CUDA 12: `nvidia-cuda-nvrtc-cu12`; CUDA 13: `nvidia-cuda-nvrtc` 13.x.
# Only libnvrtc and its builtins are taken from the wheel.
set -euo pipefail
major=${1:?usage: fetch-nvrtc.sh 12|13 DEST}
dest=${2:?usage: fetch-nvrtc.sh 12|13 DEST}
case "$major" in
  12) spec="nvidia-cuda-nvrtc-cu12==12.9.*" ;;
  13) spec="nvidia-cuda-nvrtc==13.*" ;;
  *) echo "fetch-nvrtc: CUDA major $major: expected 12 or 13" >&2; exit 2 ;;
esac
if [ -f "$dest/SPEC" ] && [ "$(cat "$dest/SPEC")" = "$spec" ] && ls "$dest"/lib/libnvrtc.so.* >/dev/null 2>&1; then
  exit 0
fi
arch=$(uname -m)
printf '\033[1mfetch-nvrtc:\033[0m NVRTC %s (PyPI wheel %s) into %s\n' "$major" "$spec" "$dest" >&2
wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux2014_$arch" \
  --python-version 3.11 -d "$wheel_dir" "$spec"
rm -rf "$dest"
mkdir -p "$dest/lib"
python3 - "$wheel_dir" "$dest/lib" <<'PY'
import pathlib, re, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
out = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if re.search(r"/lib/libnvrtc[^/]*\.so[.0-9]*$", n) and ".alt." not in n]
    if not any("libnvrtc.so" in n for n in names):
        sys.exit(f"fetch-nvrtc: no libnvrtc.so in {wheel.name}")
    for n in names:
        p = out / pathlib.PurePosixPath(n).name
        p.write_bytes(z.read(n))
        p.chmod(0o755)
    print(wheel.name)
PY
echo "$spec" > "$dest/SPEC"
