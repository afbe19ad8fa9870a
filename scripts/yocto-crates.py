#!/usr/bin/env python3
"""Writes the Yocto recipe's crate list from Cargo.lock.

bitbake's crate fetcher needs every crate as `crate://crates.io/NAME/VERSION`
with its sha256. cargo-bitbake cannot read edition-2021 projects or v4 lock
files, so this reads Cargo.lock itself (the checksums in it are the crates.io
sha256 of each .crate file, which is what bitbake checks).

    python3 scripts/yocto-crates.py          # rewrite the .inc
    python3 scripts/yocto-crates.py --check  # exit 1 if the .inc is stale
"""
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "Cargo.lock"
INC = ROOT / "yocto/meta-shitu-edge/recipes-shitu/shitu-edge/shitu-edge-crates.inc"
REGISTRY = "registry+https://github.com/rust-lang/crates.io-index"


def render() -> str:
    lock = tomllib.loads(LOCK.read_text())
    crates = []
    for p in lock["package"]:
        src = p.get("source")
        if src is None:
            continue  # the project itself
        if src != REGISTRY:
            sys.exit(f"{LOCK}: {p['name']} {p['version']} comes from {src}; only crates.io crates can be listed")
        if "checksum" not in p:
            sys.exit(f"{LOCK}: {p['name']} {p['version']} has no checksum")
        crates.append((p["name"], p["version"], p["checksum"]))
    crates.sort()
    out = [
        "# Generated from Cargo.lock by scripts/yocto-crates.py; do not edit.",
        "# tests/it/yocto_layer.rs fails when it no longer matches Cargo.lock.",
        "",
        'SRC_URI += "\\',
    ]
    out += [f"    crate://crates.io/{n}/{v} \\" for n, v, _ in crates]
    out.append('"')
    out.append("")
    out += [f'SRC_URI[{n}-{v}.sha256sum] = "{c}"' for n, v, c in crates]
    return "\n".join(out) + "\n"


def main() -> None:
    text = render()
    if "--check" in sys.argv[1:]:
        if not INC.exists() or INC.read_text() != text:
            sys.exit(f"{INC.relative_to(ROOT)} does not match Cargo.lock: run python3 scripts/yocto-crates.py")
        print(f"{INC.relative_to(ROOT)} matches Cargo.lock")
        return
    INC.write_text(text)
    print(f"wrote {INC.relative_to(ROOT)} ({text.count('crate://')} crates)")


if __name__ == "__main__":
    main()
