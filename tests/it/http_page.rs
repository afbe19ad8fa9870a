//! The daemon's HTTP server with real parts: `shitud run` with a camera
//! (a `file://` clip of the test scenes), a real mosquitto, and the page's
//! JSON API spoken over TCP. What the page does, the API does: the latest
//! answered frame, recent answers, unknown items enrolled and dropped, the
//! gallery searched and pruned; bad input changes nothing; the token, the
//! same-site check and the loopback default each refuse what they must.

use std::time::Duration;

use crate::cameras::{
    answer, find_unknown, gallery_lacking_a_product, recognised_again, trigger, wait_streaming,
    STATUS,
};
use crate::common::mqtt::*;
use crate::common::*;

const JSON: (&str, &str) = ("content-type", "application/json");

fn get(port: u16, path: &str) -> HttpReply {
    http(port, "GET", path, &[], b"")
}

fn post(port: u16, path: &str, body: serde_json::Value) -> HttpReply {
    http(
        port,
        "POST",
        path,
        &[JSON],
        &serde_json::to_vec(&body).unwrap(),
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The page's API against a running daemon with a camera: each thing the
/// page shows, and each change it makes, with the errors it must give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_api_shows_the_camera_and_teaches_an_unknown_item() {
    let tmp = tempfile::tempdir().unwrap();
    let (g, gone_box, clip) = gallery_lacking_a_product(tmp.path());
    let broker = Broker::start(&tmp.path().join("broker"));
    let unknown_dir = tmp.path().join("unknown");
    let conf = daemon_config(
        tmp.path(),
        broker.port,
        &g,
        &format!(
            "max_payload_bytes = 2000000\n\
             [capture]\nunknown_dir = \"{}\"\n\
             [[sources]]\nname = \"cam1\"\nuri = \"file://{}\"\n",
            unknown_dir.display(),
            clip.display()
        ),
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with_env(
        &conf,
        &tmp.path().join("daemon.log"),
        &[("SHITU__HTTP__LISTEN", &listen)],
    );
    let mut ctl =
        Controller::connect(broker.port, "ctl-http", &[STATUS, "shitu/test/unknown"]).await;
    wait_streaming(&mut ctl, &daemon).await;

    // The page and its files, from the binary.
    let page = blocking(move || get(port, "/")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("<script src=\"/app.js\""),
        "{}",
        page.text()
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let js = blocking(move || get(port, "/app.js")).await;
    assert_eq!(
        (js.status, js.header("content-type")),
        (200, Some("text/javascript; charset=utf-8"))
    );
    let status = blocking(move || get(port, "/api/status")).await.json();
    assert_eq!(status["versions"]["device_id"], "test", "{status}");
    assert_eq!(status["broker"]["connected"], true, "{status}");
    assert_eq!(status["sources"]["cam1"]["state"], "streaming", "{status}");

    // A trigger makes an unknown item; the page sees the answer, its frame, the item.
    let (trigger_id, captured, unknown_id) = find_unknown(&mut ctl, &daemon, gone_box).await;
    // Its crop is saved after the answer; the announcement says it is there.
    let u = unknown_id.clone();
    ctl.wait_for("shitu/test/unknown", Duration::from_secs(30), move |j| {
        j["unknown_id"] == u.as_str()
    })
    .await
    .expect("announced on P/unknown");
    let answers = blocking(move || get(port, "/api/answers?n=20"))
        .await
        .json();
    let listed = answers
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["request_id"] == trigger_id.as_str())
        .unwrap_or_else(|| panic!("{trigger_id} not listed: {answers}"));
    assert_eq!(listed["input"], "trigger");
    assert_eq!(listed["source"], "cam1");
    assert_eq!(listed["captured_at_ms"], captured);
    assert_eq!(listed["size"], serde_json::json!([960, 600]));
    let frame = blocking(move || get(port, "/api/sources/cam1/frame.jpg")).await;
    assert_eq!(frame.status, 200);
    assert_eq!(frame.header("content-type"), Some("image/jpeg"));
    let seq: u64 = frame.header("x-answer-seq").unwrap().parse().unwrap();
    assert!(seq > 0);
    let decoded = opencv::imgcodecs::imdecode(
        &opencv::core::Vector::<u8>::from_slice(&frame.body),
        opencv::imgcodecs::IMREAD_COLOR,
    )
    .unwrap();
    use opencv::core::MatTraitConst;
    assert_eq!((decoded.cols(), decoded.rows()), (960, 600));
    let latest = blocking(move || get(port, "/api/sources/cam1/frame.jpg?which=latest")).await;
    assert_eq!(latest.status, 200);
    let nope = blocking(move || get(port, "/api/sources/cam9/frame.jpg")).await;
    assert_eq!(nope.status, 404);
    assert_eq!(nope.json()["error"]["code"], "unknown_source");
    let sources = blocking(move || get(port, "/api/sources")).await.json();
    assert!(
        sources["cam1"]["last_answer"]["seq"].as_u64().unwrap() >= seq,
        "{sources}"
    );

    let items = blocking(move || get(port, "/api/unknown")).await.json();
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["unknown_id"] == unknown_id.as_str()),
        "{items}"
    );
    let u = unknown_id.clone();
    let crop = blocking(move || get(port, &format!("/api/unknown/{u}/crop.png"))).await;
    assert_eq!(
        (crop.status, crop.header("content-type")),
        (200, Some("image/png"))
    );
    assert!(crop.body.starts_with(b"\x89PNG"));

    // Bad input: each a clear error, and nothing changes.
    let u = unknown_id.clone();
    let bad = blocking(move || {
        let enrol = format!("/api/unknown/{u}/enrol");
        vec![
            (
                "path label",
                post(port, &enrol, serde_json::json!({"label": "../../etc/x"})),
                400,
                "'/'",
            ),
            (
                "control label",
                post(port, &enrol, serde_json::json!({"label": "a\nforged"})),
                400,
                "control",
            ),
            (
                "empty label",
                post(port, &enrol, serde_json::json!({"label": " "})),
                400,
                "label",
            ),
            (
                "broken JSON",
                http(port, "POST", &enrol, &[JSON], b"{\"label\": "),
                400,
                "not JSON",
            ),
            (
                "forged id",
                post(
                    port,
                    "/api/unknown/01JD3Q8ZK5V3N4W7Y2C9M6T0AB/enrol",
                    serde_json::json!({"label": "x"}),
                ),
                400,
                "no unknown item",
            ),
            (
                "escaping id",
                post(
                    port,
                    "/api/unknown/..%2F..%2Fetc%2Fpasswd/enrol",
                    serde_json::json!({"label": "x"}),
                ),
                400,
                "not an unknown item id",
            ),
            (
                "huge body",
                http(
                    port,
                    "POST",
                    "/api/gallery/add",
                    &[JSON],
                    &vec![b' '; 3_000_000],
                ),
                413,
                "max_payload_bytes",
            ),
            (
                "another site",
                http(
                    port,
                    "POST",
                    &enrol,
                    &[JSON, ("origin", "http://evil.example")],
                    br#"{"label":"new-product"}"#,
                ),
                403,
                "own page",
            ),
            (
                "unknown route",
                get(port, "/api/nothing"),
                404,
                "no GET /api/nothing",
            ),
            (
                "rebound name",
                http(
                    port,
                    "GET",
                    "/api/status",
                    &[("host", &format!("evil.example:{port}"))],
                    b"",
                ),
                403,
                "only localhost",
            ),
            ("bad query", get(port, "/api/answers?n=many"), 400, "n"),
            (
                "not an image",
                post(
                    port,
                    "/api/gallery/add",
                    serde_json::json!({"label": "x", "image": "bm90IGFuIGltYWdl"}),
                ),
                422,
                "",
            ),
            (
                "bad base64",
                post(
                    port,
                    "/api/gallery/add",
                    serde_json::json!({"label": "x", "image": "%%%"}),
                ),
                400,
                "base64",
            ),
            (
                "remove nothing",
                post(
                    port,
                    "/api/gallery/remove",
                    serde_json::json!({"label": "no-such-label"}),
                ),
                400,
                "no gallery item",
            ),
        ]
    })
    .await;
    for (what, r, status, says) in bad {
        let j = r.json();
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(j["ok"], false, "{what}: {j}");
        assert!(
            j["error"]["message"].as_str().unwrap_or("").contains(says),
            "{what}: {j}"
        );
    }
    assert!(unknown_dir.join(format!("{unknown_id}.png")).is_file());
    let items = blocking(move || get(port, "/api/gallery?label=new-product"))
        .await
        .json();
    assert_eq!(items["matched"], 0, "{items}");

    // Enrolled from the page (as a browser sends it: same origin).
    let u = unknown_id.clone();
    let origin = format!("http://127.0.0.1:{port}");
    let r = blocking(move || {
        http(
            port,
            "POST",
            &format!("/api/unknown/{u}/enrol"),
            &[JSON, ("origin", &origin), ("sec-fetch-site", "same-origin")],
            br#"{"label":"new-product"}"#,
        )
    })
    .await;
    let j = r.json();
    assert_eq!((r.status, &j["ok"]), (200, &serde_json::json!(true)), "{j}");
    let added = j["added"][0].as_i64().unwrap();
    assert!(!unknown_dir.join(format!("{unknown_id}.png")).exists());
    // The next trigger on that frame recognises it.
    recognised_again(&mut ctl, captured, gone_box).await;
    let items = blocking(move || get(port, "/api/gallery?label=NEW-prod"))
        .await
        .json();
    assert_eq!(items["matched"], 1, "{items}");
    assert_eq!(items["items"][0]["id"], added);
    assert_eq!(items["items"][0]["source"], format!("unknown:{unknown_id}"));
    // Its thumbnail is the crop, small; built items have theirs from the build.
    let thumb = blocking(move || get(port, &format!("/api/gallery/{added}/thumb.jpg"))).await;
    assert_eq!(
        (thumb.status, thumb.header("content-type")),
        (200, Some("image/jpeg"))
    );
    assert_eq!(
        blocking(move || get(port, "/api/gallery/0/thumb.jpg"))
            .await
            .status,
        200
    );

    // Dropped and removed from the page.
    let left = blocking(move || get(port, "/api/unknown")).await.json();
    if let Some(other) = left.as_array().unwrap().first() {
        let id = other["unknown_id"].as_str().unwrap().to_string();
        let i = id.clone();
        let r = blocking(move || {
            post(
                port,
                &format!("/api/unknown/{i}/drop"),
                serde_json::json!({}),
            )
        })
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!unknown_dir.join(format!("{id}.png")).exists());
    }
    let r = blocking(move || {
        post(
            port,
            "/api/gallery/remove",
            serde_json::json!({"ids": [added]}),
        )
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["removed"], serde_json::json!([added]));
    let gone = blocking(move || get(port, &format!("/api/gallery/{added}/thumb.jpg"))).await;
    assert_eq!(gone.status, 404, "the thumbnail goes with its item");
    // The same command on MQTT gets the same error as on HTTP.
    ctl.request(
        "shitu/test/gallery/remove",
        serde_json::to_vec(&serde_json::json!({"request_id": "rm-again", "ids": [added]})).unwrap(),
        "rm-again",
        vec![],
    )
    .await;
    let a = answer(&mut ctl, "rm-again", Duration::from_secs(30)).await;
    let again = blocking(move || {
        post(
            port,
            "/api/gallery/remove",
            serde_json::json!({"ids": [added]}),
        )
    })
    .await;
    assert_eq!(again.status, 400);
    assert_eq!(a["error"]["code"], again.json()["error"]["code"], "{a}");

    // The event stream carries answers as they happen. The trigger goes out
    // once the stream's headers are in: the handler subscribes before it
    // answers, so nothing sent after that can be missed.
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    let events = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        // Bounded in time, not only per read: keep-alive comments arrive
        // every 15 s, so a per-read timeout alone would never end a miss.
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while !String::from_utf8_lossy(&seen).contains("\"request_id\":\"via-sse\"")
            && std::time::Instant::now() < until
        {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
            if !told && String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                told = true;
                let _ = subscribed_tx.send(());
            }
        }
        String::from_utf8_lossy(&seen).to_string()
    });
    blocking(move || {
        subscribed
            .recv_timeout(Duration::from_secs(60))
            .expect("the event stream's headers within 60 s")
    })
    .await;
    trigger(&ctl, "via-sse", serde_json::json!({"source": "cam1"})).await;
    answer(&mut ctl, "via-sse", Duration::from_secs(60)).await;
    let events = events.await.unwrap();
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("event: answer"), "{events}");
    assert!(events.contains("\"request_id\":\"via-sse\""), "{events}");

    // Prometheus and health on the same server.
    let m = blocking(move || get(port, "/metrics")).await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(
        m.text()
            .contains("shitu_source_frames_total{source=\"cam1\"}"),
        "{}",
        m.text()
    );
    assert!(m.text().ends_with("# EOF\n"));
    assert_eq!(blocking(move || get(port, "/healthz")).await.status, 200);
    assert_eq!(daemon.stop(), Some(0));
}

