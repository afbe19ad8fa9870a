//! Over-the-air updates applied to a running `shitud run`, against a real
//! mosquitto, with bundles served by a real HTTP server on loopback:
//! - a swap under continuous load fails and loses no request;
//! - a bundle dropped into the watch folder applies, and `P/ota/rollback` goes back;
//! - each bad bundle is refused with a clear status while the old version serves;
//! - a kill -9 at every step leaves exactly one complete version current, serving.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::mqtt::*;
use crate::common::*;
use shitu_edge::ota::bundle::{self, PackSpec};
use shitu_edge::ota::keys;
use shitu_edge::search::Method;

const REQ: &str = "shitu/test/recognize";
const OTA_APPLY: &str = "shitu/test/ota/apply";
const OTA_ROLLBACK: &str = "shitu/test/ota/rollback";
const OTA_STATUS: &str = "shitu/test/ota/status";
const STATUS: &str = "shitu/test/status";

/// A small HTTP/1.1 file server with `Range` support. A path listed in
/// `cut_once` has its first response cut off half way, as a flaky link would.
struct Http {
    port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    cut_once: Arc<Mutex<HashSet<String>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Http {
    fn start() -> Http {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Default::default();
        let cut_once: Arc<Mutex<HashSet<String>>> = Default::default();
        let requests: Arc<Mutex<Vec<String>>> = Default::default();
        let (f, c, r) = (files.clone(), cut_once.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, c, r) = (f.clone(), c.clone(), r.clone());
                std::thread::spawn(move || serve(stream, &f, &c, &r));
            }
        });
        Http {
            port,
            files,
            cut_once,
            requests,
        }
    }

    fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.files.lock().unwrap().insert(format!("/{name}"), bytes);
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

fn serve(
    mut stream: TcpStream,
    files: &Mutex<HashMap<String, Vec<u8>>>,
    cut: &Mutex<HashSet<String>>,
    log: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut from = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    log.lock().unwrap().push(format!("{path} from {from}"));
    let Some(body) = files.lock().unwrap().get(&path).cloned() else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let rest = &body[from.min(body.len())..];
    let head = if from > 0 {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n", rest.len(), body.len() - 1, body.len())
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            rest.len()
        )
    };
    let _ = stream.write_all(head.as_bytes());
    let cut_now = cut.lock().unwrap().remove(&path);
    let n = if cut_now { rest.len() / 2 } else { rest.len() };
    let _ = stream.write_all(&rest[..n]);
    let _ = stream.flush();
}

/// Everything an OTA test needs: gallery, keys, bundles, HTTP, broker, daemon config.
struct Rig {
    tmp: tempfile::TempDir,
    key: ed25519_dalek::SigningKey,
    http: Http,
    broker: Broker,
    conf: PathBuf,
    golden_label: String,
}

