//! The daemon under a service manager: the real `shitud run` with a
//! `NOTIFY_SOCKET` this test listens on, as systemd would set it for a
//! `Type=notify` unit with `WatchdogSec=`.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::mqtt::*;
use crate::common::*;
use shitu_edge::search::Method;

/// The service manager's end of the notify socket.
struct Manager {
    sock: UnixDatagram,
    path: String,
    /// Every message received, with when.
    seen: Vec<(Instant, String)>,
}

impl Manager {
    fn listen(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Manager {
            sock,
            path: path.display().to_string(),
            seen: Vec::new(),
        }
    }

    /// Reads for `d`, recording every line of every datagram.
    fn read_for(&mut self, d: Duration) {
        self.wait_for(d, |_| false);
    }

    /// Reads until a line satisfies `pred`, for at most `d`.
    fn wait_for(&mut self, d: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + d;
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let at = Instant::now();
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    self.seen.push((at, line.to_string()));
                }
                if let Some((_, l)) = self.seen.iter().find(|(_, l)| pred(l)) {
                    return Some(l.clone());
                }
            }
        }
        None
    }

    fn pings_since(&self, t: Instant) -> usize {
        self.seen
            .iter()
            .filter(|(at, l)| *at >= t && l == "WATCHDOG=1")
            .count()
    }

    fn lines(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, l)| l.as_str()).collect()
    }
}

/// A gallery, a broker (unless `broker` is false: then a port nobody
/// listens on), the manager's socket and the daemon started with `extra`
/// daemon settings and `env` (NOTIFY_SOCKET is added).
fn start(
    tmp: &Path,
    broker: bool,
    extra: &str,
    env: &[(&str, &str)],
) -> (Option<Broker>, Manager, Daemon) {
    let mut s = settings("det_prenms.onnx");
    let g = tmp.join("gallery");
    build_gallery(&mut s, &g, Method::Flat);
    let bdir = tmp.join("broker");
    let broker = broker.then(|| Broker::start(&bdir));
    let conf = daemon_config(
        tmp,
        broker.as_ref().map_or_else(free_port, |b| b.port),
        &g,
        extra,
    );
    let mgr = Manager::listen(tmp);
    let mut all = vec![("NOTIFY_SOCKET", mgr.path.as_str())];
    all.extend_from_slice(env);
    let daemon = Daemon::start_with_env(&conf, &tmp.join("daemon.log"), &all);
    (broker, mgr, daemon)
}

/// READY=1 only after the models are loaded and the broker answered, STATUS=
/// lines along the way, WATCHDOG=1 every half interval, STOPPING=1 on SIGTERM.
#[test]
fn ready_status_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let (_broker, mut mgr, daemon) = start(tmp.path(), true, "", &[("WATCHDOG_USEC", "1000000")]);
    mgr.wait_for(Duration::from_secs(120), |l| l == "READY=1")
        .unwrap_or_else(|| panic!("no READY=1: {:?}\n{}", mgr.lines(), daemon.log_text()));
    let lines = mgr.lines();
    let ready_at = lines.iter().position(|l| *l == "READY=1").unwrap();
    let before: Vec<&str> = lines[..ready_at]
        .iter()
        .copied()
        .filter(|l| l.starts_with("STATUS="))
        .collect();
    assert!(
        before.iter().any(|l| l.contains("loading models")),
        "{lines:?}"
    );
    assert!(
        before
            .iter()
            .any(|l| l.contains("models loaded; connecting to the broker")),
        "{lines:?}"
    );
    assert!(
        lines[ready_at..]
            .iter()
            .any(|l| l.starts_with("STATUS=serving shitu/test/recognize")),
        "READY comes with what is served: {lines:?}"
    );
    // WATCHDOG_USEC = 1 s: a ping every 0.5 s, so about 12 in 6 s. The
    // bounds leave room for a stall of the machine (a late tick comes in a
    // burst); the lower one is what shows the watchdog is fed.
    let t = Instant::now();
    mgr.read_for(Duration::from_secs(6));
    let pings = mgr.pings_since(t);
    assert!(
        (6..=20).contains(&pings),
        "{pings} pings in 6 s: {:?}",
        mgr.lines()
    );
    assert!(
        daemon.log_text().contains("systemd watchdog on"),
        "{}",
        daemon.log_text()
    );
    common::mqtt::signal(&daemon.child, libc::SIGTERM);
    mgr.wait_for(Duration::from_secs(30), |l| l == "STOPPING=1")
        .unwrap_or_else(|| panic!("no STOPPING=1: {:?}", mgr.lines()));
    assert_eq!(daemon.stop(), Some(0));
}

