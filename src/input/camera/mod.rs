//! Cameras wired to the box: RTSP, V4L2, files and any GStreamer pipeline
//! ending in an appsink (`[[sources]]`). Each source runs on its own thread
//! and keeps its last frames, with their capture times, in a [`Ring`]; a
//! trigger takes the first frame captured at or after its moment
//! ([`Source::frame_at`]). One failing source never stops the others: it is
//! restarted with backoff and its state says so.

mod archive;
mod ring;
mod source;
mod uri;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use archive::Archive;
pub use ring::{Captured, Lookup, Ring};
pub use source::{now_ms, Health, Missed, Source, State};
pub use uri::{plan, Plan};

use crate::config::{CaptureSettings, InputSettings, SourceSettings};
use crate::error::{Error, Result};

/// Initialises GStreamer once; the error says what to install.
fn init() -> Result<()> {
    gstreamer::init().map_err(|e| Error::Source {
        name: "(all)".into(),
        reason: format!("GStreamer does not start: {e} (install libgstreamer1.0-0 and gstreamer1.0-plugins-base/good/bad)"),
    })
}

/// Checks a source URI as `shitud config check` does: the scheme, and that
/// the pipeline it makes parses here (every element exists, a `gst:` one
/// ends in an appsink named `sink`). Nothing is started.
/// The error is what is wrong, for a message that names the setting.
pub fn check_uri(uri: &str) -> std::result::Result<(), String> {
    let plan = plan(uri)?;
    init().map_err(|e| e.to_string())?;
    source::build(&plan).map(|_| ())
}

/// The box's sources, running.
pub struct Cameras {
    sources: Vec<Arc<Source>>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Cameras {
    /// Starts a thread per source. Fails only on a URI that can never work
    /// (checked by [`check_uri`]); a camera that is unplugged or a server
    /// that is down is retried, not refused.
    pub fn start(
        sources: &[SourceSettings],
        capture: &CaptureSettings,
        limits: &InputSettings,
    ) -> Result<Cameras> {
        let mut cameras = Cameras {
            sources: Vec::new(),
            threads: std::sync::Mutex::new(Vec::new()),
        };
        if sources.is_empty() {
            return Ok(cameras);
        }
        init()?;
        for s in sources {
            let plan = plan(&s.uri).map_err(|reason| Error::Source {
                name: s.name.clone(),
                reason,
            })?;
            let source = Arc::new(Source::new(
                &s.name,
                &s.uri,
                s.delay_ms,
                capture.ring_frames,
            ));
            let (run, capture, limits) = (source.clone(), capture.clone(), limits.clone());
            let thread = std::thread::Builder::new()
                .name(format!("shitud-src-{}", s.name))
                .spawn(move || run.run(plan, capture, limits))
                .map_err(|e| Error::Source {
                    name: s.name.clone(),
                    reason: format!("cannot start its thread: {e}"),
                })?;
            tracing::info!(source = %s.name, uri = %redact(&s.uri), delay_ms = s.delay_ms, "source started");
            cameras.sources.push(source);
            cameras
                .threads
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .push(thread);
        }
        Ok(cameras)
    }

    /// The source named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Source>> {
        self.sources.iter().find(|s| s.name() == name)
    }

    /// Every source, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.sources.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Each source's health, by name.
    pub fn health(&self) -> BTreeMap<String, Health> {
        self.sources
            .iter()
            .map(|s| (s.name().to_string(), s.health()))
            .collect()
    }

    /// Stops every source and waits for its thread.
    pub fn stop(&self) {
        for s in &self.sources {
            s.request_stop();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Cameras {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A URI for logs: an RTSP password is not written to the journal. The
/// user information is everything before the *last* `@` of the authority
/// (a password may hold `@` or `/`).
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return uri.to_string();
    };
    // An `@` after the host's path is not user information.
    if host.contains('/') && !userinfo.contains(':') && userinfo.contains('/') {
        return uri.to_string();
    }
    let user = userinfo.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{host}")
}

impl Source {
    /// The URI it reads, for logs (password hidden).
    pub fn uri_redacted(&self) -> String {
        redact(self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("rtsp://admin:secret@10.0.0.7/s1"),
            "rtsp://admin:***@10.0.0.7/s1"
        );
        assert_eq!(redact("rtsp://10.0.0.7/s1"), "rtsp://10.0.0.7/s1");
        assert_eq!(redact("file:///a@b/c.mp4"), "file:///a@b/c.mp4");
        assert_eq!(
            redact("rtsp://admin:p@ss/w0rd@10.0.0.7/s1"),
            "rtsp://admin:***@10.0.0.7/s1"
        );
    }

    #[test]
    fn uris_are_checked_against_this_machines_gstreamer() {
        check_uri("gst:videotestsrc ! videoconvert ! appsink name=sink").unwrap();
        // rtspsrc is in gstreamer1.0-plugins-good: where it is missing
        // (the aarch64 check's minimal sysroot) the check says so.
        init().unwrap();
        match gstreamer::ElementFactory::find("rtspsrc") {
            Some(_) => check_uri("rtsp://127.0.0.1:1/x").unwrap(),
            None => {
                let e = check_uri("rtsp://127.0.0.1:1/x").unwrap_err();
                assert!(e.contains("no element \"rtspsrc\""), "{e}");
            }
        }
        let e = check_uri("gst:videotestsrc ! nosuchelement ! appsink name=sink").unwrap_err();
        assert!(
            e.contains("does not parse") && e.contains("nosuchelement"),
            "{e}"
        );
        let e = check_uri("gst:videotestsrc ! fakesink name=sink").unwrap_err();
        assert!(e.contains("not an appsink"), "{e}");
    }

    #[test]
    fn a_test_pattern_streams_frames_with_wall_clock_times() {
        let settings = [SourceSettings {
            name: "pattern".into(),
            uri: "gst:videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=30/1 ! videoconvert ! appsink name=sink".into(),
            delay_ms: 0,
            ..Default::default()
        }];
        let cams = Cameras::start(
            &settings,
            &CaptureSettings::default(),
            &InputSettings::default(),
        )
        .unwrap();
        let src = cams.get("pattern").unwrap().clone();
        let t = now_ms() + 300;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        // Connecting: a trigger is answered at once, not held.
        let first = rt.block_on(src.frame_at(t, deadline));
        if let Err(Missed::Unavailable(state)) = &first {
            assert!(state.starts_with("connecting"), "{state}");
        }
        // Ask again only once frames flow: a moment asked for before the
        // stream started is a gap, and a loaded CI machine can take longer
        // than any fixed sleep to start a pipeline.
        let waited = std::time::Instant::now();
        while src.state() != State::Streaming {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(10),
                "never streamed: {:?}",
                src.state()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let t = now_ms() + 300;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let c = rt.block_on(src.frame_at(t, deadline)).unwrap();
        assert!(
            c.at_ms >= t && c.at_ms < t + 200,
            "captured {} for {t}",
            c.at_ms
        );
        assert_eq!((c.frame.width, c.frame.height), (64, 48));
        assert_eq!(src.state(), State::Streaming);
        assert!(src.health().frames_in > 0);
        cams.stop();
    }
}
