#!/usr/bin/env python3
"""Holds the preprocessing kernels' output against cv2.resize.

    python3 scripts/gpu/compare_cv2.py DIR

DIR is what the `gpu::write_kernel_outputs` test wrote (index.json, the
input frames as raw RGB, the kernels' 8-bit levels, planar). Each case is
resized by cv2.resize as PaddleClas does (the crop, then INTER_CUBIC to 640
or INTER_LINEAR to 224) and compared level by level.

Two passes. With OpenCV as installed, bilinear must differ by 0 levels and
bicubic by at most 1: the PyPI wheels resize bicubic 8-bit images through
Intel IPP, which rounds differently from OpenCV's own code on a few % of
values (docs/GPU.md). With IPP switched off (cv2.ipp.setUseIPP(False)),
OpenCV's own code runs, which the kernels reproduce: 0 levels for both.
Prints one line per kind and pass.
"""
import json
import pathlib
import sys

import cv2
import numpy as np


def compare(root: pathlib.Path, index: dict) -> dict:
    """Per kind: [values, differing, worst level, where the worst is]."""
    frames = {}
    stats = {"linear": [0, 0, 0, ""], "cubic": [0, 0, 0, ""]}
    for case in index["cases"]:
        name, w, h = case["frame"], case["width"], case["height"]
        if name not in frames:
            frames[name] = np.fromfile(root / f"{name}.rgb", dtype=np.uint8).reshape(h, w, 3)
        x1, y1, x2, y2 = case["box"]
        crop = frames[name][y1:y2, x1:x2]
        side = case["side"]
        interp = cv2.INTER_CUBIC if case["kind"] == "cubic" else cv2.INTER_LINEAR
        want = cv2.resize(crop, (side, side), interpolation=interp).transpose(2, 0, 1)
        got = np.fromfile(root / case["levels"], dtype=np.uint8).reshape(3, side, side)
        diff = np.abs(want.astype(np.int16) - got.astype(np.int16))
        s = stats[case["kind"]]
        s[0] += diff.size
        s[1] += int(np.count_nonzero(diff))
        if int(diff.max()) > s[2]:
            s[2] = int(diff.max())
            s[3] = f"{name} {case['box']}"
    return stats


def report(title: str, stats: dict, allowed: dict) -> bool:
    ok = True
    print(title)
    for kind, (n, differing, worst, where) in stats.items():
        line = f"  {kind}: {n} values, {differing} differ ({100 * differing / max(n, 1):.4f} %), worst {worst} level(s)"
        if worst:
            line += f" (at {where})"
        if worst > allowed[kind]:
            line += f": FAILED, at most {allowed[kind]} allowed"
            ok = False
        print(line)
    return ok


def main() -> int:
    root = pathlib.Path(sys.argv[1])
    index = json.loads((root / "index.json").read_text())
    backend = index["backend"]
    ipp = hasattr(cv2, "ipp") and cv2.ipp.useIPP()
    ok = report(
        f"kernels ({backend}) against cv2.resize, OpenCV {cv2.__version__}, IPP {'on' if ipp else 'off'}",
        compare(root, index),
        {"linear": 0, "cubic": 1},
    )
    if ipp:
        cv2.ipp.setUseIPP(False)
        ok &= report(
            f"kernels ({backend}) against cv2.resize, OpenCV {cv2.__version__}, IPP off (OpenCV's own code)",
            compare(root, index),
            {"linear": 0, "cubic": 0},
        )
    print("compare_cv2: ok" if ok else "compare_cv2: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
