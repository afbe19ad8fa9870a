//! Cameras with real parts: a gst-rtsp-server camera (tests/rtsp/serve.py)
//! streaming the test scenes, each on screen for a known time, a real
//! mosquitto and `shitud run`. A trigger is answered with what was on
//! screen at its moment, as the in-process pipeline (what `shitud
//! recognize` runs) answers for that frame; an outage is reported at once
//! and the source comes back by itself; a `file://` source plays in a loop.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opencv::core::{Mat, MatTraitConst, MatTraitConstManual, Rect, Scalar, CV_8UC3};
use opencv::{imgcodecs, imgproc};

use crate::common::mqtt::*;
use crate::common::*;

pub(crate) const TRIGGER: &str = "shitu/test/trigger";
pub(crate) const STATUS: &str = "shitu/test/status";
/// The canvas every scene is drawn on: a stream has one frame size.
const W: i32 = 960;
const H: i32 = 600;
const FPS: i64 = 5;
/// How long each scene is on screen.
const HOLD_MS: i64 = 1200;
const SCENES: usize = 4;

/// The scenes as the camera shows them: PNG (for the expected answers) and
/// raw RGB (for the server), with what the in-process pipeline finds.
fn frames(dir: &Path, gallery: &Path) -> (Vec<PathBuf>, Vec<Expected>) {
    let mut s = settings("det_prenms.onnx");
    s.search.index = gallery.to_path_buf();
    let mut pipeline = shitu_edge::Pipeline::open(&s).expect("pipeline");
    let mut raws = Vec::new();
    let mut expected = Vec::new();
    for k in 0..SCENES {
        let scene = imgcodecs::imread(
            data(&format!("images/scenes/scene_{k:05}.jpg"))
                .to_str()
                .unwrap(),
            imgcodecs::IMREAD_COLOR,
        )
        .unwrap();
        let mut canvas =
            Mat::new_rows_cols_with_default(H, W, CV_8UC3, Scalar::all(114.0)).unwrap();
        let (w, h) = (scene.cols().min(W), scene.rows().min(H));
        let mut roi = Mat::roi_mut(&mut canvas, Rect::new(0, 0, w, h)).unwrap();
        Mat::roi(&scene, Rect::new(0, 0, w, h))
            .unwrap()
            .copy_to(&mut roi)
            .unwrap();
        let png = dir.join(format!("frame{k}.png"));
        imgcodecs::imwrite_def(png.to_str().unwrap(), &canvas).unwrap();
        let mut rgb = Mat::default();
        imgproc::cvt_color_def(&canvas, &mut rgb, imgproc::COLOR_BGR2RGB).unwrap();
        let raw = dir.join(format!("frame{k}.rgb"));
        std::fs::write(&raw, rgb.data_bytes().unwrap()).unwrap();
        raws.push(raw);
        let frame = shitu_edge::input::read(&png, &s.input).unwrap();
        let r = pipeline.recognize(&[frame]).unwrap().remove(0);
        expected.push(
            r.results
                .iter()
                .map(|x| (x.rec_docs.clone(), x.bbox, x.rec_scores))
                .collect(),
        );
    }
    (raws, expected)
}

/// tests/rtsp/serve.py on `port`; its session lines come on the channel.
struct Camera {
    child: Child,
    sessions: mpsc::Receiver<i64>,
}

impl Camera {
    fn start(port: u16, raws: &[PathBuf]) -> Camera {
        let mut child = Command::new("/usr/bin/python3")
            .arg(root().join("tests/rtsp/serve.py"))
            .args(["--port", &port.to_string()])
            .args(["--width", &W.to_string(), "--height", &H.to_string()])
            .args(["--fps", &FPS.to_string(), "--hold-ms", &HOLD_MS.to_string()])
            .args(raws)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tests/rtsp/serve.py (python3-gi, gir1.2-gst-rtsp-server-1.0: scripts/setup.sh)");
        let out = child.stdout.take().unwrap();
        let (tx, sessions) = mpsc::channel();
        let (up_tx, up) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["listening"].is_u64() {
                    let _ = up_tx.send(());
                }
                if let Some(ms) = v["start_ms"].as_i64() {
                    let _ = tx.send(ms);
                }
            }
        });
        up.recv_timeout(Duration::from_secs(20))
            .expect("the RTSP server did not start listening");
        Camera { child, sessions }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The scene on screen at `t` in a session that started at `start`.
fn scene_at(start: i64, t: i64) -> usize {
    // The server's frames are whole: frame n covers [n, n+1) / FPS.
    let frame = (t - start) * FPS / 1000;
    let per_scene = HOLD_MS * FPS / 1000;
    ((frame / per_scene) as usize) % SCENES
}

/// The first moment from `t` in the middle half of a scene, so that a
/// frame interval of slack cannot cross into the next.
fn mid_scene(start: i64, mut t: i64) -> i64 {
    while (t - start) % HOLD_MS < HOLD_MS / 4 || (t - start) % HOLD_MS > HOLD_MS * 3 / 4 {
        t += 50;
    }
    t
}

