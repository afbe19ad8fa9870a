#!/usr/bin/env python3
"""Prints the shitu-edge vs PaddleClas table: report.py PADDLECLAS.json SHITU_B1.json [SHITU_BN.json ...]"""
import json
import platform
import sys


def main(theirs_path, *ours_paths):
    pc = json.load(open(theirs_path))
    docs = [json.load(open(p)) for p in ours_paths]
    ours = docs[0]
    runs, rss = {}, {}
    for d in docs:
        for r in d["runs"]:
            runs[r["batch"]] = r
            rss[r["batch"]] = d["peak_rss_mib"]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"Machine: {cpu}, {len(open('/proc/cpuinfo').read().split('processor')) - 1} cores; {ours['images']} scenes x {ours['rounds']} rounds.\n")
    cols = ["PaddleClas"] + [f"shitu-edge batch {b}" for b in runs]
    print("| | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    row = lambda name, vals: print(f"| {name} | " + " | ".join(vals) + " |")
    row("images/s", [f"{pc['images_per_s']:.2f}"] + [f"{r['images_per_s']:.2f} (**{r['images_per_s'] / pc['images_per_s']:.1f}x**)" for r in runs.values()])
    for q in ("p50", "p99"):
        row(f"latency {q} ms", [f"{pc['latency_ms'][q]:.0f}"] + [f"{r['latency_ms'][q]:.0f} ({r['latency_ms'][q] / pc['latency_ms'][q]:.2f}x)" for r in runs.values()])
    row("peak RSS MiB", [f"{pc['peak_rss_mib']:.0f}"] + [f"{rss[b]:.0f} ({rss[b] / pc['peak_rss_mib']:.2f}x)" for b in runs])
    print()
    print("Per stage, p50 / p99 ms per image (batched stages: each image's share):\n")
    print("| stage | PaddleClas | " + " | ".join(f"shitu-edge batch {b}" for b in runs) + " |")
    print("|---" * (len(runs) + 2) + "|")
    s = pc["stages_ms"]
    pcs = {"decode": s["decode"], "det (pre+infer+post)": s["det"], "rec (pre+infer, all crops)": s["rec"], "search + NMS": s["search_nms"]}
    fmt = lambda p: f"{p['p50']:.1f} / {p['p99']:.1f}"
    names = ["decode", "det_pre", "det_infer", "det_post", "rec_pre", "rec_infer", "search"]
    pc_for = {"decode": "decode", "det_infer": "det (pre+infer+post)", "rec_infer": "rec (pre+infer, all crops)", "search": "search + NMS"}
    for n in names:
        theirs = fmt(pcs[pc_for[n]]) + (" (all det)" if n == "det_infer" else " (all rec)" if n == "rec_infer" else "") if n in pc_for else "–"
        print(f"| {n} | {theirs} | " + " | ".join(fmt(r["stages_ms"][n]) for r in runs.values()) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
