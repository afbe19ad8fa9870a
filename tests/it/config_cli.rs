//! `shitud config check` and `shitud config show` on the real binary: the
//! shipped file passes, layers apply in order (file < conf.d < environment),
//! every problem is named with its file and line or variable, secrets are masked.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use shitu_edge::search::Method;

fn shitud(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shitud"));
    c.args(args).current_dir(dir).env_remove("SHITU_CONFIG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHITU__")) {
        c.env_remove(k);
    }
    c.envs(env.iter().copied()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_shipped_config_checks_clean() {
    let tmp = tempfile::tempdir().unwrap();
    // Its gallery (engines/demo/gallery) is what scripts/demo.sh builds; here one is built elsewhere and named by the environment.
    let mut s = common::settings("det_prenms.onnx");
    let g = tmp.path().join("gallery");
    common::build_gallery(&mut s, &g, Method::Flat);
    let shipped = common::root().join("config/shitu-edge.toml");
    let o = shitud(
        &common::root(),
        &["config", "check", "--config", shipped.to_str().unwrap()],
        &[("SHITU__SEARCH__INDEX", g.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("configuration ok"), "{}", text(&o));
    // Without that gallery, the check says exactly what is missing, and where it is set.
    let o = shitud(
        &common::root(),
        &["config", "check", "--config", shipped.to_str().unwrap()],
        &[("SHITU__SEARCH__INDEX", "/nonexistent/gallery")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "env SHITU__SEARCH__INDEX: search.index: /nonexistent/gallery: no such directory"
        ),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("`shitud gallery build` (scripts/demo.sh builds the demo one"),
        "a missing gallery says how to make one: {}",
        text(&o)
    );
}

#[test]
fn layers_apply_in_order_and_show_says_where_each_value_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    let main = tmp.path().join("config.toml");
    std::fs::write(&main, "[mqtt]\nhost = \"from-file\"\nport = 1884\nusername = \"line7\"\npassword = \"hunter2\"\n[daemon]\nmax_batch = 2\n").unwrap();
    std::fs::create_dir(tmp.path().join("conf.d")).unwrap();
    std::fs::write(
        tmp.path().join("conf.d/10-site.toml"),
        "[mqtt]\nhost = \"from-confd\"\n[daemon]\nmax_batch = 3\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("conf.d/20-box.toml"),
        "[daemon]\nmax_batch = 4\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("conf.d/README"),
        "not a toml file: ignored\n",
    )
    .unwrap();
    let o = shitud(
        tmp.path(),
        &["config", "show", "--config", "config.toml"],
        &[("SHITU__MQTT__PORT", "1885")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing:\n{out}"))
            .to_string()
    };
    assert!(
        line("host").starts_with("host = \"from-confd\"  # conf.d/10-site.toml:2"),
        "{}",
        line("host")
    );
    assert!(
        line("port").starts_with("port = 1885  # env SHITU__MQTT__PORT"),
        "{}",
        line("port")
    );
    assert!(
        line("max_batch").contains("= 4  # conf.d/20-box.toml:2"),
        "later conf.d files win: {}",
        line("max_batch")
    );
    assert!(
        line("username").ends_with("# config.toml:4"),
        "{}",
        line("username")
    );
    assert_eq!(line("password"), "password = \"********\"  # config.toml:5");
    assert!(!out.contains("hunter2"));
    assert!(
        line("keep_alive_s").starts_with("keep_alive_s = 30")
            && !line("keep_alive_s").contains('#'),
        "defaults carry no origin: {}",
        line("keep_alive_s")
    );
}

#[test]
fn every_problem_is_named_with_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.toml"),
        "[detector]\nthreshold = 1.5\nmodel = \"missing.onnx\"\n[mqtt]\nprotocol = \"v4\"\npassword = \"x\"\npassword_file = \"/run/secret\"\n[mqtt.tls]\nclient_cert = \"c.pem\"\n[ota]\ndownload_dir = \"/var/cache/shitu-edge/ota\"\n",
    )
    .unwrap();
    let o = shitud(
        tmp.path(),
        &["config", "check", "-c", "config.toml"],
        &[("SHITU__DAEMON__QUEUE_CAPACITY", "lots")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    for expected in [
        "config.toml:2: detector.threshold: must be within 0..1",
        "config.toml:3: detector.model: missing.onnx: no such file",
        "config.toml:5: mqtt.protocol: unknown variant `v4`",
        "config.toml:6: mqtt.password: and mqtt.password_file are mutually exclusive",
        "mqtt.username: is needed with a password",
        "config.toml:9: mqtt.tls.client_cert: and mqtt.tls.client_key go together",
        "config.toml:11: ota.download_dir: needs ota.root",
        "env SHITU__DAEMON__QUEUE_CAPACITY: daemon.queue_capacity: invalid type: string \"lots\"",
    ] {
        assert!(t.contains(expected), "missing {expected:?} in:\n{t}");
    }
    assert!(
        t.contains("problem(s) in the configuration from config.toml"),
        "{t}"
    );
}

/// `log.format` (or `--log-format`): JSON lines, the journal's `<priority>`
/// prefix (chosen by itself under systemd, which sets JOURNAL_STREAM), or text.
#[test]
fn log_formats() {
    let tmp = tempfile::tempdir().unwrap();
    // `run` logs that it is loading, then stops: the gallery does not exist.
    std::fs::write(
        tmp.path().join("config.toml"),
        "[search]\nindex = \"no-gallery\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let o = shitud(tmp.path(), &["run", "-c", "config.toml"], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let line = err
        .lines()
        .find(|l| l.contains("loading models"))
        .unwrap_or_else(|| panic!("{err}"));
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "loading models and gallery", "{v}");

    let o = shitud(
        tmp.path(),
        &["run", "-c", "config.toml", "--log-format", "auto"],
        &[("JOURNAL_STREAM", "8:12345")],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.lines()
            .any(|l| l.starts_with("<6>loading models and gallery")),
        "journal format under systemd:\n{err}"
    );
    assert!(!err.contains("\u{1b}["), "no colour codes in the journal");

    let o = shitud(
        tmp.path(),
        &["run", "-c", "config.toml", "--log-format", "text"],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.lines()
            .any(|l| l.contains("INFO") && l.contains("loading models and gallery")),
        "{err}"
    );
    // stderr is a pipe here, as it is for a log file: no colour codes in it.
    assert!(
        !err.contains("\u{1b}["),
        "colour codes in text logs to a pipe:\n{err:?}"
    );
}

#[test]
fn the_old_gpu_keys_are_refused_with_the_new_name() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("old.toml");
    std::fs::write(
        &conf,
        "[engine]\nprovider = \"cpu\"\ndevice_id = 1\n\n[search]\ndevice_id = 1\n",
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    // `config check`: each old key, with its file and line, and what to write instead.
    let o = shitud(tmp.path(), &["config", "check", "--config", c], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for (line, old) in [(3, "engine.device_id"), (6, "search.device_id")] {
        assert!(
            t.contains(&format!(
                "{c}:{line}: {old}: {old} was replaced by gpu.device_id"
            )),
            "{t}"
        );
    }
    // Every command that loads the settings says the same, not "unknown field".
    let o = shitud(tmp.path(), &["-c", c, "engines", "list"], &[]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("engine.device_id was replaced by gpu.device_id"),
        "{t}"
    );
    // From the environment too.
    let o = shitud(
        tmp.path(),
        &["config", "check"],
        &[("SHITU__SEARCH__DEVICE_ID", "0")],
    );
    assert!(
        text(&o).contains("search.device_id was replaced by gpu.device_id"),
        "{}",
        text(&o)
    );
    // The new key is accepted.
    std::fs::write(&conf, "[gpu]\ndevice_id = 1\n").unwrap();
    let o = shitud(tmp.path(), &["config", "show", "--config", c], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("device_id = 1"), "{}", text(&o));
}

/// `daemon.metrics_port` moved onto the daemon's one HTTP server: `config
/// check` names `http.listen` instead, with the file and line. An address
/// other than loopback without a token, and half a TLS pair, are refused.
#[test]
fn the_http_server_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("box.toml");
    let c = conf.to_str().unwrap();
    let check = |text_: &str| {
        std::fs::write(&conf, text_).unwrap();
        let o = shitud(tmp.path(), &["config", "check", "--config", c], &[]);
        (o.status.code(), text(&o))
    };
    let (code, t) = check("[daemon]\nmetrics_port = 9464\n");
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains(&format!(
            "{c}:2: daemon.metrics_port: daemon.metrics_port was replaced by http.listen"
        )),
        "{t}"
    );
    let (code, t) = check("[http]\nlisten = \"0.0.0.0:8080\"\n");
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("http.token_file") && t.contains("not loopback"),
        "{t}"
    );
    let (code, t) = check("[http]\nlisten = \"8080\"\n");
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("http.listen") && t.contains("not an address"),
        "{t}"
    );
    let (code, t) = check("[http]\ntls_cert = \"/etc/c.pem\"\n");
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("http.tls_key"), "{t}");
    let token = tmp.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    let (code, t) = check(&format!(
        "[http]\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"{}\"\n",
        token.display()
    ));
    // (The demo models are not in this folder: only the http keys matter here.)
    assert!(!t.contains("http."), "{code:?} {t}");
    let (code, t) = check("[http]\nlisten = \"\"\n");
    assert!(!t.contains("http."), "{code:?} {t}");
}