/// A trigger with a response topic.
pub(crate) async fn trigger(ctl: &Controller, id: &str, body: serde_json::Value) {
    let mut body = body;
    body["request_id"] = id.into();
    ctl.request(TRIGGER, serde_json::to_vec(&body).unwrap(), id, vec![])
        .await;
}

pub(crate) async fn answer(ctl: &mut Controller, id: &str, wait: Duration) -> serde_json::Value {
    let deadline = Instant::now() + wait;
    loop {
        let m = ctl
            .reply_before(deadline)
            .await
            .unwrap_or_else(|| panic!("no answer to {id} within {wait:?}"));
        if m.json["request_id"] == id {
            return m.json;
        }
    }
}

fn source_state(status: &serde_json::Value) -> &str {
    status["sources"]["cam1"]["state"].as_str().unwrap_or("")
}

/// Waits until `P/status` shows `cam1` streaming; fails with the daemon's log.
pub(crate) async fn wait_streaming(ctl: &mut Controller, daemon: &Daemon) {
    let streaming = ctl
        .wait_for(STATUS, Duration::from_secs(120), |j| {
            source_state(j) == "streaming"
        })
        .await;
    assert!(
        streaming.is_some(),
        "cam1 never streamed:\n{}",
        daemon.log_text()
    );
}

