//! The pipeline thread takes work from anyone: jobs carry their own reply
//! channel and know nothing of MQTT. Here a test submits them directly, as
//! a camera trigger will, and reads the typed outcomes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use shitu_edge::config::DaemonSettings;
use shitu_edge::daemon::answer::{ErrorCode, Versions};
use shitu_edge::daemon::request::{GalleryCommand, ImageSource};
use shitu_edge::daemon::worker::{self, Host, Job, Outcome, Reply, Swap, Work};
use shitu_edge::pipeline::Query;
use shitu_edge::search::Method;
use shitu_edge::Pipeline;

/// The pipeline thread's host, without a daemon around it.
struct TestHost {
    daemon: DaemonSettings,
    versions: Mutex<Versions>,
    batches: AtomicUsize,
    taken: AtomicUsize,
}

impl Host for TestHost {
    fn daemon_settings(&self) -> &DaemonSettings {
        &self.daemon
    }
    fn take_swap(&self) -> Option<Swap> {
        None
    }
    fn versions(&self) -> Versions {
        self.versions.lock().unwrap().clone()
    }
    fn set_versions(&self, v: Versions) {
        *self.versions.lock().unwrap() = v;
    }
    fn begin(&self) {}
    fn end(&self) {}
    fn exited(&self) {}
    fn taken(&self, n: usize) {
        self.taken.fetch_add(n, Ordering::Relaxed);
    }
    fn batch(&self, _: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}

fn job(id: &str, work: Work) -> (Job, mpsc::Receiver<Outcome>) {
    let (reply, rx) = Reply::channel();
    let job = Job {
        request_id: id.into(),
        arrived: Instant::now(),
        work,
        reply,
    };
    (job, rx)
}

fn recognize(bytes: Vec<u8>) -> Work {
    Work::Recognize {
        image: ImageSource::Bytes(bytes),
        query: Query::default(),
    }
}

#[test]
fn jobs_submitted_without_mqtt_are_batched_and_answered_through_their_own_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, &tmp.path().join("g"), Method::Flat);
    let pipeline = Pipeline::open_writable(&s).unwrap();
    let host = TestHost {
        daemon: DaemonSettings {
            max_batch: 4,
            max_wait_ms: 200,
            ..Default::default()
        },
        versions: Mutex::new(worker::versions(&pipeline, None)),
        batches: AtomicUsize::new(0),
        taken: AtomicUsize::new(0),
    };
    let scene = std::fs::read(data("images/scenes/scene_00001.jpg")).unwrap();
    let (tx, rx) = mpsc::sync_channel(16);
    let mut replies = Vec::new();
    // Queued before the thread starts, so they arrive together: one batch.
    for i in 0..3 {
        let (j, r) = job(&format!("r{i}"), recognize(scene.clone()));
        tx.send(j).unwrap();
        replies.push(r);
    }
    let (bad, bad_rx) = job("bad", recognize(b"not an image".to_vec()));
    tx.send(bad).unwrap();
    let (gone, gone_rx) = job(
        "g1",
        Work::Gallery(GalleryCommand::Remove {
            request_id: "g1".into(),
            label: Some("no such product".into()),
            ids: vec![],
        }),
    );
    tx.send(gone).unwrap();
    drop(tx);
    std::thread::scope(|sc| {
        sc.spawn(|| worker::run(pipeline, rx, &host));
        let wait = Duration::from_secs(120);
        let mut labels = Vec::new();
        for r in &replies {
            match r.recv_timeout(wait).unwrap() {
                Outcome::Recognized {
                    result, timings, ..
                } => {
                    assert_eq!(timings.batch, 3, "the three frames went in one batch");
                    labels.push(
                        result
                            .results
                            .iter()
                            .map(|x| x.rec_docs.clone())
                            .collect::<Vec<_>>(),
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(!labels[0].is_empty(), "the scene has known products");
        assert!(labels.iter().all(|l| l == &labels[0]), "{labels:?}");
        match bad_rx.recv_timeout(wait).unwrap() {
            Outcome::Failed { code, message } => {
                assert_eq!(code, ErrorCode::DecodeFailed, "{message}");
                assert!(
                    message.contains("request bad"),
                    "the error names the input: {message}"
                );
            }
            other => panic!("{other:?}"),
        }
        match gone_rx.recv_timeout(wait).unwrap() {
            Outcome::Failed { code, message } => {
                assert_eq!(code, ErrorCode::BadRequest);
                assert!(message.contains("no such product"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(host.taken.load(Ordering::Relaxed), 5);
    assert_eq!(host.batches.load(Ordering::Relaxed), 1);
}
