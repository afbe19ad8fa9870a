//! A real mosquitto, the real `shitud run`, and a line-controller client,
//! for the daemon's integration tests.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

/// A mosquitto broker on a free loopback port, with persistence in a temp dir.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "port {port} did not become {}",
        if up { "reachable" } else { "free" }
    );
}

impl Broker {
    /// Starts mosquitto. It must be installed (scripts/setup.sh does it):
    /// without it this test fails instead of passing vacuously.
    pub fn start(dir: &Path) -> Broker {
        let mut b = Broker::prepare(dir);
        b.spawn();
        b
    }

    /// Writes the config (in `dir`, created if needed) and picks the port, without starting the broker.
    pub fn prepare(dir: &Path) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let b = Broker {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        let conf = dir.join("mosquitto.conf");
        // Started as root, mosquitto drops to user `mosquitto`, which cannot
        // write the persistence file in our temp dir: sessions would not survive a restart.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        // The shipped broker settings (config/mosquitto.conf: persistence,
        // a one-second autosave, queue limits), with this broker's own
        // listener and folders: the guarantees tested are the appliance's.
        let shipped = std::fs::read_to_string(super::root().join("config/mosquitto.conf"))
            .expect("config/mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "{shipped}\n{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence_location {dir}/\n\
                 log_dest file {dir}/mosquitto.log\n",
                port = b.port,
                dir = dir.display()
            ),
        )
        .unwrap();
        b
    }

    /// Appends lines to the broker's config (extra listeners, TLS).
    pub fn add_config(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("mosquitto.conf"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Starts (or starts again) the broker process.
    pub fn spawn(&mut self) {
        let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(exe)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "mosquitto must be installed (apt-get install mosquitto; scripts/setup.sh does it)",
            );
        self.child = Some(child);
        wait_for_port(self.port, true);
    }

    /// Stops the broker the way `systemctl restart mosquitto` does (SIGTERM:
    /// it saves its persistence file), then starts it again after `down`.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.spawn();
    }

    /// A crash: SIGKILL, so whatever the broker had not saved yet (up to
    /// `autosave_interval`, 1 s in config/mosquitto.conf) is lost; started again after `down`.
    pub fn crash_and_restart(&mut self, down: Duration) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
            wait_for_port(self.port, false);
        }
        std::thread::sleep(down);
        self.spawn();
    }

    /// Stops the broker.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGTERM);
            let _ = c.wait();
            wait_for_port(self.port, false);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `sig` to a child process.
pub fn signal(c: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    unsafe {
        libc::kill(c.id() as i32, sig);
    }
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the daemon's HTTP port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A reply to [`http`].
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// A header's value (the first, any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`, by hand, so that a test sets
/// exactly the headers it means to (Origin, Host, cookies, none at all).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the daemon's HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body whole.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply to {method} {path}: {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .unwrap_or(0);
            if n == 0 || rest.len() < eol + 2 + n {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[(eol + 4 + n).min(rest.len())..];
        }
        body = out;
    }
    HttpReply {
        status,
        headers,
        body,
    }
}