pub(crate) fn now_ms() -> i64 {
    shitu_edge::input::camera::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_triggers_get_the_frame_of_their_moment_and_outages_are_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let g = flat_gallery(tmp.path());
    let (raws, expected) = frames(tmp.path(), &g);
    assert!(
        expected.iter().filter(|e| !e.is_empty()).count() >= 3,
        "the scenes should show products: {expected:?}"
    );
    let cam_port = free_port();
    let mut camera = Camera::start(cam_port, &raws);
    let broker = Broker::start(&tmp.path().join("broker"));
    let metrics = free_port();
    let conf = daemon_config(
        tmp.path(),
        broker.port,
        &g,
        &format!(
            "[capture]\ndeadline_ms = 20000\nstall_ms = 2000\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\
             [[sources]]\nname = \"cam1\"\nuri = \"rtsp://127.0.0.1:{cam_port}/scenes\"\n"
        ),
    );
    let listen = format!("127.0.0.1:{metrics}");
    let daemon = Daemon::start_with_env(
        &conf,
        &tmp.path().join("daemon.log"),
        &[("SHITU__HTTP__LISTEN", &listen)],
    );
    let mut ctl = Controller::connect(broker.port, "ctl-cam", &[STATUS]).await;
    wait_streaming(&mut ctl, &daemon).await;
    let mut start = camera
        .sessions
        .recv_timeout(Duration::from_secs(5))
        .expect("the server reports its session");

    // Every scene has been on screen once: trigger each at the middle of
    // its time, after the fact (the frames are in the ring). The scenes'
    // times are the session's: should the source have reconnected (a slow
    // start on a loaded machine), wait for the newest session's round.
    loop {
        let all_shown = start + HOLD_MS * SCENES as i64 + 300;
        tokio::time::sleep(Duration::from_millis((all_shown - now_ms()).max(0) as u64)).await;
        match camera.sessions.try_iter().last() {
            Some(newer) => start = newer,
            None => break,
        }
    }
    for k in 0..SCENES {
        let t = start + k as i64 * HOLD_MS + HOLD_MS / 2;
        let id = format!("past{k}");
        trigger(
            &ctl,
            &id,
            serde_json::json!({"source": "cam1", "t_ms": t, "item": 4700 + k}),
        )
        .await;
        let a = answer(&mut ctl, &id, Duration::from_secs(60)).await;
        check_answer(&a, &expected[scene_at(start, t)]);
        assert_eq!(scene_at(start, t), k);
        assert_eq!(a["source"], "cam1", "{a}");
        assert_eq!(
            a["item"],
            4700 + k,
            "the trigger's own fields come back: {a}"
        );
        let captured = a["captured_at_ms"].as_i64().expect("captured_at_ms");
        // The first frame at or after t: no earlier than t, and within one
        // frame interval plus the trip to the box (generous: it is the
        // time the frame reached the jitter buffer, which load delays).
        assert!(
            captured >= t && captured < t + 1000 / FPS + 500,
            "t {t}, captured {captured}"
        );
        assert_eq!(a["frame_age_ms"].as_i64(), Some(captured - t), "{a}");
    }

    // A trigger for a moment still to come waits for its frame.
    let now = now_ms();
    let t = mid_scene(start, now + 400);
    trigger(
        &ctl,
        "future",
        serde_json::json!({"source": "cam1", "t_ms": t}),
    )
    .await;
    let a = answer(&mut ctl, "future", Duration::from_secs(60)).await;
    check_answer(&a, &expected[scene_at(start, t)]);
    assert!(a["captured_at_ms"].as_i64().unwrap() >= t, "{a}");

    // Without t_ms: the trigger's arrival is its moment.
    trigger(&ctl, "now", serde_json::json!({"source": "cam1"})).await;
    let a = answer(&mut ctl, "now", Duration::from_secs(60)).await;
    assert_eq!(a["ok"], true, "{a}");
    assert!(a["frame_age_ms"].as_i64().unwrap() >= 0, "{a}");

    // Bad triggers: each answered with its reason, the daemon serving on.
    for (id, body, code, says) in [
        (
            "nosrc",
            serde_json::json!({"source": "cam9"}),
            "unknown_source",
            "this box has cam1",
        ),
        (
            "old",
            serde_json::json!({"source": "cam1", "t_ms": now_ms() - 60_000}),
            "bad_request",
            "capture.max_skew_ms",
        ),
        (
            "secs",
            serde_json::json!({"source": "cam1", "t_ms": now_ms() / 1000}),
            "bad_request",
            "milliseconds",
        ),
    ] {
        trigger(&ctl, id, body).await;
        let a = answer(&mut ctl, id, Duration::from_secs(30)).await;
        assert_eq!(a["ok"], false, "{a}");
        assert_eq!(a["error"]["code"], code, "{a}");
        assert!(
            a["error"]["message"].as_str().unwrap().contains(says),
            "{a}"
        );
    }
    // The source's health is on /metrics too.
    let (code, body) = http_get(metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("shitu_source_state{source=\"cam1\",state=\"streaming\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("shitu_source_frames_total{source=\"cam1\"}"),
        "{body}"
    );

    // The camera goes away: the source says so, and a trigger is answered
    // at once rather than at its deadline (20 s here).
    camera.kill();
    let down = ctl
        .wait_for(STATUS, Duration::from_secs(30), |j| {
            !source_state(j).is_empty() && source_state(j) != "streaming"
        })
        .await
        .expect("the status shows the outage");
    let sent = Instant::now();
    trigger(&ctl, "outage", serde_json::json!({"source": "cam1"})).await;
    let a = answer(&mut ctl, "outage", Duration::from_secs(30)).await;
    let took = sent.elapsed();
    assert_eq!(a["error"]["code"], "source_unavailable", "{a}");
    assert!(
        took < Duration::from_secs(10),
        "answered after {took:?}, not at once: {a}"
    );
    assert_eq!(a["source"], "cam1", "{a}");

    // It comes back on the same port: the source reconnects by itself.
    let mut camera = Camera::start(cam_port, &raws);
    let back = ctl
        .wait_for(STATUS, Duration::from_secs(60), |j| {
            source_state(j) == "streaming" && j["sources"]["cam1"]["reconnects"].as_u64() >= Some(1)
        })
        .await;
    assert!(
        back.is_some(),
        "cam1 did not come back (last seen {}):\n{}",
        down.json["sources"],
        daemon.log_text()
    );
    let first = camera
        .sessions
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    let start = camera.sessions.try_iter().last().unwrap_or(first);
    let t = mid_scene(start, now_ms() + 300);
    trigger(
        &ctl,
        "back",
        serde_json::json!({"source": "cam1", "t_ms": t}),
    )
    .await;
    let a = answer(&mut ctl, "back", Duration::from_secs(60)).await;
    check_answer(&a, &expected[scene_at(start, t)]);
    camera.kill();
    assert_eq!(daemon.stop(), Some(0));
}

/// Whether an answer has exactly the labels and boxes expected.
fn same_objects(a: &serde_json::Value, expected: &Expected) -> bool {
    let got: Vec<(String, Vec<i64>)> = a["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let b = r["bbox"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_i64());
            (
                r["rec_docs"].as_str().unwrap_or_default().to_string(),
                b.collect(),
            )
        })
        .collect();
    let want: Vec<(String, Vec<i64>)> = expected
        .iter()
        .map(|(l, b, _)| (l.clone(), b.iter().map(|&v| i64::from(v)).collect()))
        .collect();
    got == want
}

/// A 2-second clip of the four frames (written by [`frames`] into `dir`),
/// raw BGR in AVI (lossless), made by GStreamer itself.
fn clip(dir: &Path) -> PathBuf {
    let clip = dir.join("clip.avi");
    let made = Command::new("gst-launch-1.0")
        .arg("-q")
        .arg("multifilesrc")
        .arg(format!("location={}/frame%d.png", dir.display()))
        .args(["index=0", "stop-index=3", "caps=image/png,framerate=2/1"])
        .args([
            "!",
            "pngdec",
            "!",
            "videoconvert",
            "!",
            "video/x-raw,format=BGR",
            "!",
            "avimux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", clip.display()))
        .status()
        .expect("gst-launch-1.0 (gstreamer1.0-tools: scripts/setup.sh)");
    assert!(made.success());
    clip
}

