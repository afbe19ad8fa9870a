//! The request parsers (recognise, gallery, trigger) on arbitrary payloads and user properties: it must
//! return a request or a rejection, never panic, and a rejection must carry
//! a non-empty message.
//!
//!   cargo +nightly fuzz run request -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use shitu_edge::daemon::request::{parse_gallery, parse_recognize, parse_trigger, Envelope};

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the user properties, the rest is the payload.
    let (head, payload) = data.split_at(data.len().min(16));
    let text = String::from_utf8_lossy(head);
    let props: Vec<(String, String)> = text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = Envelope {
        user_properties: &props,
        correlation_data: Some(head),
    };
    for result in [
        parse_recognize(payload, &env, 1 << 16).map(|_| ()),
        parse_gallery(payload, &env, 1 << 16, true).map(|_| ()),
        parse_gallery(payload, &env, 1 << 16, false).map(|_| ()),
        parse_trigger(payload, &env, 1 << 16).map(|_| ()),
    ] {
        if let Err(r) = result {
            assert!(!r.message.is_empty());
            assert!(!r.request_id.is_empty());
        }
    }
});