/// A running `shitud run`.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `shitud run --config <config>`, logging to `log`.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Daemon::start_with_env(config, log, &[])
    }

    /// Starts it with extra environment variables.
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shitud"))
            .args(["run", "--config"])
            .arg(config)
            .current_dir(super::root())
            .env("RUST_LOG", "info")
            .env_remove("SHITU_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("shitud starts");
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> Option<i32> {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "shitud did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a daemon config for `broker` and `gallery` into `dir`; `extra` is appended.
pub fn daemon_config(dir: &Path, port: u16, gallery: &Path, extra: &str) -> PathBuf {
    let root = super::root();
    let conf = dir.join("shitud.toml");
    std::fs::write(
        &conf,
        format!(
            "[detector]\nmodel = \"{det}\"\n[embedder]\nmodel = \"{rec}\"\n[search]\nindex = \"{g}\"\n\
             [mqtt]\nport = {port}\ndevice_id = \"test\"\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [daemon]\nspool_dir = \"{spool}\"\nstatus_interval_s = 1\n{extra}\n",
            det = root.join("engines/demo/det_prenms.onnx").display(),
            rec = root.join("engines/demo/rec.onnx").display(),
            g = gallery.display(),
            spool = dir.join("spool").display(),
        ),
    )
    .unwrap();
    conf
}

/// One message received by the test client.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub json: serde_json::Value,
    pub correlation: Option<Bytes>,
    pub retain: bool,
}

/// A line controller: publishes requests with a response topic and
/// correlation data, and collects what comes back.
pub struct Controller {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Received>,
    pub reply_topic: String,
}

impl Controller {
    /// Connects with a persistent session and subscribes to its reply topic and `extra` filters.
    pub async fn connect(port: u16, name: &str, extra: &[&str]) -> Controller {
        let mut o = MqttOptions::new(name, "127.0.0.1", port);
        o.set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(64 << 20))
            .set_request_channel_capacity(20_000);
        let (client, mut eventloop) = AsyncClient::new(o, 20_000);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json =
                            serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                        let topic = String::from_utf8_lossy(&p.topic).to_string();
                        let correlation = p.properties.and_then(|x| x.correlation_data);
                        if tx
                            .send(Received {
                                topic,
                                json,
                                correlation,
                                retain: p.retain,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let reply_topic = format!("test/replies/{name}");
        client
            .subscribe(reply_topic.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        for f in extra {
            client
                .subscribe(f.to_string(), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        Controller {
            client,
            rx,
            reply_topic,
        }
    }

    /// Publishes `payload` to `topic` with this controller's response topic.
    pub async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        correlation: &str,
        user: Vec<(String, String)>,
    ) {
        let props = PublishProperties {
            response_topic: Some(self.reply_topic.clone()),
            correlation_data: Some(Bytes::from(correlation.to_string())),
            user_properties: user,
            ..Default::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
            .await
            .unwrap();
    }

    /// Next message, or `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message on this controller's reply topic, or `None` at
    /// `deadline`. Other topics are skipped: with status messages every
    /// second, a per-message timeout would never fire on a stalled daemon.
    pub async fn reply_before(&mut self, deadline: Instant) -> Option<Received> {
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(m) if m.topic == self.reply_topic => return Some(m),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }

    /// Waits for a message on `topic` whose JSON satisfies `pred`.
    pub async fn wait_for(
        &mut self,
        topic: &str,
        wait: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(m) if m.topic == topic && pred(&m.json) => return Some(m),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }
}

/// A recognise request with the image inline, as base64.
pub fn json_request(id: &str, image: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "request_id": id,
        "image": base64::engine::general_purpose::STANDARD.encode(image),
    }))
    .unwrap()
}

/// Count of each request id in a list of answers.
pub fn tally(ids: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// What the in-process pipeline answers for a scene: label, box, score per object.
pub type Expected = Vec<(String, [i32; 4], f32)>;

/// Scenes used as requests, with what the in-process pipeline answers for them.
pub fn scenes_with_expected(gallery: &Path) -> Vec<(Vec<u8>, Expected)> {
    let mut s = super::settings("det_prenms.onnx");
    s.search.index = gallery.to_path_buf();
    let mut p = shitu_edge::Pipeline::open(&s).expect("pipeline");
    [
        "scene_00000.jpg",
        "scene_00001.jpg",
        "scene_00002.jpg",
        "scene_00003.jpg",
    ]
    .iter()
    .map(|n| {
        let path = super::data("images/scenes").join(n);
        let bytes = std::fs::read(&path).unwrap();
        let frame = shitu_edge::input::decode(*n, &bytes, &s.input).unwrap();
        let r = p.recognize(&[frame]).unwrap().remove(0);
        (
            bytes,
            r.results
                .iter()
                .map(|x| (x.rec_docs.clone(), x.bbox, x.rec_scores))
                .collect(),
        )
    })
    .collect()
}

/// Checks a recognise answer against what the in-process pipeline gave.
pub fn check_answer(a: &serde_json::Value, expected: &[(String, [i32; 4], f32)]) {
    assert_eq!(a["ok"], true, "{a}");
    let got = a["results"].as_array().expect("results");
    assert_eq!(got.len(), expected.len(), "{a}");
    for (g, (label, bbox, score)) in got.iter().zip(expected) {
        assert_eq!(g["rec_docs"], label.as_str(), "{a}");
        let b: Vec<i64> = g["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(b, bbox.map(i64::from).to_vec(), "{a}");
        // Batch composition changes the order of float sums inside the runtime, slightly.
        assert!(
            (g["rec_scores"].as_f64().unwrap() - *score as f64).abs() < 2e-3,
            "{a}"
        );
        assert_eq!(g["top_k"][0]["label"], label.as_str(), "{a}");
    }
    for key in [
        "queue",
        "det_infer",
        "rec_infer",
        "search",
        "total",
        "batch",
    ] {
        assert!(a["timings_ms"][key].is_number(), "{key} missing in {a}");
    }
    assert_eq!(
        a["versions"]["recognizer"].as_str().map(str::len),
        Some(16),
        "{a}"
    );
    assert_eq!(a["versions"]["provider"], "cpu", "{a}");
}

/// A Flat gallery of the test photos, built in `tmp/gallery`.
pub fn flat_gallery(tmp: &Path) -> std::path::PathBuf {
    let mut s = super::settings("det_prenms.onnx");
    let g = tmp.join("gallery");
    super::build_gallery(&mut s, &g, shitu_edge::search::Method::Flat);
    g
}
