#!/usr/bin/env python3
"""Times PaddleClas's own PP-ShiTu pipeline (deploy/python/predict_system.py,
paddleclas 2.6.0 on PaddlePaddle 3.3.1, CPU) on the same images and weights
as `shitud bench`, and writes the figures as JSON.

The pipeline is PaddleClas's code, unchanged, with the three adjustments the
reference outputs were made with (see tests/data/README.md):
  - Config.enable_memory_optim() is skipped: it fails in memory_optimize_pass on CPU in Paddle 3.3;
  - the detector runs with oneDNN off (oneDNN rejects its f64 interpolation attribute), the recogniser with it on;
  - detector boxes are clipped to the image and boxes under 1 px dropped (the reference crashes otherwise).
Threads: cpu_num_threads = the number of cores (the config's 10 would oversubscribe a small box).
"""
import argparse
import copy
import json
import os
import resource
import sys
import time

import numpy as np


def percentiles(values):
    v = sorted(values)
    if not v:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0}
    at = lambda q: v[min(len(v), max(1, int(np.ceil(q * len(v))))) - 1]
    return {"p50": at(0.50), "p99": at(0.99), "mean": float(np.mean(v))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--det-model", required=True, help="Paddle inference model dir of the detector (NMS in graph)")
    ap.add_argument("--rec-model", required=True, help="Paddle inference model dir of the recogniser")
    ap.add_argument("--index", required=True, help="PaddleClas index dir (vector.index + id_map.pkl)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write figures here")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()

    import paddle.inference
    paddle.inference.Config.enable_memory_optim = lambda self, *a, **k: None

    from paddleclas.deploy.python import predict_system
    from paddleclas.deploy.utils import config as pc_config

    cfg_path = os.path.join(os.path.dirname(predict_system.__file__), "..", "configs", "inference_general.yaml")
    cfg = pc_config.get_config(cfg_path, overrides=None, show=False)
    g = cfg["Global"]
    g["det_inference_model_dir"] = args.det_model
    g["rec_inference_model_dir"] = args.rec_model
    g["use_gpu"] = False
    g["enable_mkldnn"] = True
    g["cpu_num_threads"] = args.threads
    cfg["IndexProcess"]["index_dir"] = args.index

    from paddleclas.deploy.utils import predictor as pc_predictor

    # Paddle 3 turns oneDNN on by default, so "enable_mkldnn: False" alone is
    # not enough for the detector: its Config must be told explicitly.
    onednn = {"on": True}
    real_create = pc_predictor.create_predictor

    def create_predictor(config):
        if not onednn["on"]:
            config.disable_mkldnn()
        return real_create(config)

    pc_predictor.create_predictor = create_predictor
    real_det = predict_system.DetPredictor

    def det_without_onednn(config):
        c = copy.deepcopy(config)
        c["Global"]["enable_mkldnn"] = False
        onednn["on"] = False
        try:
            return real_det(c)
        finally:
            onednn["on"] = True

    predict_system.DetPredictor = det_without_onednn
    system = predict_system.SystemPredictor(cfg)

    stage = {"det": 0.0, "rec": 0.0}
    det_predict = system.det_predictor.predict
    rec_predict = system.rec_predictor.predict

    def det_clipped(img):
        t = time.perf_counter()
        h, w = img.shape[:2]
        out = []
        for r in det_predict(img):
            b = np.array(r["bbox"], dtype=np.float32)
            b[[0, 2]] = np.clip(b[[0, 2]], 0, w)
            b[[1, 3]] = np.clip(b[[1, 3]], 0, h)
            if b[2] - b[0] >= 1 and b[3] - b[1] >= 1:
                r["bbox"] = b
                out.append(r)
        stage["det"] += (time.perf_counter() - t) * 1e3
        return out

    def rec_timed(img, *a, **k):
        t = time.perf_counter()
        out = rec_predict(img, *a, **k)
        stage["rec"] += (time.perf_counter() - t) * 1e3
        return out

    system.det_predictor.predict = det_clipped
    system.rec_predictor.predict = rec_timed

    import cv2

    def one(path):
        stage["det"] = stage["rec"] = 0.0
        t0 = time.perf_counter()
        img = cv2.imread(path)
        if img is None:
            raise SystemExit(f"cannot read {path}")
        img = img[:, :, ::-1]
        t1 = time.perf_counter()
        system.predict(img)
        t2 = time.perf_counter()
        total = (t2 - t0) * 1e3
        return total, {"decode": (t1 - t0) * 1e3, "det": stage["det"], "rec": stage["rec"],
                       "search_nms": total - (t1 - t0) * 1e3 - stage["det"] - stage["rec"]}

    for _ in range(args.warmup):
        for p in args.images:
            one(p)
    lat, stages = [], {"decode": [], "det": [], "rec": [], "search_nms": []}
    start = time.perf_counter()
    for r in range(args.rounds):
        for p in args.images:
            total, s = one(p)
            lat.append(total)
            for k, v in s.items():
                stages[k].append(v)
        print(f"paddleclas: round {r + 1}/{args.rounds}", file=sys.stderr)
    seconds = time.perf_counter() - start
    doc = {
        "images": len(args.images), "rounds": args.rounds, "threads": args.threads,
        "frames": len(lat), "seconds": seconds, "images_per_s": len(lat) / seconds,
        "latency_ms": percentiles(lat),
        "stages_ms": {k: percentiles(v) for k, v in stages.items()},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    print(json.dumps(doc, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
