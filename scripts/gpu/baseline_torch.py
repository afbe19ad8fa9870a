#!/usr/bin/env python3
"""The same-run baseline for the preprocessing benchmark: the detector's and
the recogniser's resize and normalisation in PyTorch on the same device, on
the shapes tests/it/gpu.rs `gpu_preprocess_benchmark` times (a 1080p frame
to 640 x 640 bicubic; 6 crops of it to 224 x 224 bilinear, one interpolate
call each as torch needs). Run by scripts/gpu-check.sh after the benchmark;
the issue's targets are ratios to these figures. Not a pixel reference:
torch's resize is not OpenCV's."""
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("baseline_torch: no torch on this machine; no same-run baseline", file=sys.stderr)
    sys.exit(0)
if not torch.cuda.is_available():
    print("baseline_torch: torch sees no GPU", file=sys.stderr)
    sys.exit(1)

dev = torch.device("cuda")
mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
frame = torch.randint(0, 256, (1080, 1920, 3), dtype=torch.uint8, device=dev)
boxes = [(40 + 300 * i, 60 + 120 * i, 40 + 300 * i + 180 + 20 * i, 60 + 120 * i + 240) for i in range(6)]


def detector():
    x = frame.permute(2, 0, 1).unsqueeze(0).float()
    x = F.interpolate(x, size=(640, 640), mode="bicubic", align_corners=False)
    return ((x.clamp(0, 255).round() / 255.0) - mean) / std


def recogniser():
    out = []
    for x1, y1, x2, y2 in boxes:
        x = frame[y1:y2, x1:x2].permute(2, 0, 1).unsqueeze(0).float()
        out.append(F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False))
    x = torch.cat(out)
    return ((x.round() / 255.0) - mean) / std


def timed(f, iters):
    f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        f()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}, same run:")
print(f"| detector: 1080p frame → 640 bicubic, normalised (torch) | {timed(detector, 200):.4f} ms |")
print(f"| recogniser: 6 crops → 224 bilinear, normalised (torch) | {timed(recogniser, 200):.4f} ms |")
