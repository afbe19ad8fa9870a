#!/usr/bin/env python3
"""Cuts a PicoDet ONNX graph exported with NMS inside (paddle2onnx of a
PaddleDetection/PaddleClas inference model) just before its NMS, so that it
batches and shitu-edge runs the NMS on the host.

    cut_nms.py det_nms.onnx det_prenms.onnx

The cut model takes `image` [N,3,640,640] and returns
  boxes  [N, A, 4]  x1,y1,x2,y2 in 640-input pixels (the graph's boxes *before*
                    they are divided by scale_factor), and
  scores [N, C, A]  sigmoid scores, as the NMS receives them.

The batch dimension is made dynamic and checked with ONNX Runtime at batch 1
and 2; if the graph hard-codes batch 1 somewhere, the batch stays 1 and a
warning says so (shitu-edge then runs it frame by frame).
"""
import sys

import numpy as np
import onnx
from onnx import helper, utils


def fail(msg):
    sys.exit(f"cut_nms: {msg}")


def main(src, dst):
    model = onnx.load(src)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}

    def source(name):
        """The node that really makes `name`, looking through Identity nodes."""
        n = producer.get(name)
        while n is not None and n.op_type == "Identity":
            name = n.input[0]
            n = producer.get(name)
        return name, n

    def depends_on(name, graph_input, seen=None):
        seen = seen if seen is not None else set()
        if name == graph_input:
            return True
        if name in seen or name not in producer:
            return False
        seen.add(name)
        return any(depends_on(i, graph_input, seen) for i in producer[name].input)

    nms = [n for n in g.node if n.op_type == "NonMaxSuppression"]
    if len(nms) != 1:
        fail(f"expected one NonMaxSuppression node, found {len(nms)}: is this the NMS-in-graph export?")
    boxes_in, scores_in = nms[0].input[0], nms[0].input[1]

    # PicoDet divides the boxes by scale_factor right before NMS; cut above that.
    _, div = source(boxes_in)
    if div is None or div.op_type != "Div" or not depends_on(div.input[1], "scale_factor"):
        fail(f"expected the NMS boxes to be boxes / scale_factor, found {div.op_type if div else 'a graph input'}")
    boxes = div.input[0]
    scores, _ = source(scores_in)

    cut = utils.Extractor(model).extract_model(["image"], [boxes, scores])
    # Readable output names.
    for old, new in ((boxes, "boxes"), (scores, "scores")):
        cut.graph.node.append(helper.make_node("Identity", [old], [new]))
    outs = {o.name: o for o in cut.graph.output}
    del cut.graph.output[:]
    for old, new in ((boxes, "boxes"), (scores, "scores")):
        o = outs[old]
        o.name = new
        cut.graph.output.append(o)
    onnx.checker.check_model(cut)

    fixed = onnx.ModelProto()
    fixed.CopyFrom(cut)
    # Dynamic batch: input and outputs get a symbolic first dimension; stale
    # intermediate shapes are dropped so nothing pins it back to 1.
    for v in list(cut.graph.input) + list(cut.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    del cut.graph.value_info[:]

    import onnxruntime as ort

    def run(m, n):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((n, 3, 640, 640)).astype(np.float32)
        return sess.run(None, {"image": x})

    b1, s1 = run(fixed, 1)
    if b1.ndim != 3 or b1.shape[2] != 4 or s1.ndim != 3 or s1.shape[2] != b1.shape[1]:
        fail(f"unexpected output shapes boxes {b1.shape}, scores {s1.shape}")
    try:
        b2, _ = run(cut, 2)
        if b2.shape[0] != 2:
            raise RuntimeError(f"batch 2 gave boxes {b2.shape}")
        out = cut
        print(f"cut_nms: {dst}: image [N,3,640,640] -> boxes [N,{b1.shape[1]},4], scores [N,{s1.shape[1]},{s1.shape[2]}] (dynamic batch)")
    except Exception as e:  # the graph pins batch 1 somewhere
        out = fixed
        print(f"cut_nms: warning: the graph does not batch ({e}); keeping batch 1", file=sys.stderr)
    onnx.save(out, dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail("usage: cut_nms.py DET_NMS.onnx OUT_PRENMS.onnx")
    main(sys.argv[1], sys.argv[2])