/// Continuous mode: a source at `fps` publishes its set of labels on
/// `P/detections/<source>` when it changes, and a heartbeat when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_mode_publishes_label_changes_and_heartbeats() {
    let tmp = tempfile::tempdir().unwrap();
    let g = flat_gallery(tmp.path());
    let (_, expected) = frames(tmp.path(), &g);
    let clip = clip(tmp.path());
    let sets: Vec<Vec<String>> = expected
        .iter()
        .map(|e| {
            let mut l: Vec<String> = e.iter().map(|(l, _, _)| l.clone()).collect();
            l.sort();
            l.dedup();
            l
        })
        .collect();
    let broker = Broker::start(&tmp.path().join("broker"));
    let conf = daemon_config(
        tmp.path(),
        broker.port,
        &g,
        &format!(
            "[capture]\nheartbeat_s = 2\n\
             [[sources]]\nname = \"belt\"\nuri = \"file://{}\"\nfps = 4\n\
             [[sources]]\nname = \"still\"\nfps = 1\n\
             uri = \"gst:videotestsrc is-live=true pattern=black ! video/x-raw,width=320,height=240,framerate=5/1 ! videoconvert ! appsink name=sink\"\n",
            clip.display()
        ),
    );
    let daemon = Daemon::start(&conf, &tmp.path().join("daemon.log"));
    let mut ctl = Controller::connect(broker.port, "ctl-cont", &["shitu/test/detections/+"]).await;
    let mut belt = Vec::new();
    let mut still = Vec::new();
    let until = Instant::now() + Duration::from_secs(90);
    while Instant::now() < until && (belt.len() < 3 || still.len() < 3) {
        let Some(m) = ctl.next(Duration::from_secs(1)).await else {
            continue;
        };
        match m.topic.as_str() {
            "shitu/test/detections/belt" => belt.push(m.json),
            "shitu/test/detections/still" => still.push((Instant::now(), m.json)),
            _ => {}
        }
    }
    assert!(
        belt.len() >= 3 && still.len() >= 3,
        "belt {belt:?}\nstill {still:?}\n{}",
        daemon.log_text()
    );
    // The belt changes scene every 0.5 s: each publication is a change, to
    // the labels of one of the clip's scenes, different from the last.
    let labels = |j: &serde_json::Value| -> Vec<String> {
        j["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    for (i, d) in belt.iter().enumerate() {
        assert_eq!(d["source"], "belt");
        assert_eq!(d["state"], "streaming");
        assert!(sets.contains(&labels(d)), "{d} is none of {sets:?}");
        if i > 0 && d["changed"] == true {
            assert_ne!(labels(d), labels(&belt[i - 1]), "{d}");
        }
        assert!(d["captured_at_ms"].is_i64(), "{d}");
    }
    assert!(belt.iter().filter(|d| d["changed"] == true).count() >= 3);
    // The still camera's set never changes: the first publication, then heartbeats.
    assert_eq!(still[0].1["changed"], true, "{:?}", still[0]);
    for pair in still.windows(2) {
        assert_eq!(pair[1].1["changed"], false, "{:?}", pair[1]);
        assert_eq!(labels(&pair[1].1), labels(&still[0].1));
    }
    // Heartbeats, not a publication per frame: 2 s apart on average. The
    // times are when this test read them, so one gap alone may shrink by
    // however long the test was not scheduled; the mean does not.
    if let (Some(first), Some(last)) = (still.first(), still.last()) {
        if still.len() > 1 {
            let mean = (last.0 - first.0) / (still.len() as u32 - 1);
            assert!(
                mean > Duration::from_millis(1500),
                "heartbeats {mean:?} apart on average"
            );
        }
    }
    assert_eq!(daemon.stop(), Some(0));
}

