#!/usr/bin/env bash
# Puts ONNX Runtime's shared library from its PyPI wheel into DEST/lib/ and
# the version into DEST/VERSION, unless that version is already there.
#
#   scripts/fetch-ort.sh VERSION x86_64|aarch64 DEST
#
# Only libonnxruntime.so is taken from the wheel, so it is downloaded for a
# fixed Python (3.11) whatever this machine's Python is: ORT 1.31 has no
# wheel for Ubuntu 22.04's Python 3.10, which `pip install` on that machine
# would need. The wheels are CPU-only; a Jetson needs a JetPack build
# (docs/JETSON.md).
set -euo pipefail
version=${1:?usage: fetch-ort.sh VERSION ARCH DEST}
arch=${2:?usage: fetch-ort.sh VERSION ARCH DEST}
dest=${3:?usage: fetch-ort.sh VERSION ARCH DEST}
lib="$dest/lib/libonnxruntime.so"
if [ -f "$lib" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
printf '\033[1mfetch-ort:\033[0m ONNX Runtime %s for %s (PyPI wheel) into %s\n' "$version" "$arch" "$dest" >&2
wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux2014_$arch" \
  --python-version 3.11 -d "$wheel_dir" "onnxruntime==$version"
rm -rf "$dest"
mkdir -p "$dest/lib"
python3 - "$wheel_dir" "$lib" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if "/capi/libonnxruntime.so" in n)
    pathlib.Path(sys.argv[2]).write_bytes(z.read(name))
PY
echo "$version" > "$dest/VERSION"
