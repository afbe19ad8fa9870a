//! The installed service under a real systemd, as on a box: `scripts/install.sh`
//! lays out the files, `tests/systemd/boot.sh` boots systemd as PID 1 of its
//! own namespaces on a throw-away overlay of this machine, and systemd runs
//! sysusers, tmpfiles and `shitu-edge.service` with its whole sandbox.
//!
//! `tests/it/systemd_notify.rs` checks what the daemon says to a notify socket;
//! this checks that systemd, given the unit we ship, acts on it: the service
//! becomes active only after `READY=1`, serves under the sandbox, is killed
//! and restarted when the watchdog pings stop, and the request it hung on is
//! answered after the restart.
//!
//! Needs root (PID and mount namespaces); it says it skipped, and why,
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::mqtt::*;
use crate::common::*;
use shitu_edge::search::Method;

const REQ: &str = "shitu/boot/recognize";
const UNIT: &str = "shitu-edge.service";

/// A systemd booted by `tests/systemd/boot.sh`. Dropping it kills PID 1,
/// and with it everything in its PID namespace.
struct Booted {
    stage: PathBuf,
    boot: Child,
    /// PID 1 of the namespace, as this process sees it.
    pid: u32,
}

impl Booted {
    /// Boots, or says why this machine cannot.
    fn start(stage: &Path) -> Result<Booted, String> {
        let log = std::fs::File::create(stage.join("boot.out")).unwrap();
        let mut boot = Command::new("bash")
            .arg(root().join("tests/systemd/boot.sh"))
            .arg(stage)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("bash runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            if let Some(status) = boot.try_wait().unwrap() {
                let out = std::fs::read_to_string(stage.join("boot.out")).unwrap_or_default();
                let console =
                    std::fs::read_to_string(stage.join("console.log")).unwrap_or_default();
                if status.code() == Some(77) {
                    return Err(out.trim().to_string());
                }
                panic!("boot.sh ended ({status}) before systemd ran:\n{out}\n{console}");
            }
            if let Some(pid) = std::fs::read_to_string(stage.join("pid"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            if Instant::now() > deadline {
                // SIGTERM: boot.sh's trap ends unshare, and with it the container.
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(boot.id() as libc::pid_t, libc::SIGTERM) };
                let _ = boot.wait();
                panic!(
                    "boot.sh started no systemd in 30 s:\n{}",
                    std::fs::read_to_string(stage.join("console.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let booted = Booted {
            stage: stage.to_path_buf(),
            boot,
            pid,
        };
        booted.wait_for(
            "systemd answering systemctl",
            Duration::from_secs(30),
            |b| b.exec(&["systemctl", "show", "-p", "SystemState"]).0,
        );
        Ok(booted)
    }

    /// Runs a command inside (all namespaces of PID 1): `(success, stdout + stderr)`.
    fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a"])
            .args(args)
            .output()
            .expect("nsenter runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Runs a command inside; it must succeed.
    fn must(&self, args: &[&str]) -> String {
        let (ok, text) = self.exec(args);
        assert!(
            ok,
            "{args:?} failed:\n{text}\n--- journal ---\n{}",
            self.journal()
        );
        text
    }

    /// One property of the unit, as `systemctl show` gives it.
    fn prop(&self, name: &str) -> String {
        self.must(&["systemctl", "show", "-p", name, "--value", UNIT])
            .trim()
            .to_string()
    }

    /// Everything the journal holds for the unit: the daemon's lines and systemd's about it.
    fn journal(&self) -> String {
        self.exec(&["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"])
            .1
    }

    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&Booted) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            if Instant::now() > deadline {
                let console =
                    std::fs::read_to_string(self.stage.join("console.log")).unwrap_or_default();
                panic!(
                    "no {what} after {limit:?}\n--- journal ---\n{}\n--- console ---\n{console}",
                    self.journal()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the unit is active (which, for `Type=notify`, means
    /// after `READY=1`) and its `STATUS=` says it serves.
    fn wait_serving(&self) {
        self.wait_for("active, serving service", Duration::from_secs(90), |b| {
            b.prop("ActiveState") == "active" && b.prop("StatusText").starts_with("serving ")
        });
    }

    fn status_field(&self, pid: &str, field: &str) -> String {
        let status = self.must(&["cat", &format!("/proc/{pid}/status")]);
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {field} in\n{status}"))
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory preconditions; the pid is PID 1 of our namespace.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        let _ = self.boot.kill();
        let _ = self.boot.wait();
        // The cgroup boot.sh made, and what systemd made under it, once empty.
        if let Ok(cg) = std::fs::read_to_string(self.stage.join("cgroup")) {
            for _ in 0..50 {
                let _ = Command::new("find")
                    .args([
                        cg.trim(),
                        "-depth",
                        "-type",
                        "d",
                        "-exec",
                        "rmdir",
                        "{}",
                        ";",
                    ])
                    .stderr(Stdio::null())
                    .status();
                if !Path::new(cg.trim()).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_installed_unit_serves_under_systemd_and_a_hung_daemon_is_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"));
    let stage = tmp.path().join("stage");
    let dest = stage.join("dest");
    std::fs::create_dir_all(&stage).unwrap();

    install_into(&dest);
    // The first-boot gallery, which tmpfiles copies into the state directory.
    let shipped_gallery = dest.join("usr/share/shitu-edge/gallery");
    // install.sh ships engines/demo/gallery when the demo built one here; the test builds its own.
    let _ = std::fs::remove_dir_all(&shipped_gallery);
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, &shipped_gallery, Method::Flat);
    let expected = scenes_with_expected(&shipped_gallery);
    // A conf.d layer over the installed config, as a site would add one.
    std::fs::create_dir_all(dest.join("etc/shitu-edge/conf.d")).unwrap();
    // The container shares the host's network: a free port, not 8080.
    let http_port = free_port();
    std::fs::write(
        dest.join("etc/shitu-edge/conf.d/50-broker.toml"),
        format!("[mqtt]\nport = {}\ndevice_id = \"boot\"\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n[daemon]\nstatus_interval_s = 1\n\
                 [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
                 # A camera, inside the unit's sandbox (threads, GStreamer's plugin scan, orc under MemoryDenyWriteExecute).\n\
                 [[sources]]\nname = \"cam1\"\nuri = \"gst:videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=10/1 ! videoconvert ! appsink name=sink\"\n", broker.port),
    )
    .unwrap();

    let sys = match Booted::start(&stage) {
        Ok(b) => b,
        Err(why) => {
            // Past the harness's capture (it takes only print!/eprint!), so CI's log shows it.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: cannot boot systemd here: {why}"
            );
            return;
        }
    };
    sys.wait_serving();
    eprintln!(
        "systemd state: {}",
        sys.exec(&["systemctl", "is-system-running"]).1.trim()
    );

    // sysusers made the user at boot, tmpfiles the state tree, and the
    // daemon runs as that user inside the sandbox the unit asks for.
    let uid = sys.must(&["id", "-u", "shitu-edge"]).trim().to_string();
    let main_pid = sys.prop("MainPID");
    assert_eq!(
        sys.status_field(&main_pid, "Uid").split_whitespace().next(),
        Some(uid.as_str())
    );
    assert_eq!(sys.status_field(&main_pid, "NoNewPrivs"), "1");
    assert_eq!(
        sys.status_field(&main_pid, "Seccomp"),
        "2",
        "SystemCallFilter= puts a seccomp filter on"
    );
    assert_eq!(sys.status_field(&main_pid, "CapEff"), "0000000000000000");
    for d in [
        "/var/lib/shitu-edge/spool",
        "/var/lib/shitu-edge/engines",
        "/var/lib/shitu-edge/gallery",
        "/var/cache/shitu-edge",
    ] {
        assert_eq!(
            sys.must(&["stat", "-c", "%U", d]).trim(),
            "shitu-edge",
            "{d}"
        );
    }

    let mut ctl = Controller::connect(broker.port, "boot-controller", &[]).await;
    ctl.request(REQ, expected[0].0.clone(), "first", vec![])
        .await;
    let a = ctl
        .reply_before(Instant::now() + Duration::from_secs(60))
        .await
        .expect("an answer from the service");
    check_answer(&a.json, &expected[0].1);

    // The camera streams under the sandbox: `systemctl status` names its
    // state, and a trigger is answered from it. (A trigger while the source
    // still connects is rightly source_unavailable, so the status first.)
    sys.wait_for(
        "the camera in systemctl status",
        Duration::from_secs(30),
        |b| b.prop("StatusText").contains("sources: cam1 streaming"),
    );
    ctl.request(
        "shitu/boot/trigger",
        br#"{"request_id":"trig1","source":"cam1"}"#.to_vec(),
        "trig1",
        vec![],
    )
    .await;
    let a = ctl
        .reply_before(Instant::now() + Duration::from_secs(60))
        .await
        .expect("an answer to the trigger");
    assert_eq!(a.json["ok"], true, "{}\n{}", a.json, sys.journal());
    assert_eq!(a.json["source"], "cam1");
    // The HTTP server inside the sandbox: health, and the page's API.
    let (code, body) = http_get(http_port, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"), "{}", sys.journal());
    let (code, body) = http_get(http_port, "/api/status");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"device_id\":\"boot\""), "{body}");

    // A sandbox that breaks something shows in the journal first: systemd
    // warns about a setting it cannot apply, ONNX Runtime about files it
    // cannot read (ProcSubset=pid hid /proc/cpuinfo from it).
    let (_, warnings) = sys.exec(&[
        "journalctl",
        "-u",
        UNIT,
        "-p",
        "warning",
        "-o",
        "cat",
        "--no-pager",
    ]);
    assert!(
        warnings.trim().is_empty() || warnings.contains("-- No entries --"),
        "warnings from the unit:\n{warnings}"
    );
    let journal = sys.journal();
    assert!(
        !journal.contains("Error in cpuinfo"),
        "ONNX Runtime cannot read the CPU description:\n{journal}"
    );

    // A hung inference: the daemon stops its watchdog pings, systemd kills
    // it (SIGABRT) and starts it again. Short times, so the test is quick.
    sys.must(&["mkdir", "-p", "/run/systemd/system/shitu-edge.service.d"]);
    sys.must(&[
        "sh",
        "-c",
        "printf '[Service]\\nWatchdogSec=5s\\nLimitCORE=0\\nEnvironment=SHITU_FAULT_STALL_PIPELINE=1 SHITU__DAEMON__STALL_AFTER_S=2\\n' \
         > /run/systemd/system/shitu-edge.service.d/hang.conf",
    ]);
    sys.must(&["systemctl", "daemon-reload"]);
    sys.must(&["systemctl", "restart", UNIT]);
    sys.wait_serving();
    // Idle, the daemon is healthy and its pings reach systemd: more than two
    // watchdog periods pass without a restart.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        (
            sys.prop("ActiveState").as_str(),
            sys.prop("NRestarts").as_str()
        ),
        ("active", "0"),
        "{}",
        sys.journal()
    );
    ctl.request(REQ, expected[1].0.clone(), "hung", vec![])
        .await;
    sys.wait_for("watchdog restart", Duration::from_secs(60), |b| {
        b.prop("NRestarts").parse::<u32>().unwrap_or(0) >= 1
    });
    let journal = sys.journal();
    assert!(
        journal.contains("Watchdog timeout"),
        "systemd should say why it killed the daemon:\n{journal}"
    );
    assert!(journal.contains("pipeline stalled"), "{journal}");

    // Healed: the request the daemon hung on was never acknowledged, so the
    // broker delivers it again, and this time it is answered.
    sys.must(&["rm", "/run/systemd/system/shitu-edge.service.d/hang.conf"]);
    sys.must(&["systemctl", "daemon-reload"]);
    sys.must(&["systemctl", "restart", UNIT]);
    sys.wait_serving();
    let a = ctl
        .reply_before(Instant::now() + Duration::from_secs(60))
        .await
        .expect("the hung request answered after the restart");
    assert_eq!(a.correlation.as_deref(), Some(&b"hung"[..]));
    check_answer(&a.json, &expected[1].1);

    // An orderly stop is a success, not a failure.
    sys.must(&["systemctl", "stop", UNIT]);
    assert_eq!(sys.prop("ActiveState"), "inactive");
    assert_eq!(sys.prop("Result"), "success");
    assert!(sys.journal().contains("stopped: "), "{}", sys.journal());
}
