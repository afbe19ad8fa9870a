//! An acknowledged gallery change survives `kill -9`: 50 times, a child
//! process adds items in a loop (compacting every 7 changes, so kills also
//! land inside compactions) and is killed with SIGKILL at a random point.
//! After each kill the gallery must open, and every item the child
//! acknowledged must be there with its label.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use shitu_edge::search::{Gallery, Method};

#[test]
fn acknowledged_adds_survive_sigkill_50_times() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, &dir, Method::Flat);
    let photos: Vec<String> = std::fs::read_dir(data("images/gallery"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();

    let mut acked: BTreeMap<i64, String> = BTreeMap::new();
    let mut seed = 0x5eed_u64;
    let mut compactions_seen = 0;
    for round in 0..50 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(250 + (seed >> 33) % 900);
        let label = format!("round {round}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shitud"))
            .args([
                "-q",
                "gallery",
                "add",
                "--index",
                dir.to_str().unwrap(),
                "--label",
                &label,
            ])
            .args(photos.iter().cycle().take(60))
            .current_dir(root())
            .env("SHITU__SEARCH__COMPACT_AFTER", "7")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Most rounds kill while adds are being acknowledged: the delay runs
        // from the first acknowledgement, so a loaded machine (the models
        // load slower while other tests run) does not turn every round into
        // a kill during start-up. Every fifth round kills from the spawn,
        // start-up included.
        let mut lines = Vec::new();
        if round % 5 != 0 {
            if let Ok(first) = rx.recv_timeout(Duration::from_secs(120)) {
                lines.push(first);
            }
        }
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in lines {
            let id: i64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad ack line {line:?}"));
            acked.insert(id, label.clone());
        }

        let g = Gallery::open_for_write(&dir, Default::default())
            .unwrap_or_else(|e| panic!("round {round}: gallery does not open after SIGKILL: {e}"));
        for (id, label) in &acked {
            let item = g
                .item(*id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged item {id} lost"));
            assert_eq!(&item.label, label);
        }
        if g.manifest().wal_seq > 0 {
            compactions_seen += 1;
        }
    }
    assert!(
        acked.len() > 50,
        "too few adds were acknowledged to mean anything: {}",
        acked.len()
    );
    assert!(
        compactions_seen > 0,
        "no compaction happened during the test"
    );
    // And it still recognises.
    let mut g = Gallery::open(&dir, Default::default()).unwrap();
    let any = *acked.keys().next().unwrap();
    assert!(g.item(any).is_some() && g.search(&vec![0.0; 512], 1).is_ok());
    eprintln!(
        "{} acknowledged adds over 50 kills, all present",
        acked.len()
    );
}