/// A hung inference stops the pings (systemd then kills and restarts the
/// service); the STATUS line says why. The hang is the daemon's own fault
/// injection (`SHITU_FAULT_STALL_PIPELINE=1`): its first batch never ends.
#[test]
fn a_hung_pipeline_stops_the_watchdog_pings() {
    let tmp = tempfile::tempdir().unwrap();
    let (broker, mut mgr, daemon) = start(
        tmp.path(),
        true,
        "stall_after_s = 2\n",
        &[
            ("WATCHDOG_USEC", "1000000"),
            ("SHITU_FAULT_STALL_PIPELINE", "1"),
        ],
    );
    mgr.wait_for(Duration::from_secs(120), |l| l == "READY=1")
        .unwrap_or_else(|| panic!("no READY=1: {:?}\n{}", mgr.lines(), daemon.log_text()));
    let t = Instant::now();
    mgr.read_for(Duration::from_secs(2));
    assert!(
        mgr.pings_since(t) >= 2,
        "healthy before the request: {:?}",
        mgr.lines()
    );

    // One request: the pipeline takes it and hangs.
    let jpeg = std::fs::read(data("images/scenes/scene_00000.jpg")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctl =
            Controller::connect(broker.as_ref().map_or(0, |b| b.port), "ctl-stall", &[]).await;
        ctl.request(
            "shitu/test/recognize",
            json_request("stall-1", &jpeg),
            "stall-1",
            vec![],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let status = mgr
        .wait_for(Duration::from_secs(20), |l| l.starts_with("STATUS=stalled"))
        .unwrap_or_else(|| {
            panic!(
                "no stalled status: {:?}\n{}",
                mgr.lines(),
                daemon.log_text()
            )
        });
    assert!(status.contains("stall_after_s = 2"), "{status}");
    let t = Instant::now();
    mgr.read_for(Duration::from_secs(3));
    assert_eq!(
        mgr.pings_since(t),
        0,
        "pings must stop while the pipeline hangs: {:?}",
        mgr.lines()
    );
    assert!(
        daemon.log_text().contains("pipeline stalled"),
        "{}",
        daemon.log_text()
    );
}

/// No broker: the daemon still reports ready after `daemon.ready_timeout_s`,
/// marked degraded, and keeps retrying (systemd would otherwise time the start out).
#[test]
fn without_a_broker_ready_comes_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut mgr, daemon) = start(tmp.path(), false, "ready_timeout_s = 2\n", &[]);
    mgr.wait_for(Duration::from_secs(120), |l| l == "READY=1")
        .unwrap_or_else(|| panic!("no READY=1: {:?}\n{}", mgr.lines(), daemon.log_text()));
    mgr.read_for(Duration::from_millis(300));
    let lines = mgr.lines();
    let ready_at = lines.iter().position(|l| *l == "READY=1").unwrap();
    assert!(
        lines[ready_at..]
            .iter()
            .any(|l| l.starts_with("STATUS=degraded: broker")),
        "{lines:?}"
    );
    assert!(
        !lines.contains(&"WATCHDOG=1"),
        "no WATCHDOG_USEC, no pings: {lines:?}"
    );
    assert_eq!(daemon.stop(), Some(0));
}
