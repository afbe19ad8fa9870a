#!/usr/bin/env bash
# Files too large for one device-tool call, cut into parts that are carried
# over consecutive calls while the GPU machine stays warm (carried paths
# that git ignores stay there between calls), then joined there.
#
#   scripts/gpu/parts.sh cut NAME DIR FILE...   # here: tar FILE... (xz), cut into DIR/NAME.part-NN of at most 45 MiB, write DIR/NAME.sha256
#   scripts/gpu/parts.sh plan NAME DIR          # here: the carry list of each call, 45 MiB or less apiece
#   scripts/gpu/parts.sh join NAME DIR DEST     # there: check that every part arrived and is whole, unpack into DEST
#
# 45 MiB a call leaves room for the working tree (17 MiB without the demo
# models) under the tool's 64 MiB.
set -euo pipefail
PART=$((45 * 1048576))

cmd=${1:?usage: parts.sh cut|plan|join NAME DIR ...}
name=${2:?NAME}
dir=${3:?DIR}
case "$cmd" in
  cut)
    shift 3
    (( $# > 0 )) || { echo "parts.sh cut: no files to cut" >&2; exit 2; }
    mkdir -p "$dir"
    rm -f "$dir/$name".part-* "$dir/$name.sha256"
    echo "parts: packing $* into $dir/$name.part-NN" >&2
    tar -C "$(dirname "$1")" -cf - "${@##*/}" | xz -T0 -6 | split -b "$PART" -d -a 2 - "$dir/$name.part-"
    (cd "$dir" && sha256sum "$name".part-* > "$name.sha256")
    ls -l "$dir/$name".part-* >&2
    ;;
  plan)
    [[ -f "$dir/$name.sha256" ]] || { echo "parts.sh plan: $dir/$name.sha256 missing: cut first" >&2; exit 2; }
    n=0
    while read -r _ part; do
      n=$((n + 1))
      # The checksums travel with the first part.
      if (( n == 1 )); then echo "$dir/$name.sha256 $dir/$part"; else echo "$dir/$part"; fi
    done < "$dir/$name.sha256"
    ;;
  join)
    dest=${4:?usage: parts.sh join NAME DIR DEST}
    [[ -f "$dir/$name.sha256" ]] || { echo "parts.sh join: $dir/$name.sha256 has not arrived (carry it with the first part)" >&2; exit 2; }
    missing=()
    while read -r _ part; do
      [[ -f "$dir/$part" ]] || missing+=("$part")
    done < "$dir/$name.sha256"
    if (( ${#missing[@]} > 0 )); then
      echo "parts.sh join: not arrived yet: ${missing[*]}" >&2
      exit 3
    fi
    (cd "$dir" && sha256sum --quiet -c "$name.sha256") \
      || { echo "parts.sh join: a part of $name is damaged: cut and carry it again" >&2; exit 4; }
    mkdir -p "$dest"
    cat "$dir/$name".part-* | xz -d | tar -C "$dest" -xf -
    echo "parts: $name unpacked into $dest" >&2
    ;;
  *)
    echo "usage: parts.sh cut|plan|join NAME DIR ..." >&2
    exit 2
    ;;
esac
