//! The reader of PaddleClas's `id_map.pkl` on arbitrary bytes: it only
//! understands data, so any input gives a map or an error, never a panic,
//! a hang or code run.
//!
//!   cargo +nightly fuzz run pickle -- -runs=1000000
#![no_main]

use libfuzzer_sys::fuzz_target;
use shitu_edge::search::pickle::read_id_map;

fuzz_target!(|data: &[u8]| {
    match read_id_map(data) {
        Ok(map) => assert!(map.len() <= data.len()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