/// Unknown items end to end: a product the gallery lacks is kept and
/// announced on `P/unknown`; enrolled by its id on `P/gallery/add`, the next
/// trigger on it is recognised; forged or stale ids change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_item_is_announced_enrolled_and_then_recognised() {
    let tmp = tempfile::tempdir().unwrap();
    let (g, gone_box, clip) = gallery_lacking_a_product(tmp.path());
    let broker = Broker::start(&tmp.path().join("broker"));
    let unknown_dir = tmp.path().join("unknown");
    let conf = daemon_config(
        tmp.path(),
        broker.port,
        &g,
        &format!(
            "[capture]\nunknown_dir = \"{}\"\nunknown_max_items = 50\n\
             [[sources]]\nname = \"cam1\"\nuri = \"file://{}\"\n",
            unknown_dir.display(),
            clip.display()
        ),
    );
    let daemon = Daemon::start(&conf, &tmp.path().join("daemon.log"));
    let mut ctl =
        Controller::connect(broker.port, "ctl-unknown", &[STATUS, "shitu/test/unknown"]).await;
    wait_streaming(&mut ctl, &daemon).await;
    let (trigger_id, captured, unknown_id) = find_unknown(&mut ctl, &daemon, gone_box).await;
    // Announced, with the trigger, the box and the candidates.
    let announced = ctl
        .wait_for("shitu/test/unknown", Duration::from_secs(30), |j| {
            j["unknown_id"] == unknown_id.as_str()
        })
        .await
        .expect("announced on P/unknown");
    assert_eq!(announced.json["source"], "cam1");
    assert_eq!(announced.json["request_id"], trigger_id.as_str());
    assert_eq!(announced.json["device_id"], "test");
    assert!(
        announced.json["top_k"][0]["score"].as_f64().unwrap() < 0.9,
        "{}",
        announced.json
    );
    assert!(unknown_dir.join(format!("{unknown_id}.png")).is_file());

    // Bad enrolments change nothing.
    for (id, body, says) in [
        (
            "e-forged",
            serde_json::json!({"unknown_id": "01JD3Q8ZK5V3N4W7Y2C9M6T0AB", "label": "x"}),
            "no unknown item",
        ),
        (
            "e-escape",
            serde_json::json!({"unknown_id": "../../etc/passwd", "label": "x"}),
            "not an unknown item id",
        ),
    ] {
        let mut body = body;
        body["request_id"] = id.into();
        ctl.request(
            "shitu/test/gallery/add",
            serde_json::to_vec(&body).unwrap(),
            id,
            vec![],
        )
        .await;
        let a = answer(&mut ctl, id, Duration::from_secs(30)).await;
        assert_eq!(a["error"]["code"], "bad_request", "{a}");
        assert!(
            a["error"]["message"].as_str().unwrap().contains(says),
            "{a}"
        );
    }
    // The operator names it.
    let body = serde_json::json!({"request_id": "enrol", "unknown_id": unknown_id, "label": "new-product"});
    ctl.request(
        "shitu/test/gallery/add",
        serde_json::to_vec(&body).unwrap(),
        "enrol",
        vec![],
    )
    .await;
    let a = answer(&mut ctl, "enrol", Duration::from_secs(60)).await;
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["added"].as_array().map(Vec::len), Some(1), "{a}");
    assert!(
        !unknown_dir.join(format!("{unknown_id}.png")).exists(),
        "an enrolled item is no longer unknown"
    );

    recognised_again(&mut ctl, captured, gone_box).await;

    // The same store from the command line.
    assert_eq!(daemon.stop(), Some(0));
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(["unknown", "list", "--json", "--config"])
        .arg(&conf)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(listed
        .iter()
        .all(|i| i["unknown_id"] != unknown_id.as_str()));
    if let Some(other) = listed.first() {
        let id = other["unknown_id"].as_str().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shitud"))
            .args(["unknown", "drop", id, "--config"])
            .arg(&conf)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!unknown_dir.join(format!("{id}.png")).exists());
    }
}

/// A gallery without the product of the first detected (not whole-frame)
/// result of the scenes, where it was, and the scenes' clip.
pub(crate) fn gallery_lacking_a_product(dir: &Path) -> (PathBuf, [i32; 4], PathBuf) {
    let g = flat_gallery(dir);
    let (_, expected) = frames(dir, &g);
    let clip = clip(dir);
    let (gone, gone_box, _) = expected
        .iter()
        .flatten()
        .find(|(_, b, _)| *b != [0, 0, W, H])
        .cloned()
        .expect("a product on screen");
    let s = settings("det_prenms.onnx");
    let mut gallery = shitu_edge::search::Gallery::open_for_write(&g, (&s).into()).unwrap();
    let ids = gallery.ids_with_label(&gone);
    gallery.remove(&ids).unwrap();
    (g, gone_box, clip)
}

/// Triggers over the clip's last 2 s until one keeps the product at
/// `gone_box` as unknown: (trigger id, capture time, unknown id).
pub(crate) async fn find_unknown(
    ctl: &mut Controller,
    daemon: &Daemon,
    gone_box: [i32; 4],
) -> (String, i64, String) {
    // The clip has played once: one of the triggers lands on that scene. A
    // strict threshold: without its own entry the product's best match
    // (another product) must not pass for it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let now = now_ms();
    for i in 0..8 {
        let id = format!("u{i}");
        trigger(ctl, &id, serde_json::json!({"source": "cam1", "t_ms": now - 2000 + i * 250, "score_threshold": 0.9})).await;
        let a = answer(ctl, &id, Duration::from_secs(60)).await;
        assert_eq!(a["ok"], true, "{a}");
        let hit = a["unknown"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| bbox(&u["bbox"]) == gone_box.to_vec());
        if let Some(u) = hit {
            return (
                a["request_id"].as_str().unwrap().to_string(),
                a["captured_at_ms"].as_i64().unwrap(),
                u["unknown_id"].as_str().unwrap().to_string(),
            );
        }
    }
    panic!("no unknown item at {gone_box:?}:\n{}", daemon.log_text())
}