impl Rig {
    /// `extra_ota` is added to `[ota]`; `{tmp}` in it is the rig's folder.
    fn new(extra_ota: &str) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let mut st = settings("det_prenms.onnx");
        build_gallery(&mut st, &tmp.path().join("gallery"), Method::Flat);
        let key_path = tmp.path().join("fleet.key");
        keys::generate(&key_path).unwrap();
        let key = keys::read_secret(&key_path).unwrap();
        // The label the pipeline gives the golden image, so a good bundle passes its health check.
        let mut p = shitu_edge::Pipeline::open(&st).unwrap();
        let bytes = std::fs::read(data("images/scenes/scene_00000.jpg")).unwrap();
        let frame = shitu_edge::input::decode("golden", &bytes, &st.input).unwrap();
        let golden_label = p.recognize(&[frame]).unwrap()[0].results[0]
            .rec_docs
            .clone();
        let http = Http::start();
        let broker = Broker::start(tmp.path());
        let extra = format!(
            "[ota]\nroot = \"{}\"\ntrusted_keys = [\"{}\"]\nwatch_dir = \"{}\"\nmax_download_bytes = 4000000\n{extra_ota}\n",
            tmp.path().join("ota").display(),
            keys::public_path(&key_path).display(),
            tmp.path().join("inbox").display(),
        )
        .replace("{tmp}", &tmp.path().display().to_string());
        let conf = daemon_config(tmp.path(), broker.port, &tmp.path().join("gallery"), &extra);
        Rig {
            tmp,
            key,
            http,
            broker,
            conf,
            golden_label,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A gallery-only bundle, signed by the fleet key unless `key` says otherwise.
    fn bundle(
        &self,
        version: &str,
        label: &str,
        targets: &[&str],
        key: Option<&ed25519_dalek::SigningKey>,
    ) -> Vec<u8> {
        let out = self.dir().join(format!("{version}-{}.tar", rand_suffix()));
        let spec = PackSpec {
            version: version.into(),
            gallery: Some(self.dir().join("gallery")),
            golden: vec![(data("images/scenes/scene_00000.jpg"), label.into())],
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        bundle::pack(&spec, &out, Some(key.unwrap_or(&self.key))).unwrap();
        std::fs::read(&out).unwrap()
    }

    fn good(&self, version: &str) -> Vec<u8> {
        self.bundle(version, &self.golden_label.clone(), &[], None)
    }

    fn start(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env(&self.conf, &self.dir().join("daemon.log"), env)
    }

    fn current(&self) -> Option<String> {
        let link = std::fs::read_link(self.dir().join("ota/current")).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn online(ctl: &mut Controller, daemon: &Daemon) {
    // What is queued came from an earlier daemon (a killed one cannot say
    // "online" again), so the next "online" is this daemon's.
    while ctl.next(Duration::from_millis(50)).await.is_some() {}
    assert!(
        ctl.wait_for(STATUS, Duration::from_secs(120), |j| j["state"] == "online")
            .await
            .is_some(),
        "{}",
        daemon.log_text()
    );
}

/// The retained `P/ota/status`, read by a fresh client (the test's own
/// client may have read past it while waiting for answers).
async fn ota_status(port: u16, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = Controller::connect(
            port,
            &format!("status-reader-{}", rand_suffix()),
            &[OTA_STATUS],
        )
        .await;
        let got = c
            .wait_for(OTA_STATUS, Duration::from_secs(2), |_| true)
            .await;
        let _ = c.client.disconnect().await;
        if let Some(m) = got {
            if want(&m.json) || Instant::now() > deadline {
                return m.json;
            }
        }
        assert!(Instant::now() < deadline, "no retained {OTA_STATUS}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends an OTA command and waits for its answer.
async fn ota(
    ctl: &mut Controller,
    topic: &str,
    body: serde_json::Value,
    daemon: &Daemon,
) -> serde_json::Value {
    let id = body["request_id"].as_str().unwrap().to_string();
    ctl.request(topic, serde_json::to_vec(&body).unwrap(), &id, vec![])
        .await;
    let a = ctl
        .wait_for(&ctl.reply_topic.clone(), Duration::from_secs(180), |j| {
            j["request_id"] == id.as_str()
        })
        .await;
    a.unwrap_or_else(|| panic!("no answer to {id}\n{}", daemon.log_text()))
        .json
}

/// One recognition, answered ok; returns the `versions.bundle` it was served by.
async fn recognise(ctl: &mut Controller, id: &str, daemon: &Daemon) -> Option<String> {
    let jpeg = std::fs::read(data("images/scenes/scene_00001.jpg")).unwrap();
    ctl.request(REQ, json_request(id, &jpeg), id, vec![]).await;
    let a = ctl
        .wait_for(&ctl.reply_topic.clone(), Duration::from_secs(60), |j| {
            j["request_id"] == id
        })
        .await;
    let a = a
        .unwrap_or_else(|| panic!("no answer to {id}\n{}", daemon.log_text()))
        .json;
    assert_eq!(a["ok"], true, "{a}");
    a["versions"]["bundle"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_under_load_swaps_without_a_failed_or_lost_request() {
    // Downloads go to a cache folder of their own, as under systemd (CacheDirectory=).
    let rig = Rig::new("download_dir = \"{tmp}/cache/ota\"");
    let url = rig.http.put("v2.tar", rig.good("v2"));
    rig.http.cut_once.lock().unwrap().insert("/v2.tar".into());
    let daemon = rig.start(&[]);
    let mut ctl = Controller::connect(rig.broker.port, "ctl-ota", &[STATUS, OTA_STATUS]).await;
    online(&mut ctl, &daemon).await;

    let jpeg = std::fs::read(data("images/scenes/scene_00002.jpg")).unwrap();
    // At least MIN requests, and on until a few have been served by v2: how
    // many the apply overlaps depends on the machine's load, not on the test.
    const MIN: usize = 80;
    const MAX: usize = 1000;
    const IN_FLIGHT: usize = 4;
    let mut sent = 0;
    let mut answers: HashMap<String, serde_json::Value> = HashMap::new();
    let mut ota_answer = None;
    let mut busy_during = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let on_v2 = |answers: &HashMap<String, serde_json::Value>| {
        answers
            .values()
            .filter(|a| a["versions"]["bundle"] == "v2")
            .count()
    };
    loop {
        let done_sending =
            sent >= MAX || (sent >= MIN && ota_answer.is_some() && on_v2(&answers) >= 4);
        if done_sending && answers.len() == sent {
            break;
        }
        while !done_sending && sent - answers.len() < IN_FLIGHT {
            let id = format!("load{sent:03}");
            ctl.request(REQ, json_request(&id, &jpeg), &id, vec![])
                .await;
            sent += 1;
            if sent == 8 {
                let body = serde_json::json!({"request_id": "up-v2", "url": url});
                ctl.request(
                    OTA_APPLY,
                    serde_json::to_vec(&body).unwrap(),
                    "up-v2",
                    vec![],
                )
                .await;
                // While it runs: a second update and a gallery change are both answered busy.
                let again = serde_json::json!({"request_id": "up-again", "url": url});
                ctl.request(
                    OTA_APPLY,
                    serde_json::to_vec(&again).unwrap(),
                    "up-again",
                    vec![],
                )
                .await;
                let rm = serde_json::json!({"request_id": "rm-during", "ids": [0]});
                ctl.request(
                    "shitu/test/gallery/remove",
                    serde_json::to_vec(&rm).unwrap(),
                    "rm-during",
                    vec![],
                )
                .await;
            }
        }
        let m = ctl.reply_before(deadline).await.unwrap_or_else(|| {
            panic!(
                "{} of {sent} answered, ota {ota_answer:?}\n{}",
                answers.len(),
                daemon.log_text()
            )
        });
        let id = m.json["request_id"].as_str().unwrap().to_string();
        if id == "up-v2" {
            ota_answer = Some(m.json);
        } else if id == "up-again" || id == "rm-during" {
            assert_eq!(
                m.json["error"]["code"], "busy",
                "{id} during an update: {}",
                m.json
            );
            busy_during += 1;
        } else {
            assert!(
                answers.insert(id.clone(), m.json).is_none(),
                "{id} answered twice"
            );
        }
    }
    let ota_answer = ota_answer.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while busy_during < 2 {
        let m = ctl
            .reply_before(deadline)
            .await
            .expect("busy answers to the second update and the gallery change");
        let id = m.json["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(id == "up-again" || id == "rm-during", "{}", m.json);
        assert_eq!(m.json["error"]["code"], "busy", "{}", m.json);
        busy_during += 1;
    }
    assert_eq!(
        ota_answer["ok"],
        true,
        "{ota_answer}\n{}",
        daemon.log_text()
    );
    let failed: Vec<_> = answers.values().filter(|a| a["ok"] != true).collect();
    assert!(failed.is_empty(), "failed across the swap: {failed:?}");
    let n = sent;
    let by: Vec<Option<&str>> = (0..n)
        .map(|i| answers[&format!("load{i:03}")]["versions"]["bundle"].as_str())
        .collect();
    let (old, new) = (
        by.iter().filter(|b| b.is_none()).count(),
        by.iter().filter(|b| **b == Some("v2")).count(),
    );
    eprintln!("{n} requests across the swap: {old} served by the config's files, {new} by v2, 0 failed, 0 lost");
    // Latency, arrival to answer, for the requests served by each side (for docs/BENCHMARKS.md).
    for (side, want) in [("old", None), ("new", Some("v2"))] {
        let mut t: Vec<f64> = answers
            .values()
            .filter(|a| a["versions"]["bundle"].as_str() == want)
            .map(|a| a["timings_ms"]["total"].as_f64().unwrap())
            .collect();
        t.sort_by(f64::total_cmp);
        eprintln!(
            "  {side}: {} requests, median {:.0} ms, max {:.0} ms",
            t.len(),
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
    assert!(old > 0 && new > 0 && old + new == n, "{by:?}");
    assert!(
        by.windows(2)
            .all(|w| !(w[0] == Some("v2") && w[1].is_none())),
        "once swapped, never back: {by:?}"
    );
    assert_eq!(rig.current().as_deref(), Some("v2"));
    for line in daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("update applied") || l.contains("download broke off"))
    {
        eprintln!(
            "  daemon: {}",
            line.split_once("  ").map_or(line, |(_, rest)| rest.trim())
        );
    }
    let reqs = rig.http.requests.lock().unwrap().clone();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/v2.tar from ") && !r.ends_with(" from 0")),
        "the cut download resumed with Range: {reqs:?}"
    );
    let cache = rig.dir().join("cache/ota");
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("download broke off") && l.contains(&cache.display().to_string())),
        "the partial download lies in ota.download_dir:\n{log}"
    );
    let left: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "a download used up is removed: {left:?}");
    let st = ota_status(rig.broker.port, |j| j["state"] == "applied").await;
    assert_eq!(
        (st["state"].as_str(), st["current"].as_str()),
        (Some("applied"), Some("v2")),
        "{st}"
    );

    // A bundle dropped into the watch folder applies too; then a rollback goes back to v2.
    std::fs::create_dir_all(rig.dir().join("inbox")).unwrap();
    std::fs::write(rig.dir().join("inbox/v3.tar.tmp"), rig.good("v3")).unwrap();
    std::fs::rename(
        rig.dir().join("inbox/v3.tar.tmp"),
        rig.dir().join("inbox/v3.tar"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while rig.current().as_deref() != Some("v3") {
        assert!(
            Instant::now() < deadline,
            "dropped bundle not applied\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = ota_status(rig.broker.port, |j| {
        j["state"] == "applied" && j["version"] == "v3"
    })
    .await;
    assert_eq!(st["state"], "applied", "{st}");
    assert_eq!(
        recognise(&mut ctl, "after-v3", &daemon).await.as_deref(),
        Some("v3")
    );
    assert!(
        !rig.dir().join("inbox/v3.tar").exists(),
        "a taken bundle leaves the inbox"
    );
    let a = ota(
        &mut ctl,
        OTA_ROLLBACK,
        serde_json::json!({"request_id": "rb"}),
        &daemon,
    )
    .await;
    assert_eq!(
        (a["ok"].clone(), a["version"].clone()),
        (serde_json::json!(true), serde_json::json!("v2")),
        "{a}"
    );
    assert_eq!(
        recognise(&mut ctl, "after-rollback", &daemon)
            .await
            .as_deref(),
        Some("v2")
    );
    assert_eq!(rig.current().as_deref(), Some("v2"));
    assert_eq!(daemon.stop(), Some(0));

    // The stop was clean: v2 stays current, and serves after the restart.
    let daemon = rig.start(&[]);
    online(&mut ctl, &daemon).await;
    let log = daemon.log_text();
    // The log file holds every start of this test; the last one is this start's.
    let loading = log
        .lines()
        .rfind(|l| l.contains("loading models and gallery"))
        .unwrap_or_else(|| panic!("no loading line:\n{log}"));
    assert!(
        loading.contains("versions/v2/") && loading.contains("version=v2"),
        "the loading line names the gallery that serves (v2's), not the config's: {loading}"
    );
    assert_eq!(
        recognise(&mut ctl, "after-restart", &daemon)
            .await
            .as_deref(),
        Some("v2")
    );
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundles_are_refused_while_the_old_version_serves() {
    let rig = Rig::new("");
    let good = rig.good("v2");
    // One byte of the gallery's payload flipped (the manifest still lists the old hash).
    let mut tampered = good.clone();
    let at = tampered
        .windows(4)
        .rposition(|w| w != [0, 0, 0, 0])
        .unwrap()
        - 64;
    tampered[at] ^= 0x40;
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut traversal = Vec::new();
    {
        let mut items: Vec<(tar::Header, Vec<u8>)> = Vec::new();
        let mut a = tar::Archive::new(good.as_slice());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            items.push((e.header().clone(), d));
        }
        let mut h = items[2].0.clone();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..21].copy_from_slice(b"../../etc/cron.d/evil");
        items.push((h, b"* * * * * root sh\n".to_vec()));
        let mut b = tar::Builder::new(&mut traversal);
        for (h, d) in &items {
            let mut h = h.clone();
            h.set_size(d.len() as u64);
            h.set_cksum();
            b.append(&h, d.as_slice()).unwrap();
        }
        b.finish().unwrap();
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tampered", tampered, "sha256"),
        (
            "stranger",
            rig.bundle("v2", &rig.golden_label.clone(), &[], Some(&stranger)),
            "not trusted",
        ),
        (
            "foreign",
            rig.bundle("v2", &rig.golden_label.clone(), &["riscv64"], None),
            "made for riscv64",
        ),
        ("traversal", traversal, "../../etc/cron.d/evil"),
        (
            "oversized",
            vec![0u8; 4_500_000],
            "over the limit of 4000000",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        (
            "unhealthy",
            rig.bundle("v2", "no such product", &[], None),
            "health check failed",
        ),
    ];
    let daemon = rig.start(&[]);
    let mut ctl = Controller::connect(rig.broker.port, "ctl-bad-ota", &[STATUS, OTA_STATUS]).await;
    online(&mut ctl, &daemon).await;
    for (name, bytes, why) in cases {
        let url = rig.http.put(&format!("{name}.tar"), bytes);
        let a = ota(
            &mut ctl,
            OTA_APPLY,
            serde_json::json!({"request_id": name, "url": url}),
            &daemon,
        )
        .await;
        let msg = a["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            a["ok"] == false && a["error"]["code"] == "refused" && msg.contains(why),
            "{name}: {a}"
        );
        let st = ota_status(rig.broker.port, |j| j["request_id"] == name).await;
        assert!(
            st["state"] == "refused" && st["message"].as_str().unwrap_or_default().contains(why),
            "{name}: {st}"
        );
        assert_eq!(
            recognise(&mut ctl, &format!("after-{name}"), &daemon).await,
            None,
            "{name}: the old files serve"
        );
        assert_eq!(rig.current(), None, "{name}");
        eprintln!("{name}: refused: {msg}");
    }
    let left: Vec<_> = std::fs::read_dir(rig.dir().join("ota/versions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "refused bundles leave no version behind: {left:?}"
    );
    assert!(!Path::new("/etc/cron.d/evil").exists());
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_at_every_step_leaves_one_serving_version() {
    // A short trial, so that v1 is confirmed before the kills begin, yet long
    // enough that the "dies on trial" case below is killed well within it.
    let rig = Rig::new("trial_s = 8");
    let mut ctl = Controller::connect(rig.broker.port, "ctl-kill", &[STATUS, OTA_STATUS]).await;
    // First a good version, so that a rollback has somewhere to go.
    let daemon = rig.start(&[]);
    online(&mut ctl, &daemon).await;
    let url = rig.http.put("v1.tar", rig.good("v1"));
    let a = ota(
        &mut ctl,
        OTA_APPLY,
        serde_json::json!({"request_id": "v1", "url": url}),
        &daemon,
    )
    .await;
    assert_eq!(a["ok"], true, "{a}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.dir().join("ota/trial.json").exists() {
        assert!(
            Instant::now() < deadline,
            "v1 never confirmed\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(daemon.stop(), Some(0));

    // Through the watch folder: a dropped bundle is taken out of the inbox
    // before it is applied, so nothing hands it to the restarted daemon again.
    let v2 = rig.good("v2");
    let inbox = rig.dir().join("inbox");
    for step in [
        "downloading",
        "verifying",
        "unpacking",
        "building",
        "checking",
        "switching",
        "reloading",
    ] {
        let mut daemon = rig.start(&[("SHITU_FAULT_OTA_KILL_AT", step)]);
        online(&mut ctl, &daemon).await;
        std::fs::write(inbox.join("v2.tar.tmp"), &v2).unwrap();
        std::fs::rename(inbox.join("v2.tar.tmp"), inbox.join("v2.tar")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(st) = daemon.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: not killed\n{}",
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{step}: {status:?}");

        // Exactly one complete version is current, and it serves.
        let daemon = rig.start(&[]);
        online(&mut ctl, &daemon).await;
        let current = rig.current();
        assert_eq!(
            current.as_deref(),
            Some("v1"),
            "{step}: a kill before the new version proved itself leaves v1\n{}",
            daemon.log_text()
        );
        assert!(rig.dir().join("ota/versions/v1/version.json").is_file());
        assert_eq!(
            recognise(&mut ctl, &format!("after-kill-{step}"), &daemon)
                .await
                .as_deref(),
            Some("v1"),
            "{step}"
        );
        let left: Vec<_> = std::fs::read_dir(rig.dir().join("ota/staging"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{step}: unfinished unpacks and the dropped bundle are cleared: {left:?}"
        );
        assert!(
            !inbox.join("v2.tar").exists(),
            "{step}: the bundle left the inbox"
        );
        // Before the switch v2 never served: nothing of it stays in versions/.
        if step != "reloading" {
            assert!(
                !rig.dir().join("ota/versions/v2").exists(),
                "{step}: a version that never served is removed at the next start\n{}",
                daemon.log_text()
            );
        }
        eprintln!("kill -9 at {step}: restarted on v1 and serving");
        assert_eq!(daemon.stop(), Some(0));
    }
    // The last kill came after the switch: that start rolled back, and said so.
    assert!(std::fs::read_to_string(rig.dir().join("daemon.log"))
        .unwrap()
        .contains("rolled back to version v1"));

    // v2 applied and serving, then the daemon dies within the trial (600 s here):
    // the next start goes back to v1. Once a version has served through its
    // trial, a death no longer sends it back.
    for (confirmed, want) in [(false, "v1"), (true, "v2")] {
        let log_start = std::fs::read_to_string(rig.dir().join("daemon.log"))
            .unwrap()
            .len();
        // The kill within the trial gets a long one: applying, the first
        // answer on v2 and the checks must not outlast it on a loaded machine.
        let trial: &[(&str, &str)] = if confirmed {
            &[]
        } else {
            &[("SHITU__OTA__TRIAL_S", "600")]
        };
        let mut daemon = rig.start(trial);
        online(&mut ctl, &daemon).await;
        std::fs::write(inbox.join("v2.tar.tmp"), &v2).unwrap();
        std::fs::rename(inbox.join("v2.tar.tmp"), inbox.join("v2.tar")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !daemon.log_text()[log_start..].contains("update applied: version v2") {
            assert!(
                Instant::now() < deadline,
                "v2 not applied\n{}",
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            recognise(&mut ctl, &format!("on-v2-{confirmed}"), &daemon)
                .await
                .as_deref(),
            Some("v2")
        );
        if confirmed {
            while rig.dir().join("ota/trial.json").exists() {
                assert!(
                    Instant::now() < deadline,
                    "v2 never confirmed\n{}",
                    daemon.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            assert!(
                rig.dir().join("ota/trial.json").exists(),
                "still on trial: killed within ota.trial_s of the switch"
            );
        }
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        let daemon = rig.start(&[]);
        online(&mut ctl, &daemon).await;
        assert_eq!(
            rig.current().as_deref(),
            Some(want),
            "confirmed={confirmed}\n{}",
            daemon.log_text()
        );
        assert_eq!(
            recognise(&mut ctl, &format!("after-death-{confirmed}"), &daemon)
                .await
                .as_deref(),
            Some(want)
        );
        if !confirmed {
            let st = ota_status(rig.broker.port, |j| j["state"] == "rolled_back").await;
            assert_eq!(
                (st["state"].as_str(), st["failed_version"].as_str()),
                (Some("rolled_back"), Some("v2")),
                "{st}"
            );
        }
        eprintln!(
            "kill -9 while serving v2 (trial {}): restarted on {want}",
            if confirmed { "over" } else { "running" }
        );
        assert_eq!(daemon.stop(), Some(0));
    }
}

#[test]
fn the_cli_applies_lists_and_rolls_back_with_the_daemon_stopped() {
    let rig = Rig::new("");
    let shitud = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_shitud"))
            .arg("--config")
            .arg(&rig.conf)
            .args(args)
            .current_dir(root())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    for v in ["v1", "v2"] {
        let file = rig.dir().join(format!("{v}.tar"));
        std::fs::write(&file, rig.good(v)).unwrap();
        let (code, text) = shitud(&["ota", "apply", file.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{text}");
        for step in [
            "verifying",
            "unpacking",
            "building",
            "checking",
            "switching",
        ] {
            assert!(text.contains(step), "each step is printed: {text}");
        }
        assert!(text.contains(&format!("version {v} is current")), "{text}");
    }
    // An older bundle over a newer version: refused, unless its signed
    // manifest allows the downgrade.
    let old = rig.dir().join("v1-again.tar");
    std::fs::write(&old, rig.good("v0")).unwrap();
    let (code, text) = shitud(&["ota", "apply", old.to_str().unwrap()]);
    assert!(
        code == Some(1)
            && text.contains("version v0 is not newer than the current version v2")
            && text.contains("--allow-downgrade"),
        "{text}"
    );
    assert_eq!(rig.current().as_deref(), Some("v2"));
    let bad = rig.dir().join("bad.tar");
    std::fs::write(&bad, rig.bundle("v3", "no such product", &[], None)).unwrap();
    let (code, text) = shitud(&["ota", "apply", bad.to_str().unwrap()]);
    assert!(
        code == Some(1) && text.contains("health check failed"),
        "{text}"
    );
    let (code, text) = shitud(&["ota", "status", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let st: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (st["current"].as_str(), st["previous"].as_str()),
        (Some("v2"), Some("v1")),
        "{st}"
    );
    assert_eq!(
        st["versions"].as_array().unwrap().len(),
        2,
        "the refused v3 left nothing: {st}"
    );
    let (code, text) = shitud(&["ota", "rollback"]);
    assert!(
        code == Some(0) && text.contains("current is now v1"),
        "{text}"
    );
    assert_eq!(rig.current().as_deref(), Some("v1"));
    // A bundle whose signed manifest allows it goes back past the previous version.
    let down = rig.dir().join("v0-down.tar");
    let spec = PackSpec {
        version: "v0".into(),
        gallery: Some(rig.dir().join("gallery")),
        golden: vec![(
            data("images/scenes/scene_00000.jpg"),
            rig.golden_label.clone(),
        )],
        allow_downgrade: true,
        ..Default::default()
    };
    bundle::pack(&spec, &down, Some(&rig.key)).unwrap();
    let (code, text) = shitud(&["ota", "apply", down.to_str().unwrap()]);
    assert!(
        code == Some(0) && text.contains("version v0 is current"),
        "{text}"
    );
    // While the daemon runs, it owns the store.
    let daemon = rig.start(&[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.log_text().contains("shitud serving") {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, text) = shitud(&["ota", "rollback"]);
    assert!(
        code == Some(2) && text.contains("shitud is running"),
        "{text}"
    );
    // An apply is handed to it through the watch folder instead.
    let v4 = rig.dir().join("v4.tar");
    std::fs::write(&v4, rig.good("v4")).unwrap();
    let (code, text) = shitud(&["ota", "apply", v4.to_str().unwrap()]);
    assert!(
        code == Some(0) && text.contains("handed to the running shitud"),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.current().as_deref() != Some("v4") {
        assert!(
            Instant::now() < deadline,
            "v4 not applied by the daemon\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(daemon.stop(), Some(0));
}
