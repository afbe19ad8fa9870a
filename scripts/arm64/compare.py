#!/usr/bin/env python3
"""Compares two `shitud recognize` outputs (JSON lines), one per architecture:
same images in the same order, same labels, boxes within 1 px, scores within
1e-3. Prints one line per image and exits 1 on the first difference found
in each image (all images are checked)."""
import json
import sys

BOX_PX = 1.0
SCORE = 1e-3


def load(path):
    # One line per image; the closing {"summary": …} line is not an image.
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [x for x in lines if "image" in x]


def results(answer):
    # The recognise answer's items, in the pipeline's order.
    return answer.get("results", [])


def main(a_path, b_path):
    a, b = load(a_path), load(b_path)
    if len(a) != len(b):
        print(f"{len(a)} answers in {a_path}, {len(b)} in {b_path}")
        return 1
    if not a:
        print(f"no answers in {a_path}")
        return 1
    bad = 0
    worst_box = worst_score = 0.0
    for x, y in zip(a, b):
        name = x.get("image", "?")
        rx, ry = results(x), results(y)
        why = None
        if name != y.get("image"):
            why = f"different images: {name} vs {y.get('image')}"
        elif [r.get("rec_docs") for r in rx] != [r.get("rec_docs") for r in ry]:
            why = f"labels {[r.get('rec_docs') for r in rx]} vs {[r.get('rec_docs') for r in ry]}"
        else:
            for p, q in zip(rx, ry):
                d = max(abs(u - v) for u, v in zip(p["bbox"], q["bbox"]))
                s = abs(p["rec_scores"] - q["rec_scores"])
                worst_box, worst_score = max(worst_box, d), max(worst_score, s)
                if d > BOX_PX or s > SCORE:
                    why = f"{p['rec_docs']}: box {p['bbox']} vs {q['bbox']}, score {p['rec_scores']} vs {q['rec_scores']}"
                    break
        print(f"{'DIFFERS' if why else 'same   '} {name}: {why or f'{len(rx)} items'}")
        bad += why is not None
    print(f"{len(a) - bad}/{len(a)} images answered the same "
          f"(largest box difference {worst_box:g} px, score {worst_score:.2e})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