fn bbox(v: &serde_json::Value) -> Vec<i32> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect()
}

/// The next trigger on the frame captured at `captured` recognises the
/// enrolled product in its box, as itself.
pub(crate) async fn recognised_again(ctl: &mut Controller, captured: i64, gone_box: [i32; 4]) {
    trigger(
        ctl,
        "again",
        serde_json::json!({"source": "cam1", "t_ms": captured, "score_threshold": 0.9}),
    )
    .await;
    let a = answer(ctl, "again", Duration::from_secs(60)).await;
    let hit = a["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rec_docs"] == "new-product");
    let hit = hit.unwrap_or_else(|| panic!("new-product not recognised: {a}"));
    assert_eq!(bbox(&hit["bbox"]), gone_box.to_vec(), "{a}");
    assert!(
        hit["rec_scores"].as_f64().unwrap() > 0.99,
        "the crop itself is in the gallery: {a}"
    );
    assert!(
        a["unknown"]
            .as_array()
            .is_none_or(|u| u.iter().all(|u| u["bbox"] != hit["bbox"])),
        "{a}"
    );
}

/// On a line, the box that kept an unknown item turns its enrolment (on the
/// box's own topic) into a line change carrying the crop: it answers the
/// requester, and every other box of the line applies the same change, with
/// the same item id. On the line's topic such an enrolment is refused (no
/// other box has the crop), and the command line refuses a local one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_box_enrols_an_unknown_item_for_the_whole_line() {
    const LINE_ADD: &str = "shitu/line/l1/gallery/add";
    const LINE_RESULT: &str = "shitu/line/l1/gallery/result";
    let tmp = tempfile::tempdir().unwrap();
    let (g, gone_box, clip) = gallery_lacking_a_product(tmp.path());
    let broker = Broker::start(&tmp.path().join("broker"));
    // Box "test" has the camera; box "b" has none. Each has its own gallery.
    let boxes: Vec<(PathBuf, PathBuf)> = ["a", "b"]
        .iter()
        .map(|name| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let own = dir.join("gallery");
            let copied = Command::new("cp").arg("-a").arg(&g).arg(&own).status();
            assert!(copied.unwrap().success());
            let extra = if *name == "a" {
                format!(
                    "[capture]\nunknown_dir = \"{}\"\n[[sources]]\nname = \"cam1\"\nuri = \"file://{}\"\n",
                    dir.join("unknown").display(),
                    clip.display()
                )
            } else {
                String::new()
            };
            (daemon_config(&dir, broker.port, &own, &extra), dir)
        })
        .collect();
    let a = Daemon::start_with_env(
        &boxes[0].0,
        &boxes[0].1.join("daemon.log"),
        &[("SHITU__MQTT__LINE", "l1")],
    );
    let b = Daemon::start_with_env(
        &boxes[1].0,
        &boxes[1].1.join("daemon.log"),
        &[("SHITU__MQTT__LINE", "l1"), ("SHITU__MQTT__DEVICE_ID", "b")],
    );
    let mut ctl = Controller::connect(
        broker.port,
        "ctl-line-unknown",
        &[STATUS, "shitu/test/unknown", LINE_RESULT, "shitu/b/status"],
    )
    .await;
    wait_streaming(&mut ctl, &a).await;
    let b_online = ctl
        .wait_for("shitu/b/status", Duration::from_secs(120), |j| {
            j["state"] == "online"
        })
        .await;
    assert!(b_online.is_some(), "box b:\n{}", b.log_text());
    let (_, captured, unknown_id) = find_unknown(&mut ctl, &a, gone_box).await;
    ctl.wait_for("shitu/test/unknown", Duration::from_secs(30), |j| {
        j["unknown_id"] == unknown_id.as_str()
    })
    .await
    .expect("announced on P/unknown");
    let crop = boxes[0].1.join(format!("unknown/{unknown_id}.png"));
    assert!(crop.is_file());

    // On the line's topic: refused by both boxes, nothing changes.
    let body = serde_json::json!({"request_id": "on-line", "change_id": "01JD3Q8ZK5V3N4W7Y2C9M6T0AB", "unknown_id": unknown_id, "label": "new-product"});
    ctl.request(
        LINE_ADD,
        serde_json::to_vec(&body).unwrap(),
        "on-line",
        vec![],
    )
    .await;
    for _ in 0..2 {
        let r = answer(&mut ctl, "on-line", Duration::from_secs(30)).await;
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("P/unknown names the box"),
            "{r}"
        );
    }
    assert!(crop.is_file());

    // On the box's own topic: a line change.
    let body = serde_json::json!({"request_id": "enrol", "unknown_id": unknown_id, "label": "new-product"});
    ctl.request(
        "shitu/test/gallery/add",
        serde_json::to_vec(&body).unwrap(),
        "enrol",
        vec![],
    )
    .await;
    let r = answer(&mut ctl, "enrol", Duration::from_secs(60)).await;
    assert_eq!(r["ok"], true, "{r}");
    let change = r["change_id"].as_str().expect("a line change").to_string();
    let added = r["added"].clone();
    assert_eq!(added.as_array().map(Vec::len), Some(1), "{r}");
    assert!(!crop.exists(), "an enrolled item is no longer unknown");
    // Box b computes the feature from the crop and applies the same change.
    let from_b = ctl
        .wait_for(LINE_RESULT, Duration::from_secs(60), |j| {
            j["versions"]["device_id"] == "b" && j["request_id"] == change.as_str()
        })
        .await
        .unwrap_or_else(|| panic!("box b did not apply {change}:\n{}", b.log_text()));
    assert_eq!(from_b.json["ok"], true, "{}", from_b.json);
    assert_eq!(from_b.json["added"], added, "the same item id on every box");
    assert_eq!(from_b.json["already_applied"], serde_json::Value::Null);
    recognised_again(&mut ctl, captured, gone_box).await;

    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    // Box b holds the item under the same id, from the line.
    let listed = Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(["gallery", "list", "--json", "--index"])
        .arg(boxes[1].1.join("gallery"))
        .current_dir(root())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let item = listed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|i| i["label"] == "new-product")
        .unwrap_or_else(|| panic!("not in box b's gallery:\n{listed}"));
    assert_eq!(item["id"], added[0], "{item}");
    assert_eq!(item["source"], format!("unknown:{unknown_id}"), "{item}");
    // A local enrolment on a line box is refused: it would leave the line.
    let out = Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args([
            "unknown",
            "enrol",
            "01JD3Q8ZK5V3N4W7Y2C9M6T0AB",
            "x",
            "--config",
        ])
        .arg(&boxes[0].0)
        .env("SHITU__MQTT__LINE", "l1")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves line \"l1\""), "{err}");
}

