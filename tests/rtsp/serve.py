#!/usr/bin/python3
"""An RTSP camera for the tests: gst-rtsp-server (Debian's, through
PyGObject) streaming a loop of still frames, each shown for a known time.

    serve.py --port 8554 --width 960 --height 600 --fps 5 --hold-ms 1200 f0.rgb f1.rgb ...

Each FILE is raw RGB, width*height*3 bytes. Frame n of a session shows file
(n // frames_per_file) % count. The stream is raw RGB (RFC 4175), so the
frames the daemon decodes are the files' pixels exactly, and only over TCP
(a frame is ~1.7 MB: UDP on a loaded machine would drop parts of it).

For each client session, one JSON line on stdout when its first frame is
due: {"session": k, "start_ms": <unix ms at which frame 0 is on screen>}.
Frame n is on screen from start_ms + n * 1000 / fps.
"""

import argparse
import json
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/scenes")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--hold-ms", type=int, default=1200)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()

    Gst.init(None)
    size = a.width * a.height * 3
    frames = []
    for f in a.files:
        data = open(f, "rb").read()
        if len(data) != size:
            sys.exit(f"{f}: {len(data)} bytes, expected {size}")
        frames.append(Gst.Buffer.new_wrapped(data))
    per_file = max(1, a.hold_ms * a.fps // 1000)
    duration = Gst.SECOND // a.fps
    # The pipeline's clock is the wall clock, so running time plus base
    # time is a unix instant: what start_ms reports.
    clock = GObjectNew(Gst.SystemClock, clock_type=Gst.ClockType.REALTIME)
    sessions = [0]

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true format=time "
        f"caps=video/x-raw,format=RGB,width={a.width},height={a.height},framerate={a.fps}/1 "
        "! identity sync=true ! rtpvrawpay name=pay0 pt=96 mtu=60000 )"
    )
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    factory.set_clock(clock)

    def configure(_factory, media):
        element = media.get_element()
        src = element.get_by_name("src")
        state = {"n": 0, "session": sessions[0]}
        sessions[0] += 1

        def need_data(appsrc, _length):
            n = state["n"]
            if n == 0:
                base = appsrc.get_base_time()
                print(json.dumps({"session": state["session"], "start_ms": base // 1_000_000}), flush=True)
            buf = frames[(n // per_file) % len(frames)].copy()
            buf.pts = n * duration
            buf.duration = duration
            state["n"] = n + 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)

    factory.connect("media-configure", configure)
    server = GstRtspServer.RTSPServer()
    server.set_service(str(a.port))
    server.get_mount_points().add_factory(a.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on port {a.port}")
    print(json.dumps({"listening": a.port}), flush=True)
    GLib.MainLoop().run()


def GObjectNew(cls, **props):
    from gi.repository import GObject

    return GObject.new(cls, **{k.replace("_", "-"): v for k, v in props.items()})


if __name__ == "__main__":
    main()
