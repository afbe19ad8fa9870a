//! A source's URI as a GStreamer pipeline. Pure: nothing is started here.
//!
//! The URI itself never goes into the pipeline's text: it is set as the
//! source element's property after parsing, so no URI can add elements to
//! the pipeline (`rtsp://x ! filesink location=/etc/…`).

use std::path::PathBuf;

/// The element every pipeline ends in; a `gst:` pipeline must name its own so.
pub const SINK_NAME: &str = "sink";

/// What runs a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// gst-launch text of the pipeline, ending in `appsink name=sink`.
    pub description: String,
    /// The property set on the element named `src` after parsing, if any.
    pub location: Option<(&'static str, String)>,
    /// The source is a recording: it plays at its own speed (the sink
    /// syncs on the clock) and starts again at its end.
    pub file: bool,
    /// Whether the appsink waits for each frame's due time: a file's yes,
    /// a live source's no (its frames are due when they come); `None`:
    /// the `gst:` pipeline's own setting.
    pub sync: Option<bool>,
}

/// What every built-in scheme decodes into: whatever the source sends
/// (H.264, H.265, MJPEG, raw), decoded by the best decoder GStreamer has,
/// converted to RGB for the pipeline. `nvv4l2decoder` and friends are
/// picked by `decodebin` on a Jetson when their rank says so; `gst:` pins them.
const TAIL: &str = "decodebin ! videoconvert ! appsink name=sink";

/// The pipeline for `uri`, or what is wrong with it.
pub fn plan(uri: &str) -> Result<Plan, String> {
    // Errors name the URI with its password hidden: they reach logs and
    // `config check`'s output.
    plan_of(uri).map_err(|e| {
        if uri.contains('@') {
            e.replace(uri.trim(), &super::redact(uri.trim()))
        } else {
            e
        }
    })
}

fn plan_of(uri: &str) -> Result<Plan, String> {
    if uri.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    let uri = uri.trim();
    if uri.is_empty() {
        return Err("is empty: expected rtsp://, rtspt://, v4l2://, file:// or gst:".into());
    }
    let (scheme, rest) = match uri.split_once(':') {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => {
            return Err(format!(
                "{uri:?} has no scheme: expected rtsp://, rtspt://, v4l2://, file:// or gst:"
            ))
        }
    };
    match scheme.as_str() {
        "rtsp" | "rtspt" | "rtsps" => {
            let host = rest.strip_prefix("//").unwrap_or_default();
            if host.is_empty() || host.starts_with('/') {
                return Err(format!("{uri:?} names no host (rtsp://HOST[:PORT]/PATH)"));
            }
            if uri.chars().any(char::is_whitespace) {
                return Err(format!("{uri:?} contains spaces (percent-encode them)"));
            }
            Ok(Plan {
                // latency: the jitter buffer's, in ms; frames carry their
                // arrival time either way (see `source`), so a small one
                // only shortens the trigger-to-answer time.
                // Video only: a camera that also sends audio or ONVIF
                // metadata would otherwise link whichever stream came first.
                description: format!(
                    "rtspsrc name=src latency=100 ! application/x-rtp,media=video ! {TAIL}"
                ),
                location: Some(("location", uri.to_string())),
                file: false,
                sync: Some(false),
            })
        }
        "v4l2" => {
            let device = rest.strip_prefix("//").unwrap_or(rest);
            if !device.starts_with("/dev/") {
                return Err(format!(
                    "{uri:?}: expected v4l2:///dev/videoN (a device path under /dev)"
                ));
            }
            Ok(Plan {
                description: format!("v4l2src name=src ! {TAIL}"),
                location: Some(("device", device.to_string())),
                file: false,
                sync: Some(false),
            })
        }
        "file" => {
            let path = file_path(uri)?;
            Ok(Plan {
                description: format!("filesrc name=src ! {TAIL}"),
                location: Some(("location", path.display().to_string())),
                file: true,
                sync: Some(true),
            })
        }
        "gst" => {
            let text = rest.trim();
            if text.is_empty() {
                return Err("gst: names no pipeline (gst:<elements> ! appsink name=sink)".into());
            }
            if !text.contains(&format!("name={SINK_NAME}")) {
                return Err(format!(
                    "the gst: pipeline has no element named {SINK_NAME:?}: end it in `appsink name={SINK_NAME}`"
                ));
            }
            Ok(Plan {
                description: text.to_string(),
                location: None,
                file: false,
                sync: None,
            })
        }
        other => Err(format!(
            "unknown scheme {other:?} in {uri:?}: expected rtsp://, rtspt://, v4l2://, file:// or gst:"
        )),
    }
}

/// The absolute path of a `file://` URI, percent-decoded.
fn file_path(uri: &str) -> Result<PathBuf, String> {
    let rest = uri
        .get("file://".len()..)
        .filter(|_| {
            uri.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("file://"))
        })
        .ok_or_else(|| format!("{uri:?}: expected file:///absolute/path"))?;
    if !rest.starts_with('/') {
        return Err(format!(
            "{uri:?}: expected file:///absolute/path (three slashes: no host)"
        ));
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = rest
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{uri:?}: bad percent-escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_has_its_source_element() {
        let p = plan("rtsp://10.0.0.7/stream1").unwrap();
        assert!(p.description.starts_with("rtspsrc name=src"));
        assert!(p.description.contains("media=video"));
        assert_eq!(
            p.location,
            Some(("location", "rtsp://10.0.0.7/stream1".into()))
        );
        assert!(!p.file);
        assert!(plan("rtspt://cam:8554/x")
            .unwrap()
            .description
            .starts_with("rtspsrc"));
        let p = plan("v4l2:///dev/video2").unwrap();
        assert_eq!(p.location, Some(("device", "/dev/video2".into())));
        let p = plan("file:///srv/clips/a%20b.mp4").unwrap();
        assert_eq!(p.location, Some(("location", "/srv/clips/a b.mp4".into())));
        assert!(p.file);
        let p = plan("gst:videotestsrc ! videoconvert ! appsink name=sink").unwrap();
        assert_eq!(
            p.description,
            "videotestsrc ! videoconvert ! appsink name=sink"
        );
        assert_eq!(p.location, None);
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        for (uri, says) in [
            ("", "empty"),
            ("http://cam/x", "unknown scheme \"http\""),
            ("camera1", "no scheme"),
            ("rtsp://", "no host"),
            ("rtsp:///x", "no host"),
            ("rtsp://cam/a b", "spaces"),
            ("rtsp://u:secret@cam/a b", "u:***@cam"),
            ("v4l2://video0", "/dev"),
            ("file://relative/x.mp4", "three slashes"),
            ("file:///x%zz.mp4", "percent-escape"),
            ("gst:videotestsrc ! fakesink", "no element named \"sink\""),
            ("gst:", "names no pipeline"),
            ("rtsp://cam/x\n", "control character"),
        ] {
            let e = plan(uri).unwrap_err();
            assert!(e.contains(says), "{uri:?}: {e}");
        }
    }

    #[test]
    fn a_uri_cannot_add_elements() {
        // The URI is a property value, never pipeline text.
        let p = plan("rtsp://x/a\"!filesink%20location=/tmp/owned").unwrap();
        assert!(!p.description.contains("filesink"));
    }
}