/// Off loopback, the page needs the token: as a bearer, or as the cookie
/// the login form sets; health stays open; a daemon told to listen off
/// loopback without a token does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_every_request_needs_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let g = flat_gallery(tmp.path());
    let broker = Broker::start(&tmp.path().join("broker"));
    let conf = daemon_config(tmp.path(), broker.port, &g, "");
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");

    // No token: it refuses to start, and says why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(["run", "--config"])
        .arg(&conf)
        .env("SHITU__HTTP__LISTEN", &listen)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.token_file") && err.contains("not loopback"),
        "{err}"
    );

    let token = "tok-0123456789abcdef-xyz";
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let daemon = Daemon::start_with_env(
        &conf,
        &tmp.path().join("daemon.log"),
        &[
            ("SHITU__HTTP__LISTEN", &listen),
            ("SHITU__HTTP__TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    );
    let mut ctl = Controller::connect(broker.port, "ctl-token", &[STATUS]).await;
    assert!(
        ctl.wait_for(STATUS, Duration::from_secs(120), |j| j["state"] == "online")
            .await
            .is_some(),
        "{}",
        daemon.log_text()
    );
    let bearer = format!("Bearer {token}");
    let cookie_line = blocking(move || {
        let r = get(port, "/api/status");
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        assert!(r.header("www-authenticate").is_some());
        let r = http(
            port,
            "GET",
            "/api/status",
            &[("authorization", "Bearer wrong-token-0123456789")],
            b"",
        );
        assert_eq!(r.status, 401);
        let r = get(port, "/metrics");
        assert_eq!(r.status, 401);
        // Changes without the token change nothing.
        let r = post(
            port,
            "/api/gallery/remove",
            serde_json::json!({"label": "anything"}),
        );
        assert_eq!(r.status, 401);
        let r = get(port, "/");
        assert_eq!((r.status, r.header("location")), (303, Some("/login")));
        assert_eq!(get(port, "/healthz").status, 200);
        let r = get(port, "/login");
        assert_eq!(r.status, 200);
        assert!(r.text().contains("name=\"token\""));
        let form = ("content-type", "application/x-www-form-urlencoded");
        let r = http(port, "POST", "/login", &[form], b"token=nope");
        assert_eq!(r.status, 401);
        assert!(r.header("set-cookie").is_none());
        let r = http(
            port,
            "POST",
            "/login",
            &[form],
            format!("token={token}").as_bytes(),
        );
        assert_eq!(r.status, 303, "{}", r.text());
        let cookie = r.header("set-cookie").unwrap().to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let r = http(
            port,
            "GET",
            "/api/status",
            &[("authorization", &bearer)],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["versions"]["device_id"], "test");
        // A login form on another site cannot log the operator's browser in.
        let r = http(
            port,
            "POST",
            "/login",
            &[form, ("origin", "http://evil.example")],
            format!("token={token}").as_bytes(),
        );
        assert_eq!(r.status, 403);
        cookie.split(';').next().unwrap().to_string()
    })
    .await;
    blocking(move || {
        let r = http(port, "GET", "/", &[("cookie", &cookie_line)], b"");
        assert_eq!(r.status, 200);
        let r = http(
            port,
            "GET",
            "/api/gallery?limit=1",
            &[("cookie", &cookie_line)],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // With the token, a change from another site is still refused.
        let r = http(
            port,
            "POST",
            "/api/gallery/remove",
            &[
                ("cookie", &cookie_line),
                JSON,
                ("origin", "http://evil.example"),
            ],
            br#"{"label":"x"}"#,
        );
        assert_eq!(r.status, 403, "{}", r.text());
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));
}

/// With `http.tls_cert` and `http.tls_key` the server speaks HTTPS only
/// (rustls), the login cookie is `Secure`, and an unreadable certificate
/// stops the start with the setting named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_when_a_certificate_is_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let g = flat_gallery(tmp.path());
    let broker = Broker::start(&tmp.path().join("broker"));
    let conf = daemon_config(tmp.path(), broker.port, &g, "");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let token = "tls-token-0123456789abcdef";
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).unwrap();

    // A certificate that cannot be read: no start, and the setting named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(["run", "--config"])
        .arg(&conf)
        .env("SHITU__HTTP__LISTEN", &listen)
        .env("SHITU__HTTP__TLS_CERT", tmp.path().join("missing.pem"))
        .env("SHITU__HTTP__TLS_KEY", &key)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.tls_cert") && err.contains("missing.pem"),
        "{err}"
    );

    let daemon = Daemon::start_with_env(
        &conf,
        &tmp.path().join("daemon.log"),
        &[
            ("SHITU__HTTP__LISTEN", &listen),
            ("SHITU__HTTP__TLS_CERT", cert.to_str().unwrap()),
            ("SHITU__HTTP__TLS_KEY", key.to_str().unwrap()),
            ("SHITU__HTTP__TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    );
    let mut ctl = Controller::connect(broker.port, "ctl-tls", &[STATUS]).await;
    assert!(
        ctl.wait_for(STATUS, Duration::from_secs(120), |j| j["state"] == "online")
            .await
            .is_some(),
        "{}",
        daemon.log_text()
    );
    let curl = |args: &[&str]| {
        let o = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&cert)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let (ok, body) = curl(&[&format!("https://localhost:{port}/healthz")]);
    assert!(ok && body == "ok\n", "{body}\n{}", daemon.log_text());
    let (ok, head) = curl(&[
        "-i",
        "--data",
        &format!("token={token}"),
        &format!("https://localhost:{port}/login"),
    ]);
    assert!(ok, "{head}");
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{head}"));
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the HTTPS port gets no page.
    let plain = http_plain_fails(port);
    assert!(plain, "plain HTTP was answered on the HTTPS port");
    assert_eq!(daemon.stop(), Some(0));
}

/// Whether a plain HTTP request to `port` gets no HTTP answer.
fn http_plain_fails(port: u16) -> bool {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    !raw.starts_with(b"HTTP/1.1 200")
}