/// A `file://` source plays its clip in a loop: triggers are answered
/// after the clip's end as before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_plays_in_a_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let g = flat_gallery(tmp.path());
    let (_, expected) = frames(tmp.path(), &g);
    let clip = clip(tmp.path());
    let broker = Broker::start(&tmp.path().join("broker"));
    let conf = daemon_config(
        tmp.path(),
        broker.port,
        &g,
        &format!(
            "[capture]\nkeep_frames = true\nkeep_dir = \"{}\"\nkeep_max_bytes = 600000\n\
             [[sources]]\nname = \"cam1\"\nuri = \"file://{}\"\n",
            tmp.path().join("frames").display(),
            clip.display()
        ),
    );
    let daemon = Daemon::start(&conf, &tmp.path().join("daemon.log"));
    let mut ctl = Controller::connect(broker.port, "ctl-file", &[STATUS]).await;
    wait_streaming(&mut ctl, &daemon).await;
    // The clip lasts 2 s; from 3 s on, what plays is its second round.
    // Triggers every 250 ms over the last 2 s (their frames are in the
    // ring) see each of its four scenes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = now_ms();
    let mut seen = std::collections::HashSet::new();
    for i in 0..8 {
        let id = format!("f{i}");
        let t = now - 2000 + i * 250;
        trigger(&ctl, &id, serde_json::json!({"source": "cam1", "t_ms": t})).await;
        let a = answer(&mut ctl, &id, Duration::from_secs(60)).await;
        assert_eq!(a["ok"], true, "{a}");
        // The clip is lossless: each answer is exactly one scene's.
        let scene = (0..SCENES)
            .find(|&k| same_objects(&a, &expected[k]))
            .unwrap_or_else(|| panic!("the answer is none of the clip's scenes {expected:?}: {a}"));
        check_answer(&a, &expected[scene]);
        seen.insert(scene);
    }
    assert_eq!(seen.len(), SCENES, "scenes seen {seen:?}");
    // Each answered trigger's frame was kept for audit, within the quota:
    // the newest stay.
    // Saved off the pipeline thread, after the answer: wait for the last.
    let kept_now = || -> Vec<(String, u64)> {
        std::fs::read_dir(tmp.path().join("frames/cam1"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| {
                        let len = e.metadata().map_or(0, |m| m.len());
                        (e.file_name().to_string_lossy().to_string(), len)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let waited = Instant::now();
    while !kept_now().iter().any(|(n, _)| n.ends_with("-f7.jpg"))
        && waited.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = kept_now();
    let total: u64 = kept.iter().map(|k| k.1).sum();
    assert!(!kept.is_empty() && total <= 600_000, "{kept:?}");
    assert!(
        kept.iter().any(|(n, _)| n.ends_with("-f7.jpg")),
        "the newest is kept: {kept:?}"
    );
    assert!(kept.len() < 8, "the quota dropped the oldest: {kept:?}");
    let status = ctl
        .wait_for(STATUS, Duration::from_secs(10), |j| {
            source_state(j) == "streaming"
        })
        .await
        .unwrap();
    assert_eq!(
        status.json["sources"]["cam1"]["reconnects"], 0,
        "a loop is not a reconnect"
    );
    assert_eq!(daemon.stop(), Some(0));
}

/// Trigger-to-answer latency from an RTSP camera against the same frames
/// sent as MQTT payloads (PNG), one request at a time, in one run. A
/// benchmark, not a test: run it alone, on an idle machine, with
/// `cargo test --profile ci --test it -- --ignored --nocapture cameras::bench_`
/// (docs/BENCHMARKS.md has the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it alone (docs/BENCHMARKS.md)"]
async fn bench_trigger_latency_against_mqtt_payloads() {
    const N: usize = 60;
    let fps: i64 = std::env::var("BENCH_FPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let tmp = tempfile::tempdir().unwrap();
    let g = flat_gallery(tmp.path());
    let (raws, _) = frames(tmp.path(), &g);
    let cam_port = free_port();
    let mut camera = Command::new("/usr/bin/python3")
        .arg(root().join("tests/rtsp/serve.py"))
        .args(["--port", &cam_port.to_string()])
        .args(["--width", &W.to_string(), "--height", &H.to_string()])
        .args(["--fps", &fps.to_string(), "--hold-ms", &HOLD_MS.to_string()])
        .args(&raws)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let broker = Broker::start(&tmp.path().join("broker"));
    let conf = daemon_config(
        tmp.path(),
        broker.port,
        &g,
        &format!("[[sources]]\nname = \"cam1\"\nuri = \"rtsp://127.0.0.1:{cam_port}/scenes\"\n"),
    );
    let daemon = Daemon::start(&conf, &tmp.path().join("daemon.log"));
    let mut ctl = Controller::connect(broker.port, "ctl-bench", &[STATUS]).await;
    wait_streaming(&mut ctl, &daemon).await;
    let pngs: Vec<Vec<u8>> = (0..SCENES)
        .map(|k| std::fs::read(tmp.path().join(format!("frame{k}.png"))).unwrap())
        .collect();
    // Warm-up: the first requests pay for allocations.
    for i in 0..3 {
        let id = format!("warm{i}");
        ctl.request(REQ_TOPIC, json_request(&id, &pngs[0]), &id, vec![])
            .await;
        answer(&mut ctl, &id, Duration::from_secs(60)).await;
    }
    let mut mqtt = Vec::new();
    let mut mqtt_total = Vec::new();
    let mut trig = Vec::new();
    let mut trig_total = Vec::new();
    let mut age = Vec::new();
    for i in 0..N {
        let id = format!("m{i}");
        let sent = Instant::now();
        ctl.request(REQ_TOPIC, json_request(&id, &pngs[i % SCENES]), &id, vec![])
            .await;
        let a = answer(&mut ctl, &id, Duration::from_secs(60)).await;
        mqtt.push(sent.elapsed().as_secs_f64() * 1e3);
        mqtt_total.push(a["timings_ms"]["total"].as_f64().unwrap());
        let id = format!("t{i}");
        let sent = Instant::now();
        trigger(&ctl, &id, serde_json::json!({"source": "cam1"})).await;
        let a = answer(&mut ctl, &id, Duration::from_secs(60)).await;
        assert_eq!(a["ok"], true, "{a}");
        trig.push(sent.elapsed().as_secs_f64() * 1e3);
        trig_total.push(a["timings_ms"]["total"].as_f64().unwrap());
        age.push(a["frame_age_ms"].as_f64().unwrap());
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let row = |name: &str, v: &mut Vec<f64>| {
        format!("| {name} | {:.1} | {:.1} |", pct(v, 0.5), pct(v, 0.99))
    };
    eprintln!("camera {fps} fps, 960x600 raw RGB over RTSP/TCP; {N} of each, one at a time");
    eprintln!("| ms | p50 | p99 |\n|---|---|---|");
    eprintln!(
        "{}",
        row(
            "MQTT payload (PNG, 1 request at a time): publish to answer",
            &mut mqtt
        )
    );
    eprintln!(
        "{}",
        row(
            "MQTT payload: daemon's total (arrival to answer)",
            &mut mqtt_total
        )
    );
    eprintln!("{}", row("trigger: publish to answer", &mut trig));
    eprintln!(
        "{}",
        row(
            "trigger: daemon's total (frame in hand to answer)",
            &mut trig_total
        )
    );
    eprintln!(
        "{}",
        row("trigger: frame_age_ms (waiting for the frame)", &mut age)
    );
    let _ = camera.kill();
    let _ = camera.wait();
    assert_eq!(daemon.stop(), Some(0));
}

const REQ_TOPIC: &str = "shitu/test/recognize";
