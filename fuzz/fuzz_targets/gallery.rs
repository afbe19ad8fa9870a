//! Gallery changes as they reach a box: a line command and its change id, the line's
//! retained state (parsed, then what its changes mean), and the gallery's
//! and the line's logs read back from arbitrary bytes (a disk that lies).
//! Each must give a value or an error, never panic.
//!
//!   cargo +nightly fuzz run gallery -- -runs=1000000
#![no_main]

use libfuzzer_sys::fuzz_target;
use shitu_edge::daemon::line_sync::LineStatePayload;
use shitu_edge::daemon::request::{line_change_id, parse_gallery_sent, Envelope};
use shitu_edge::search::line::{LineState, Logged};
use shitu_edge::search::wal::{self, Record};

fuzz_target!(|data: &[u8]| {
    for add in [true, false] {
        let parsed = parse_gallery_sent(data, &Envelope::default(), 1 << 16, add);
        let refused = match parsed {
            Ok((command, change_id)) => line_change_id(change_id, command.request_id()).err(),
            Err(r) => Some(r),
        };
        if let Some(r) = refused {
            assert!(!r.message.is_empty() && !r.request_id.is_empty());
        }
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
