//! Gallery changes as they reach a box: the line's change id, the line's
//! retained state (parsed, then what its changes mean), and the gallery's
//! and the line's logs read back from arbitrary bytes (a disk that lies).
//! Each must give a value or an error, never panic.
//!
//!   cargo +nightly fuzz run gallery -- -runs=1000000
#![no_main]

use libfuzzer_sys::fuzz_target;
use shitu_edge::daemon::line_sync::LineStatePayload;
use shitu_edge::daemon::request::line_change_id;
use shitu_edge::search::line::{LineState, Logged};
use shitu_edge::search::wal::{self, Record};

fuzz_target!(|data: &[u8]| {
    let id = String::from_utf8_lossy(&data[..data.len().min(30)]);
    if let Err(r) = line_change_id(data, &id) {
        assert!(!r.message.is_empty());
    }
    match LineStatePayload::parse(data) {
        Ok(state) => {
            let mut s = LineState::default();
            for c in state.changes {
                s.insert(c);
            }
            let effect = s.effect();
            assert!(effect.items.len() <= s.len());
            let exported = s.export();
            assert_eq!(exported.len(), s.len());
            let _ = s.version().to_string();
        }
        Err(why) => assert!(!why.is_empty()),
    }
    // The logs are read from a file; a per-process one in shared memory.
    let dir = std::env::temp_dir().join(format!("shitu-fuzz-gallery-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("log");
    if std::fs::write(&path, data).is_ok() {
        if let Ok((records, good, _)) = wal::read::<Record>(&path) {
            assert!(good as usize <= data.len() && records.len() <= data.len() / 8);
        }
        if let Ok((changes, good, _)) = wal::read::<Logged>(&path) {
            assert!(good as usize <= data.len() && changes.len() <= data.len() / 8);
        }
    }
});
