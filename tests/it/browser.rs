//! The operator's page in a real browser: Debian's headless Chromium,
//! driven over WebDriver (chromedriver) by the small client below, against
//! `shitud run` with a camera (a `file://` clip of the test scenes) and a
//! real mosquitto. The page must show what the box saw and answered, and
//! teach it a product from an unknown item's tile.
//!
//! `SHITU_SCREENSHOT=docs/operator-page.png` writes the screenshot there
//! (docs/ holds one made so); it always goes to target/operator-page.png.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::cameras::{
    find_unknown, gallery_lacking_a_product, recognised_again, wait_streaming, STATUS,
};
use crate::common::mqtt::*;
use crate::common::*;

/// A WebDriver session on a headless Chromium.
struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

impl Browser {
    /// Starts chromedriver and a session. CI installs both
    /// (`scripts/setup.sh --tests`); without them this fails saying so.
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e}; install chromium and chromium-driver (scripts/setup.sh --tests)")
            });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            agent,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.agent.get(format!("{}/status", b.base)).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // No sandbox: CI runs as root in a container.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1600"]
            }
        }}});
        let session = b.call("POST", "/session", caps);
        let id = session["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = if method == "GET" {
            self.agent.get(&url).call()
        } else {
            self.agent
                .post(&url)
                .header("content-type", "application/json")
                .send(serde_json::to_vec(&body).unwrap())
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            resp.status().is_success(),
            "{method} {path}: {}: {text}",
            resp.status()
        );
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url}));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Runs `script` (a function body) in the page.
    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Waits until `script` returns something truthy; fails with `what`.
    fn wait(&self, what: &str, script: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {within:?}; page text:\n{}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/clear"), json!({}));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        );
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call("GET", "/screenshot", Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .expect("a PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page, logged in with the token of a box listening off loopback:
/// the camera's last answered frame with its boxes, the unknown item's
/// tile, enrolment from the tile, then the next trigger on that product
/// recognised, on MQTT and on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_camera_and_teaches_the_box_a_product() {
    let tmp = tempfile::tempdir().unwrap();
    let (g, gone_box, clip) = gallery_lacking_a_product(tmp.path());
    let broker = Broker::start(&tmp.path().join("broker"));
    let conf = daemon_config(
        tmp.path(),
        broker.port,
        &g,
        &format!(
            "[capture]\nunknown_dir = \"{}\"\n[[sources]]\nname = \"cam1\"\nuri = \"file://{}\"\n",
            tmp.path().join("unknown").display(),
            clip.display()
        ),
    );
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let token = "page-token-0123456789abcdef";
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let daemon = Daemon::start_with_env(
        &conf,
        &tmp.path().join("daemon.log"),
        &[
            ("SHITU__HTTP__LISTEN", &listen),
            ("SHITU__HTTP__TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    );
    let mut ctl = Controller::connect(broker.port, "ctl-browser", &[STATUS]).await;
    wait_streaming(&mut ctl, &daemon).await;
    let page = format!("http://127.0.0.1:{port}/");

    // Without the token the browser gets the login form, not the page.
    let browser = {
        let page = page.clone();
        tokio::task::spawn_blocking(move || {
            let b = Browser::start();
            b.goto(&page);
            assert!(b.url().ends_with("/login"), "{}", b.url());
            let r = b.js("return fetch('/api/status').then(r => r.status)");
            assert_eq!(r, 401, "the API without the token");
            b.type_into("input[name=token]", token);
            b.click("button[type=submit]");
            b.wait(
                "the page, logged in",
                "return document.body.dataset.ready === '1'",
                Duration::from_secs(30),
            );
            b
        })
        .await
        .unwrap()
    };

    // A trigger keeps the product as unknown: the page shows the answer
    // over its frame, and the item as a tile.
    let (trigger_id, captured, unknown_id) = find_unknown(&mut ctl, &daemon, gone_box).await;
    let browser = {
        let (u, t) = (unknown_id.clone(), trigger_id.clone());
        tokio::task::spawn_blocking(move || {
            b_wait_answer(&browser, &t);
            browser.wait(
                "the unknown item's tile",
                &format!("return !!document.querySelector('[data-unknown=\"{u}\"] img')?.naturalWidth"),
                Duration::from_secs(30),
            );
            // The frame is the one answered, and the boxes are drawn over it.
            let boxes = browser.wait(
                "boxes over the camera's frame",
                "const c = document.querySelector('[data-source=cam1]'); \
                 return c && c.querySelector('img').naturalWidth === 960 && c.querySelectorAll('svg rect').length",
                Duration::from_secs(30),
            );
            assert!(boxes.as_u64().unwrap() >= 1, "{boxes}");
            let shot = browser.screenshot();
            assert!(shot.starts_with(b"\x89PNG"));
            let target = root().join("target/operator-page.png");
            std::fs::write(&target, &shot).unwrap();
            if let Ok(to) = std::env::var("SHITU_SCREENSHOT") {
                std::fs::write(root().join(PathBuf::from(to)), &shot).unwrap();
            }
            // Named from its tile.
            browser.type_into(&format!("[data-unknown=\"{u}\"] input[name=label]"), "new-product");
            browser.click(&format!("[data-unknown=\"{u}\"] button[type=submit]"));
            browser.wait(
                "the tile gone after enrolment",
                &format!("return !document.querySelector('[data-unknown=\"{u}\"]') && document.querySelector('#toast').textContent.includes('enrolled as new-product')"),
                Duration::from_secs(60),
            );
            browser.wait(
                "the gallery listing the new product, with its thumbnail",
                "return [...document.querySelectorAll('#gallery tr')].some(tr => \
                   tr.cells[2]?.textContent === 'new-product' && tr.querySelector('img.thumb')?.naturalWidth > 0)",
                Duration::from_secs(30),
            );
            browser
        })
        .await
        .unwrap()
    };

    // The next trigger on that product is recognised, and the page says so.
    recognised_again(&mut ctl, captured, gone_box).await;
    tokio::task::spawn_blocking(move || {
        b_wait_answer(&browser, "again");
        browser.wait(
            "the camera's caption naming the product",
            "return document.querySelector('[data-source=cam1] .caption').textContent.includes('new-product')",
            Duration::from_secs(30),
        );
    })
    .await
    .unwrap();
    assert_eq!(daemon.stop(), Some(0));
}

/// Waits for the recent answers to list `request_id`.
fn b_wait_answer(b: &Browser, request_id: &str) {
    b.wait(
        &format!("answer {request_id} listed"),
        &format!("return [...document.querySelectorAll('#answers td')].some(td => td.textContent === '{request_id}')"),
        Duration::from_secs(30),
    );
}
