#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (valid inputs of each kind) into
fuzz/seeds/<target>/: libFuzzer starts from them and mutates. Run from the
repository root; scripts/fuzz.sh does."""
import hashlib, io, json, os, pickle, struct, sys, tarfile, zlib

out = sys.argv[1] if len(sys.argv) > 1 else "fuzz/seeds"

def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# request: a recognise request and gallery commands.
put("request", "recognize", b'{"request_id":"r1","image":"/9j/4AAQ","return_k":3,"min_score":0.5}')
put("request", "add", b'{"request_id":"g1","label":"green tea","path":"/srv/a.jpg"}')
put("request", "remove", b'{"request_id":"g2","ids":[1,2,3]}')

# gallery: a line change, a line state, and log frames.
ulid = "01ARYZ6S41TSV4RRFFQ69G5FAV"
vec = __import__("base64").b64encode(struct.pack("<4f", 1, 0, 0, 0)).decode()
changes = [
    {"change_id": ulid, "op": "add", "label": "cola", "source": "a.jpg", "added_unix": 1, "vector": vec},
    {"change_id": "01ARYZ6S42TSV4RRFFQ69G5FAV", "op": "remove", "label": "cola"},
    {"change_id": "01ARYZ6S43TSV4RRFFQ69G5FAV", "op": "remove", "ids": [4503599627370497, 3]},
]
put("gallery", "change", json.dumps({"request_id": "x", "change_id": ulid, "label": "a", "image": "AA=="}).encode())
state = {"format": 1, "line": "l1", "model_sha256": "ab" * 32, "dim": 4,
         "version": {"changes": 3, "last": changes[-1]["change_id"], "digest": "0011223344556677"},
         "published_by": "box0", "published_unix": 1, "changes": changes}
put("gallery", "state", json.dumps(state).encode())
def frame(obj):
    b = json.dumps(obj).encode()
    return struct.pack("<II", len(b), zlib.crc32(b)) + b
put("gallery", "line_log", b"".join(frame(c) for c in changes))
put("gallery", "wal", frame({"op": "add", "seq": 1, "item": {"id": 1, "label": "a", "source": "s"}, "vector": [1.0, 0.0]})
    + frame({"op": "remove", "seq": 2, "ids": [1]}))

# pickle: PaddleClas's id_map.pkl is a dict of int -> "path\tlabel" or label.
ids = {0: "gallery/a.jpg\tgreen tea", 1: "gallery/b.jpg\tcola", 70000: "x"}
for proto in range(0, 6):
    put("pickle", f"id_map_p{proto}", pickle.dumps(ids, protocol=proto))
# PaddleClas's own, with numpy int64 keys (build_gallery.py's output).
with open("tests/data/reference/paddleclas_index/id_map.pkl", "rb") as f:
    put("pickle", "paddleclas_id_map", f.read())

# ota_bundle: byte 0 = manifest length / 4, the manifest, then tar entries.
payload = b"hello"
manifest = {"format": 1, "version": "1.2.0", "created_unix": 1, "min_daemon_version": "0.1.0",
            "targets": [], "parts": [{"role": "gallery", "path": "gallery", "version": "1"}],
            "files": [{"path": "gallery/a.txt", "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}],
            "golden": [], "allow_downgrade": False}
m = json.dumps(manifest).encode()
m += b" " * (-len(m) % 4)
assert len(m) // 4 < 256
def tar_of(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, body, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            info.size = len(body) if kind == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(body) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()
put("ota_bundle", "valid", bytes([len(m) // 4]) + m + tar_of([("gallery/a.txt", payload, tarfile.REGTYPE)]))
put("ota_bundle", "symlink", bytes([len(m) // 4]) + m + tar_of([("gallery/a.txt", b"", tarfile.SYMTYPE)]))
put("ota_bundle", "escape", bytes([len(m) // 4]) + m + tar_of([("../a.txt", payload, tarfile.REGTYPE)]))
